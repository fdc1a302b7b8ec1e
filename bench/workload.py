"""The workload: the spans every contender is sent (make_spans), cut into batches of one size (Workload),
and how much a measurement sends: BENCH_SCALE (1 = 1 GiB of Arrow data, BYTES_PER_RUN) and BENCH_REPEAT (runs
per measurement; the median counts). Parquet row groups of ROW_GROUP_ROWS rows, for the server and the direct
writers alike."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa

SCALE = float(os.environ.get("BENCH_SCALE", "1"))
BYTES_PER_RUN = int((1 << 30) * SCALE)
REPEAT = int(os.environ.get("BENCH_REPEAT", "3"))
ROW_GROUP_ROWS = 1_048_576
MiB = 1 << 20


# -- data ---------------------------------------------------------------------------------------------------
def make_spans(rows: int, seed: int = 7) -> pa.Table:
    """Observability spans: what our users send."""
    rng = np.random.default_rng(seed)
    services = np.array([f"service-{i}" for i in range(12)], dtype=object)
    names = np.array([f"GET /api/v1/resource/{i}" for i in range(200)], dtype=object)
    statuses = np.array(["OK", "ERROR", "UNSET"], dtype=object)
    start = 1_764_000_000_000_000_000
    keys = pa.array(np.tile(np.array(["http.method", "http.status_code", "host.name", "region"], dtype=object), rows))
    values = pa.array(
        np.stack(
            [
                rng.choice(np.array(["GET", "POST", "PUT"], dtype=object), rows),
                rng.choice(np.array(["200", "404", "500"], dtype=object), rows),
                np.char.add("host-", rng.integers(0, 500, rows).astype(str)).astype(object),
                rng.choice(np.array(["eu-west-1", "us-east-1"], dtype=object), rows),
            ],
            axis=1,
        ).reshape(-1)
    )
    attributes = pa.MapArray.from_arrays(pa.array(np.arange(0, 4 * rows + 1, 4, dtype=np.int32)), keys, values)
    return pa.table(
        {
            "timestamp": pa.array(start + np.cumsum(rng.integers(1_000, 1_000_000, rows)), pa.timestamp("ns", "UTC")),
            "service": pa.array(rng.choice(services, rows)),
            "trace_id": pa.FixedSizeBinaryArray.from_buffers(
                pa.binary(16), rows, [None, pa.py_buffer(rng.bytes(16 * rows))]
            ),
            "span_id": pa.FixedSizeBinaryArray.from_buffers(
                pa.binary(8), rows, [None, pa.py_buffer(rng.bytes(8 * rows))]
            ),
            "name": pa.array(rng.choice(names, rows)),
            "duration_ns": pa.array(rng.lognormal(13, 2, rows).astype(np.int64)),
            "status": pa.array(rng.choice(statuses, rows, p=[0.9, 0.05, 0.05])),
            "attributes": attributes,
        }
    )


def fixed_binary(rng: np.random.Generator, width: int, rows: int) -> pa.Array:
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), rows, [None, pa.py_buffer(rng.bytes(width * rows))])


class Workload:
    """Batches of one size, cycled from a base table until ``BYTES_PER_RUN`` bytes have been handed out."""

    def __init__(self, base: pa.Table, batch_rows: int, nbytes: float = BYTES_PER_RUN) -> None:
        self.batches = base.combine_chunks().to_batches(max_chunksize=batch_rows)
        self.batch_bytes = sum(b.nbytes for b in self.batches) / len(self.batches)
        self.count = max(1, int(nbytes / self.batch_bytes))
        self.rows = sum(self.batches[i % len(self.batches)].num_rows for i in range(self.count))
        self.nbytes = sum(self.batches[i % len(self.batches)].nbytes for i in range(self.count))

    def share(self, producer: int, producers: int) -> list[pa.RecordBatch]:
        return [self.batches[i % len(self.batches)] for i in range(producer, self.count, producers)]
