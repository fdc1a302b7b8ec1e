"""The durability position and seq ranges, on their own (the queue's contract: test_queue_contract.py)."""

from __future__ import annotations

import threading

import pyarrow as pa

from flight_writer.queue.seqs import parse_ranges, seq_ranges
from flight_writer.queue.tracker import DurabilityTracker

BATCH = pa.record_batch({"i": pa.array(range(100), pa.int64())})  # 800 bytes


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
    # runs with a step (a sharded queue's seqs in one file, stride 4): read, not written
    assert list(parse_ranges("5-17/4,18,30")) == [5, 9, 13, 17, 18, 30]
    assert seq_ranges([5, 9, 13, 17, 18, 30]) == "5,9,13,17-18,30"
    every_other = list(range(1, 200_001, 2))
    assert list(parse_ranges(seq_ranges(every_other))) == every_other


def test_per_dataset_counts_take_the_first_names_then_count_the_rest_together(monkeypatch):
    from flight_writer.queue import counting

    monkeypatch.setattr(counting, "MAX_DATASETS", 2)
    counts = counting.Counts()
    for name in ("a", "b", "c", "d", "a"):
        counts.add(name, 10, 100)
    assert counts.by_dataset() == {"a": (2, 20, 200), "b": (1, 10, 100), counting.OTHER: (2, 20, 200)}
    assert counts.total == [5, 50, 500]


def test_seqs_from_before_a_start_are_not_committed_while_their_adoption_is_held():
    """A restart counts the seqs before it as committed (the start adopted what a crash left); when that
    adoption failed, they are durable only until a later try adopted them."""
    t = DurabilityTracker(durable_through=10)
    assert t.committed_through == 10
    t.hold_committed()
    assert t.committed_through == 0 and t.describe(5)["state"] == "durable"
    assert not t.wait_committed([5], 0)
    t.mark_durable([11, 12], "f.parquet", table=True)
    t.mark_committed([11, 12])  # new data goes in as it did; the position waits for the old
    assert t.committed_through == 0 and t.wait_committed([11, 12], 0)
    t.mark_committed([3])  # a retold commit from before the start
    assert t.committed_through == 0
    t.release_committed()
    assert t.committed_through == 12 and t.wait_committed_through(12, 0)
