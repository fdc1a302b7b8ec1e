"""The burst part: 50 MB (less than a file) from one producer, then `flush`: memory against direct."""

from __future__ import annotations

import pyarrow as pa

from bench.compare import compare
from bench.contenders import CONTENDERS, measure_direct
from bench.workload import REPEAT, Workload

BURST_BYTES = 50e6


def burst(base: pa.Table) -> dict:
    """50 MB (less than a file) from one producer, then `flush`: how much of the encoding overlaps the
    receiving and how many threads share one file."""
    contenders = {"direct": measure_direct, "memory": CONTENDERS["memory"]}
    # a measurement takes ~0.3 s, where one hiccup of the machine shows: three times as many runs
    row = compare(Workload(base, 8192, BURST_BYTES), 1, 1, contenders, repeat=3 * REPEAT)
    row["memory_vs_direct"] = round(row["direct"]["seconds"] / row["memory"]["seconds"], 2)
    return row
