"""The nats part: the scale-out topology on this machine (nats-server, 1 ingest process and K write
processes on one JetStream stream, and on N streams: ``queue.streams``) against the memory queue in one
process."""

from __future__ import annotations

import pyarrow as pa

from bench.compare import compare
from bench.contenders import CONTENDERS, NatsTopology, measure_server
from bench.workload import Workload

NATS_SCENARIOS = [(8192, 1, 1), (8192, 4, 4), (100, 1, 1)]  # (batch rows, producers, datasets)
SMALL = 1000  # batches of fewer rows: memory and nats-1w only (packed messages; the others add nothing)
NATS_WRITERS = [1, 2]  # 1 ingest + K write processes
NATS_SHARDED = [(2, 2)]  # (K write processes, queue.streams): the data path over several streams


def nats(base: pa.Table) -> list[dict]:
    """The scale-out topology on this machine against the memory queue in one process: 1 ingest process
    and K write processes on one JetStream stream, until `flush` says everything is durable."""
    results = []
    for batch_rows, producers, datasets in NATS_SCENARIOS:
        contenders = {"memory": CONTENDERS["memory"]}
        for k in NATS_WRITERS if batch_rows >= SMALL else NATS_WRITERS[:1]:
            contenders[f"nats-{k}w"] = measure_server(lambda tmp, k=k: NatsTopology(tmp, k), until_durable=True)
        for k, n in NATS_SHARDED if batch_rows >= SMALL else []:
            contenders[f"nats-{k}w-{n}s"] = measure_server(
                lambda tmp, k=k, n=n: NatsTopology(tmp, k, n), until_durable=True
            )
        row = compare(Workload(base, batch_rows), producers, datasets, contenders)
        for name in contenders:
            if name != "memory":
                ratio = round(row["memory"]["seconds"] / row[name]["seconds"], 2)
                row[f"{name.replace('-', '_')}_vs_memory"] = ratio
                # server CPU per byte against the memory queue's (nats-server, ingest and write processes)
                cpu = round(row[name]["server_cpu_s"] / row["memory"]["server_cpu_s"], 2)
                row[f"{name.replace('-', '_')}_cpu_vs_memory"] = cpu
        results.append(row)
    return results
