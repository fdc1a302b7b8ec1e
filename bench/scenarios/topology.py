"""The topology part: the scale-out topology sized to the machine against what its cores give without us.

C producers (C = the machine's cores) send 8,192-row batches into C datasets, each BYTES_PER_RUN / 4, to:

  nats-JxKxN[tT]  nats-server, J ingest processes (producer p sends to ingest p mod J), K write processes
                  of T encoding threads each (writer.threads), N JetStream streams (queue.streams)
  memory          one flight-writer process, queue.type = memory, writer.threads = C
  direct          C direct writer threads, one per dataset (the target's yardstick)

The shapes come from the cores: the capacity model in BENCHMARKS.md puts a write process at ~3 x the CPU per
GiB of an ingest process or of nats-server, so of C cores about half go to write processes (C / 4 of them,
2 threads each), C / 8 ingest processes and C / 4 streams; a second shape doubles the processes, one thread
each. BENCH_TOPOLOGY="JxKxN[xT],..." names others (e.g. "2x4x4x2,4x8x8"). On 2 cores one small shape runs
(1 ingest, 1 writer, 2 streams): the mechanism, not a scaling figure.
"""

from __future__ import annotations

import os

import pyarrow as pa

from bench.compare import compare
from bench.contenders import NatsTopology, flight_writer_server, measure_direct, measure_server
from bench.workload import BYTES_PER_RUN, Workload


def shapes(cores: int) -> list[tuple[int, int, int, int]]:
    """(ingest processes, write processes, streams, writer.threads per write process)."""
    if named := os.environ.get("BENCH_TOPOLOGY"):
        out = []
        for shape in named.split(","):
            j, k, n, *t = (int(v) for v in shape.strip().split("x"))
            out.append((j, k, n, t[0] if t else 1))
        return out
    if cores < 8:
        return [(1, 1, 2, 1)]
    return [(cores // 8, cores // 4, cores // 4, 2), (cores // 4, cores // 2, cores // 2, 1)]


def name(shape: tuple[int, int, int, int]) -> str:
    j, k, n, t = shape
    return f"nats-{j}x{k}x{n}t{t}"


def topology(base: pa.Table) -> list[dict]:
    cores = os.cpu_count() or 1
    producers, chosen = cores, shapes(cores)
    contenders = {}
    for shape in chosen:
        j, k, n, t = shape
        env = {
            "FLIGHT_WRITER_WRITER__THREADS": str(t),
            # every stream holds max_bytes / N: 512 MiB each, so that N streams are not N times narrower
            "FLIGHT_WRITER_QUEUE__MAX_BYTES": f"{512 * n}MiB",
        }
        contenders[name(shape)] = measure_server(
            lambda tmp, j=j, k=k, n=n, env=env: NatsTopology(tmp, k, n, ingests=j, env=env), until_durable=True
        )
    contenders["memory"] = measure_server(
        lambda tmp: flight_writer_server(tmp, "memory", {"FLIGHT_WRITER_WRITER__THREADS": str(cores)}),
        until_durable=True,
    )
    contenders["direct"] = measure_direct
    row = compare(Workload(base, 8192, producers * BYTES_PER_RUN / 4), producers, producers, contenders)
    row["cores"] = cores
    row["shapes"] = [
        {"name": name(s), "ingests": s[0], "writers": s[1], "streams": s[2], "writer_threads": s[3]} for s in chosen
    ]
    for s in row["shapes"]:
        s["vs_direct"] = round(row["direct"]["seconds"] / row[s["name"]]["seconds"], 2)
        s["vs_memory"] = round(row["memory"]["seconds"] / row[s["name"]]["seconds"], 2)
    row["memory_vs_direct"] = round(row["direct"]["seconds"] / row["memory"]["seconds"], 2)
    return [row]
