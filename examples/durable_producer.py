"""A producer that loses nothing and stores nothing twice: batch ids, a durable stream, and re-sending.

    make serve                                        # in one shell
    .venv/bin/python examples/durable_producer.py     # in another

Each batch carries an id in its app_metadata ({"id": "..."}). The server remembers recent ids
(queue.dedupe_window) and does not store an id twice: a repeat is answered with the original seq and
"duplicate": true. So after a failure the producer re-sends every batch it has no reply for, with the same
ids, and whatever the server had already taken is not stored again.

The header x-flight-writer-ack: durable makes the stream end only once every batch is in Parquet.
Run this script twice: the second run's batches are all duplicates and nothing more is stored
(with the default memory queue the server forgets the ids when it restarts; with the WAL it keeps them).
"""

import json
import os

import pyarrow as pa
import pyarrow.flight as flight

URL = os.environ.get("FLIGHT_WRITER_URL", "grpc://127.0.0.1:8815")
DESCRIPTOR = flight.FlightDescriptor.for_path("examples", "durable")
DURABLE = flight.FlightCallOptions(headers=[(b"x-flight-writer-ack", b"durable")])


class ConnectionLost(Exception):
    """Stands in, in this example, for a real failure such as flight.FlightUnavailableError."""


def batch(k: int) -> pa.RecordBatch:
    """Batch number k: the same rows every time, so a re-send is the same data under the same id."""
    return pa.record_batch({"k": [k, k, k], "service": ["api", "db", "cache"], "latency_ms": [1.0 * k, 2.0, 0.5]})


# What this producer has to deliver: id -> batch. An id must name the same data on every send.
pending = {f"durable-example-{k}": batch(k) for k in range(5)}
rows_sent = sum(b.num_rows for b in pending.values())
seqs = []  # the seqs the server gave our batches (a duplicate's reply names the original seq)
duplicates = []  # ids the server already had: not stored again


def send(fail_after: int | None = None) -> None:
    """One durable do_put stream of every pending batch; a batch leaves `pending` once its reply arrives."""
    with flight.connect(URL) as client:
        writer, reader = client.do_put(DESCRIPTOR, batch(0).schema, options=DURABLE)
        with writer:
            for n, (batch_id, data) in enumerate(list(pending.items())):
                if n == fail_after:
                    raise ConnectionLost(f"the connection dropped after {n} batches, before any reply was read")
                writer.write_with_metadata(data, pa.py_buffer(json.dumps({"id": batch_id}).encode()))
            writer.done_writing()  # no more batches: the server now makes them durable
            # The replies, one per batch, then (a durable stream) a last one once all of them are in Parquet.
            while (buf := reader.read()) is not None:
                reply = json.loads(buf.to_pybytes())
                print(reply)
                if "id" in reply:
                    pending.pop(reply["id"])
                    seqs.append(reply["seq"])
                    if reply.get("duplicate"):
                        duplicates.append(reply["id"])


# Attempt 1 fails after writing three batches: the server may have taken them, but we cannot know.
try:
    send(fail_after=3)
except ConnectionLost as exc:
    print(f"attempt 1 failed: {exc}; {len(pending)} batches have no reply")

# Attempt 2 re-sends everything without a reply, same ids. (A real producer would retry in a loop, waiting a
# little longer each time.) Batches the server already had come back with "duplicate": true.
send()
assert not pending, "every batch has its reply"

# The ack action tells the state of any seqs; wait_ms waits (up to 5 s here) until they are durable. The durable
# stream above already waited; a queued stream (no header) would ack like this instead.
with flight.connect(URL) as client:
    body = json.dumps({"seqs": seqs, "wait_ms": 5000}).encode()
    [result] = client.do_action(flight.Action("ack", body))
acks = json.loads(result.body.to_pybytes())["acks"]
for ack in acks:
    print(ack)  # {'seq': 5, 'state': 'durable', 'file': 'examples/durable/date=.../part-....parquet'}
assert all(ack["state"] == "durable" for ack in acks)
print(f"{len(duplicates)} of {len(seqs)} batches were duplicates: the server had them and did not store them again")
print(f"sent {rows_sent} rows to examples/durable, each stored once")
