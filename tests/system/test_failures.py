"""Storage failures, backpressure and batches the encoder rejects: nothing acknowledged is lost.

Storage is made to fail for real: a regular file is put where the dataset's directory must go, so the
rename into place fails until the test removes it.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.flight as flight
import pyarrow.ipc as ipc
import pytest

from helpers import action, ints, parquet_files, put, read_dataset, running, wait_for


def block(root: Path, dataset: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    blocker = root / dataset
    blocker.write_text("not a directory")
    return blocker


def test_failing_storage_is_retried_and_loses_nothing(data_root):
    blocker = block(data_root, "flaky")
    with running(data_root) as svc, flight.connect(svc.location) as c:
        replies = put(c, "flaky", [ints(1000, 0), ints(1000, 1000)])
        flusher = threading.Thread(target=action, args=(c, "flush"))
        flusher.start()
        status = wait_for(lambda: (s := action(c, "status"))["last_error"] and s, "last_error")
        assert "flaky/date=" in status["last_error"] and "failed" in status["last_error"]
        assert status["error_for_s"] >= 0
        assert [a["state"] for a in action(c, "ack", {"seqs": [r["seq"] for r in replies]})["acks"]] == [
            "queued",
            "queued",
        ]
        blocker.unlink()  # storage comes back
        flusher.join(60)
        assert not flusher.is_alive()
        status = action(c, "status")
        assert status["last_error"] is None and status["retries"] >= 1
        assert status["durable_through"] == replies[-1]["seq"]
    assert read_dataset(data_root, "flaky", sort_by="i").column("i").to_pylist() == list(range(2000))
    assert len(parquet_files(data_root, "flaky")) == 1
    assert list((data_root / "_tmp").iterdir()) == []  # failed attempts left no temporary objects


def test_full_queue_blocks_producers_then_fails_with_unavailable(data_root):
    blocker = block(data_root, "slow")
    max_bytes = 100_000  # 12 batches of 8,000 bytes
    with (
        running(data_root, queue={"max_bytes": max_bytes, "put_timeout": 1.0}) as svc,
        flight.connect(svc.location) as c,
    ):
        acked: list[int] = []
        writer, reader = c.do_put(flight.FlightDescriptor.for_path("slow"), ints(1000, 0).schema)
        with pytest.raises(flight.FlightUnavailableError, match="queue full"):
            for k in range(1000):
                writer.write_batch(ints(1000, k * 1000))
                if reader.read() is not None:
                    acked.append(k)
            writer.close()
        status = action(c, "status")
        assert len(acked) == status["pending_batches"] == max_bytes // 8000  # as many as the bound holds
        # acknowledged data is unaffected: once storage returns it is all written
        blocker.unlink()
        action(c, "flush")
    got = read_dataset(data_root, "slow", sort_by="i").column("i").to_pylist()
    assert got == [i for k in acked for i in range(k * 1000, k * 1000 + 1000)]


def test_blocked_producer_resumes_when_room_appears(data_root):
    """Backpressure, not failure: a producer waiting for room goes on once the writer catches up."""
    blocker = block(data_root, "paced")
    with (
        running(data_root, queue={"max_bytes": 40_000, "put_timeout": 60}) as svc,
        flight.connect(svc.location) as c,
    ):
        done = threading.Event()
        result: list[list[dict]] = []

        def produce() -> None:
            with flight.connect(svc.location) as pc:
                result.append(put(pc, "paced", [ints(1000, k * 1000) for k in range(20)]))
            done.set()

        producer = threading.Thread(target=produce)
        producer.start()
        flusher = threading.Thread(target=action, args=(c, "flush"))
        wait_for(lambda: action(c, "status")["pending_bytes"] >= 32_000, "the queue to fill")
        assert not done.is_set()  # the producer is held back, not refused
        flusher.start()
        blocker.unlink()
        producer.join(60)
        flusher.join(60)
        assert done.is_set() and len(result[0]) == 20
        action(c, "flush")
    assert len(read_dataset(data_root, "paced")) == 20_000


def test_batch_the_encoder_rejects_is_kept_under_failed(client, data_root):
    """timestamp[s] values beyond what microsecond timestamps hold (types = compatible) cannot be stored."""
    schema = pa.schema([("t", pa.timestamp("s")), ("n", pa.int64())])
    ok1 = pa.record_batch([pa.array([0, 1], pa.timestamp("s")), pa.array([1, 2])], schema=schema)
    bad = pa.record_batch([pa.array([2**62], pa.timestamp("s")), pa.array([3])], schema=schema)
    ok2 = pa.record_batch([pa.array([5], pa.timestamp("s")), pa.array([4])], schema=schema)
    replies = put(client, "rejects", [ok1, bad, ok2])
    seqs = [r["seq"] for r in replies]
    assert action(client, "flush")["durable_through"] == seqs[-1]

    acks = action(client, "ack", {"seqs": seqs})["acks"]
    assert [a["state"] for a in acks] == ["durable", "failed", "durable"]
    assert "out of bounds" in acks[1]["error"] and f"_failed/rejects/seq-{seqs[1]:012d}.arrow" in acks[1]["error"]
    assert read_dataset(data_root, "rejects", sort_by="n").column("n").to_pylist() == [1, 2, 4]
    kept = ipc.open_file(str(data_root / "_failed" / "rejects" / f"seq-{seqs[1]:012d}.arrow")).read_all()
    assert kept.to_batches()[0].equals(bad)
    assert action(client, "status")["batches_failed"] == 1


def test_durable_stream_reports_failed_batches(client, data_root):
    schema = pa.schema([("t", pa.timestamp("s"))])
    bad = pa.record_batch([pa.array([2**62], pa.timestamp("s"))], schema=schema)
    *_, final = put(client, "allbad", [bad], ack="durable")
    assert final["state"] == "durable" and final["files"] == []
    assert final["failed"][0]["state"] == "failed"
