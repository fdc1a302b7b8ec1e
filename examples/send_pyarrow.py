"""Send record batches to flight-writer with plain pyarrow.flight, and print the server's reply to each.

    make serve                                     # in one shell
    .venv/bin/python examples/send_pyarrow.py      # in another

The server answers each batch at once ("queued") and writes Parquet in the background: within
writer.flush_interval (10 s), or at once when asked (examples/flush_and_status.py).
"""

import json
import os

import pyarrow as pa
import pyarrow.flight as flight

# where the server listens: `make serve` uses grpc://127.0.0.1:8815 (configs/settings.toml, server.location)
URL = os.environ.get("FLIGHT_WRITER_URL", "grpc://127.0.0.1:8815")
DATASET = ("examples", "pyarrow")  # the dataset "examples/pyarrow": files under <storage root>/examples/pyarrow/


def spans(k: int) -> pa.RecordBatch:
    """A small batch of made-up request spans; k makes each batch a little different."""
    return pa.record_batch(
        {
            "service": ["api", "db", "api", "cache"],
            "latency_ms": [12.5 + k, 3.1, 8.0, 0.4],
            "ts": pa.array([1_764_000_000_000 + 100 * i + k for i in range(4)], pa.timestamp("ms", tz="UTC")),
        }
    )


with flight.connect(URL) as client:
    batches = [spans(k) for k in range(3)]
    # One do_put call is one stream: the descriptor names the dataset, then every batch has this schema.
    writer, reader = client.do_put(flight.FlightDescriptor.for_path(*DATASET), batches[0].schema)
    with writer:  # closing the writer ends the stream
        for batch in batches:
            writer.write_batch(batch)
            # the reply (a PutResult) is JSON: the batch's sequence number, its rows and its state
            reply = json.loads(reader.read().to_pybytes())
            print(reply)  # e.g. {'seq': 1, 'rows': 4, 'state': 'queued'}

rows = sum(b.num_rows for b in batches)
print(f"sent {rows} rows to {'/'.join(DATASET)}")
