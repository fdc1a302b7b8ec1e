"""The throughput part: every contender (discard, reply, direct, memory, wal) on six scenarios of
batch rows x producers x datasets, BYTES_PER_RUN each; memory against direct, discard and reply, and wal
against memory."""

from __future__ import annotations

import pyarrow as pa

from bench.compare import compare
from bench.contenders import CONTENDERS
from bench.workload import Workload

SCENARIOS = [  # (batch rows, producers, datasets)
    (100, 1, 1),
    (8192, 1, 1),
    (65536, 1, 1),
    (8192, 4, 4),
    (65536, 4, 4),
    (8192, 4, 1),
]


def throughput(base: pa.Table) -> list[dict]:
    results = []
    for batch_rows, producers, datasets in SCENARIOS:
        row = compare(Workload(base, batch_rows), producers, datasets, CONTENDERS)
        row["memory_vs_direct"] = round(row["direct"]["seconds"] / row["memory"]["seconds"], 2)
        row["memory_vs_discard"] = round(row["discard"]["seconds"] / row["memory"]["seconds"], 2)
        row["memory_vs_reply"] = round(row["reply"]["seconds"] / row["memory"]["seconds"], 2)
        row["wal_vs_memory"] = round(row["memory"]["seconds"] / row["wal"]["seconds"], 2)
        results.append(row)
    return results
