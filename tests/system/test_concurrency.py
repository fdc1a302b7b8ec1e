"""Many producers at once: every row lands exactly once and seqs are unique."""

from __future__ import annotations

import threading
from collections import Counter

import pyarrow as pa
import pyarrow.flight as flight
import pytest

from helpers import action, put, read_dataset, running

PRODUCERS = 8
STREAMS = 5
BATCHES = 20
ROWS = 50


@pytest.mark.parametrize("queue_type", ["memory", "wal"])
def test_eight_concurrent_producers_exactly_once(data_root, tmp_path, queue_type):
    # small files and a short interval, so writes happen while producers are still sending; with the WAL the
    # replies of every stream come from its own thread as fsyncs complete
    writer = {"max_file_rows": 3000, "flush_interval": 0.05, "threads": 2}
    queue = {"type": queue_type, "path": str(tmp_path / "wal")}
    with running(data_root, writer=writer, queue=queue) as svc:
        seqs: list[int] = []
        states: set[str] = set()
        errors: list[BaseException] = []
        lock = threading.Lock()

        def produce(p: int) -> None:
            try:
                with flight.connect(svc.location) as c:
                    for s in range(STREAMS):
                        batches = []
                        for b in range(BATCHES):
                            base = ((p * STREAMS + s) * BATCHES + b) * ROWS
                            batches.append(
                                pa.record_batch(
                                    {
                                        "producer": pa.array([p] * ROWS, pa.int32()),
                                        "row": pa.array(range(base, base + ROWS), pa.int64()),
                                    }
                                )
                            )
                        replies = put(c, f"p{p % 2}", batches)
                        with lock:
                            seqs.extend(r["seq"] for r in replies)
                            states.update(r["state"] for r in replies)
            except BaseException as exc:  # surfaced below, with the thread's own traceback
                errors.append(exc)

        threads = [threading.Thread(target=produce, args=(p,)) for p in range(PRODUCERS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, errors
        with flight.connect(svc.location) as c:
            assert action(c, "flush")["durable_through"] == max(seqs)
            status = action(c, "status")

    total = PRODUCERS * STREAMS * BATCHES
    assert len(seqs) == len(set(seqs)) == total
    assert sorted(seqs) == list(range(1, total + 1))
    assert states == {"logged" if queue_type == "wal" else "queued"}
    rows = [
        *read_dataset(data_root, "p0").column("row").to_pylist(),
        *read_dataset(data_root, "p1").column("row").to_pylist(),
    ]
    counts = Counter(rows)
    assert len(rows) == total * ROWS and set(counts.values()) == {1}
    assert sorted(counts) == list(range(total * ROWS))
    assert status["rows_written"] == total * ROWS and status["files_written"] >= 4
