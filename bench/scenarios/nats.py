"""The nats part: the scale-out topology on this machine (nats-server, 1 ingest process and K write
processes on one JetStream stream) against the memory queue in one process."""

from __future__ import annotations

import pyarrow as pa

from bench.compare import compare
from bench.contenders import CONTENDERS, NatsTopology, measure_server
from bench.workload import Workload

NATS_SCENARIOS = [(8192, 1, 1), (8192, 4, 4)]  # (batch rows, producers, datasets)
NATS_WRITERS = [1, 2]  # 1 ingest + K write processes


def nats(base: pa.Table) -> list[dict]:
    """The scale-out topology on this machine against the memory queue in one process: 1 ingest process
    and K write processes on one JetStream stream, until `flush` says everything is durable."""
    results = []
    for batch_rows, producers, datasets in NATS_SCENARIOS:
        contenders = {"memory": CONTENDERS["memory"]}
        for k in NATS_WRITERS:
            contenders[f"nats-{k}w"] = measure_server(lambda tmp, k=k: NatsTopology(tmp, k), until_durable=True)
        row = compare(Workload(base, batch_rows), producers, datasets, contenders)
        for k in NATS_WRITERS:
            row[f"nats_{k}w_vs_memory"] = round(row["memory"]["seconds"] / row[f"nats-{k}w"]["seconds"], 2)
        results.append(row)
    return results
