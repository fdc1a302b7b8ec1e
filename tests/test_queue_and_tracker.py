"""The queue seam and the durability position, on their own."""

from __future__ import annotations

import threading

import pyarrow as pa
import pytest

from flight_writer.queue import MemoryQueue, QueueClosed, QueueFull
from flight_writer.seqs import parse_ranges, seq_ranges
from flight_writer.tracker import DurabilityTracker

BATCH = pa.record_batch({"i": pa.array(range(100), pa.int64())})  # 800 bytes


def test_memory_queue_assigns_increasing_seqs_in_fifo_order():
    q = MemoryQueue(max_bytes=10_000)
    seqs = [q.put("ds", b"k", BATCH, 1).seq for _ in range(5)]
    assert seqs == [1, 2, 3, 4, 5] and q.last_seq == 5
    got = q.get(3, 0) + q.get(10, 0)
    assert [e.seq for e in got] == seqs
    assert q.stats()["pending_bytes"] == 4000  # capacity is held until done, not until get
    q.done(got)
    assert q.stats()["pending_bytes"] == 0 and q.stats()["pending_batches"] == 0


def test_memory_queue_bound_and_timeout():
    q = MemoryQueue(max_bytes=1600)
    q.put("ds", b"k", BATCH, 1)
    q.put("ds", b"k", BATCH, 1)
    with pytest.raises(QueueFull, match=r"queue full: 1600 of 1600 bytes pending, waited 0\.05 s"):
        q.put("ds", b"k", BATCH, 0.05)


def test_memory_queue_put_waits_for_done():
    q = MemoryQueue(max_bytes=800)
    q.put("ds", b"k", BATCH, 1)
    entries = q.get(1, 0)
    result: list[int] = []
    t = threading.Thread(target=lambda: result.append(q.put("ds", b"k", BATCH, 30).seq))
    t.start()
    t.join(0.1)
    assert t.is_alive() and result == []  # held back by the bound
    q.done(entries)
    t.join(30)
    assert result == [2]


def test_memory_queue_admits_an_oversized_batch_when_empty():
    q = MemoryQueue(max_bytes=10)
    assert q.put("ds", b"k", BATCH, 0) == (1, False)


def test_duplicate_client_ids_return_the_original_seq():
    q = MemoryQueue(max_bytes=10_000, dedupe_window=2)
    assert q.put("ds", b"k", BATCH, 1, "a") == (1, False)
    assert q.put("ds", b"k", BATCH, 1, "a") == (1, True)
    assert q.stats()["pending_batches"] == 1  # the duplicate stored nothing
    q.put("ds", b"k", BATCH, 1, "b")
    q.put("ds", b"k", BATCH, 1, "c")  # "a" leaves the window
    assert q.put("ds", b"k", BATCH, 1, "a") == (4, False)


def test_memory_queue_wake_and_close():
    q = MemoryQueue(max_bytes=10_000)
    result: list[list] = []
    t = threading.Thread(target=lambda: result.append(q.get(10, 60)))
    t.start()
    q.wake()
    t.join(30)
    assert result == [[]]
    q.close()
    with pytest.raises(QueueClosed):
        q.put("ds", b"k", BATCH, 1)


def test_tracker_watermark_advances_only_over_resolved_seqs():
    t = DurabilityTracker()
    t.mark_durable([2, 3], "b.parquet")
    assert t.durable_through == 0
    t.mark_failed([1], "bad")
    assert t.durable_through == 3
    t.mark_durable([5], "c.parquet")
    assert t.durable_through == 3
    assert t.describe(1, 5) == {"seq": 1, "state": "failed", "error": "bad"}
    assert t.describe(2, 5) == {"seq": 2, "state": "durable", "file": "b.parquet"}
    assert t.describe(4, 5) == {"seq": 4, "state": "queued"}
    assert t.describe(6, 5) == {"seq": 6, "state": "unknown"}
    assert t.files_of([2, 3, 5]) == ["b.parquet", "c.parquet"]


def test_tracker_history_is_bounded():
    t = DurabilityTracker(history=2)
    t.mark_durable([1, 2, 3], "a.parquet")
    assert t.describe(1, 3) == {"seq": 1, "state": "durable"}  # file forgotten, state still right
    assert t.describe(3, 3)["file"] == "a.parquet"


def test_tracker_wait():
    t = DurabilityTracker()
    assert t.wait([1], 0.01) is False
    threading.Timer(0.05, t.mark_durable, args=([1], "a")).start()
    assert t.wait([1], 30) is True


def test_seq_ranges():
    assert seq_ranges([1, 2, 3, 7, 9, 10]) == "1-3,7,9-10"
    assert seq_ranges([4]) == "4"
    assert list(parse_ranges("1-3,7,9-10")) == [1, 2, 3, 7, 9, 10]
    assert list(parse_ranges("")) == []


def test_put_many_takes_all_pieces_or_none():
    import pyarrow as pa
    import pytest

    from flight_writer.queue import MemoryQueue, QueueFull

    piece = pa.record_batch({"x": pa.array(range(1000), pa.int64())})
    size = piece.get_total_buffer_size()
    q = MemoryQueue(max_bytes=size * 5 // 2)
    q.put("d", b"k", piece, 1.0)
    with pytest.raises(QueueFull):
        q.put_many("d", b"k", [piece, piece], 0.05, [None, None])  # one piece would fit, two do not
    assert q.last_seq == 1 and q.stats()["pending_batches"] == 1
    accepted = q.put_many("d", b"k", [piece], 0.05, ["a#1"])
    again = q.put_many("d", b"k", [piece], 0.05, ["a#1"])
    assert [a.seq for a in accepted] == [2] and again[0].duplicate and again[0].seq == 2


def test_per_dataset_counts_take_the_first_names_then_count_the_rest_together(monkeypatch):
    from flight_writer.queue import base

    monkeypatch.setattr(base, "MAX_DATASETS", 2)
    table: dict[str, list[int]] = {}
    for name in ("a", "b", "c", "d", "a"):
        base.count_for(table, name, 1, 10, 100)
    assert table == {"a": [2, 20, 200], "b": [1, 10, 100], base.OTHER: [2, 20, 200]}
