"""kill -9 at random moments, again and again: every acknowledged batch ends up in Parquet exactly once.

Producers tag every batch with a client id and resend, with the same id, whatever was not acknowledged when
the server died, as an idempotent producer would. The seed is printed: a failure can be replayed with
CRASH_SEED=<seed>.
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.flight as flight
import pyarrow.parquet as pq

from helpers import action, write_config

ROWS = 20
ROUNDS = 24
SCHEMA = pa.schema([("id", pa.string()), ("k", pa.int32())])


def batch_for(client_id: str) -> pa.RecordBatch:
    return pa.record_batch([pa.array([client_id] * ROWS), pa.array(range(ROWS), pa.int32())], schema=SCHEMA)


class Producers:
    """Three producer threads against one server; they stop when it dies."""

    def __init__(self) -> None:
        self.acked: set[str] = set()
        self.sent: set[str] = set()
        self.resend: list[str] = []
        self.next_id = 0
        self.lock = threading.Lock()
        self.progress = threading.Condition(self.lock)

    def take(self, n: int, new: bool) -> list[str]:
        with self.lock:
            ids = self.resend[:n]
            del self.resend[:n]
            while new and len(ids) < n:
                ids.append(f"b{self.next_id}")
                self.next_id += 1
            return ids

    def produce(self, location: str, dataset: str, new: bool = True) -> None:
        """Send batches (resends first) until the server dies; with ``new=False`` only the resends."""
        ids: list[str] = []
        try:
            with flight.connect(location) as client:
                while ids := self.take(5, new):
                    writer, reader = client.do_put(flight.FlightDescriptor.for_path(dataset), SCHEMA)
                    while ids:
                        client_id = ids[0]
                        with self.lock:
                            self.sent.add(client_id)
                        writer.write_with_metadata(
                            batch_for(client_id), pa.py_buffer(json.dumps({"id": client_id}).encode())
                        )
                        reply = reader.read()
                        if reply is None:
                            return
                        assert json.loads(reply.to_pybytes())["id"] == client_id
                        with self.lock:
                            self.acked.add(client_id)
                            self.progress.notify_all()
                        ids.pop(0)
                    writer.close()
        except (flight.FlightError, OSError):
            pass  # the server was killed: what is not acknowledged is sent again
        finally:
            with self.lock:
                self.resend.extend(ids)

    def run_until(self, location: str, acks: int, timeout: float = 30) -> list[threading.Thread]:
        threads = [threading.Thread(target=self.produce, args=(location, f"crash{i % 2}")) for i in range(3)]
        target = len(self.acked) + acks
        for t in threads:
            t.start()
        with self.lock:
            self.progress.wait_for(lambda: len(self.acked) >= target, timeout)
        return threads


def test_sigkill_loop_exactly_once(tmp_path: Path, server_process):
    seed = int(os.environ.get("CRASH_SEED", random.randrange(1 << 30)))
    print(f"CRASH_SEED={seed}")
    rng = random.Random(seed)
    root = tmp_path / "data"
    config = write_config(
        tmp_path / "s.toml",
        root,
        f"""
[queue]
type = "wal"
path = "{tmp_path / "wal"}"
segment_bytes = 65536
[writer]
flush_interval = 0.05
max_file_rows = 400
""",
    )
    producers = Producers()
    kinds = Counter()
    for n in range(ROUNDS):
        server = server_process(config)
        kind = rng.choice(["replay", "receive", "receive"])
        kinds[kind] += 1
        threads: list[threading.Thread] = []
        if kind == "receive":  # while batches arrive and files are encoded and uploaded
            threads = producers.run_until(server.location, rng.randrange(5, 80))
            threading.Event().wait(rng.uniform(0, 0.05))  # a random instant, not a synchronization
        # "replay": right after startup, while recovered batches are being written
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait()
        for t in threads:
            t.join(30)
        server.close()
        (tmp_path / f"round{n:02d}.log").write_text(server.log)  # for a post-mortem

    server = server_process(config)
    producers.produce(server.location, "crash0", new=False)  # what was never acknowledged
    assert producers.resend == []
    with flight.connect(server.location) as client:
        action(client, "flush")
        status = action(client, "status")
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(60) == 0

    rows: Counter[str] = Counter()
    seqs_seen: Counter[int] = Counter()
    for f in sorted(root.rglob("*.parquet")):
        table = pq.read_table(f)  # every object is complete and readable
        rows.update(table.column("id").to_pylist())
        meta = pq.read_metadata(f).metadata
        for part in meta[b"flight_writer.seqs"].decode().split(","):
            first, _, last = part.partition("-")
            seqs_seen.update(range(int(first), int(last or first) + 1))
    assert list(root.glob("_tmp/*")) == []  # no partial object left
    assert {n for n in seqs_seen.values()} == {1}, "a seq stored twice"
    missing = sorted(producers.acked - set(rows))
    assert missing == [], f"acknowledged but not stored: {missing[:10]}"
    assert {i for i, n in rows.items() if n != ROWS} == set(), "a batch stored twice or partly"
    assert set(rows) <= producers.sent
    assert status["durable_through"] == status["received_seq"] == len(rows)
    print(f"rounds={ROUNDS} kinds={dict(kinds)} acked={len(producers.acked)} stored={len(rows)}")
