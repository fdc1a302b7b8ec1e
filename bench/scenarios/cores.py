"""The cores part: N producers into N datasets with writer.threads = N, against N direct writer threads
and the discard server, for N = 1, 2, 4, ... up to the machine's cores."""

from __future__ import annotations

import os

import pyarrow as pa

from bench.compare import compare
from bench.contenders import CONTENDERS, flight_writer_server, measure_direct, measure_server
from bench.workload import BYTES_PER_RUN, Workload


def core_counts() -> list[int]:
    """1, 2, 4, ... up to the machine's cores (and the cores themselves)."""
    cores = os.cpu_count() or 1
    counts = [1 << i for i in range(cores.bit_length()) if 1 << i <= cores]
    return counts if counts[-1] == cores else [*counts, cores]


def cores(base: pa.Table) -> list[dict]:
    """N producers into N datasets with writer.threads = N, against N direct writer threads and the
    discard server, 8,192-row batches, BYTES_PER_RUN / 2 per producer."""
    results = []
    for n in core_counts():
        contenders = {
            "discard": CONTENDERS["discard"],
            "direct": measure_direct,
            "memory": measure_server(
                lambda tmp, n=n: flight_writer_server(tmp, "memory", {"FLIGHT_WRITER_WRITER__THREADS": str(n)}),
                until_durable=True,
            ),
        }
        row = compare(Workload(base, 8192, n * BYTES_PER_RUN / 2), n, n, contenders)
        row["memory_vs_direct"] = round(row["direct"]["seconds"] / row["memory"]["seconds"], 2)
        results.append(row)
    return results
