"""The queue seam's contract, one suite run against every implementation: memory, the write-ahead log with
each fsync policy, and NATS JetStream (a real nats-server). Where an implementation differs by design the
test says so."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pyarrow as pa
import pytest

from flight_writer.config import QueueSettings
from flight_writer.queue import MemoryQueue, Queue, QueueClosed, QueueFull, QueueWriteError, WalQueue

import natsd
from helpers import take_rows

BATCH = pa.record_batch({"i": pa.array(range(100), pa.int64())})
SIZE = BATCH.get_total_buffer_size()  # what a batch counts against max_bytes in memory and the WAL


@pytest.fixture(scope="module")
def nats_server() -> Iterator[natsd.Nats]:
    server = natsd.start()
    yield server
    server.stop()


class Queues:
    """Makes queues of one kind; ``unit`` is what one BATCH counts against ``max_bytes`` in it (JetStream
    counts stored message bytes: Arrow IPC and headers)."""

    def __init__(self, kind: str, tmp_path, nats: natsd.Nats | None) -> None:
        self.kind, self._tmp, self._nats = kind, tmp_path, nats
        self.made: list[Queue] = []
        self.unit = SIZE
        self.nats = kind.startswith("nats")
        #: nats-slots: one stream whose seqs leave room for three more (stream_slots = 4): seq n is 4 n
        self.stride = 4 if kind == "nats-slots" else 1
        if self.nats:
            probe = self(room=1000)
            probe.put("ds", b"k", BATCH, 1)
            self.unit = probe.stats()["pending_bytes"] + 64  # ids differ by a few bytes: leave headroom

    def __call__(self, room: int = 100, dedupe_window: int = 100_000) -> Queue:
        """A queue with room for ``room`` batches."""
        max_bytes = int(room * self.unit)
        if self.kind == "memory":
            queue: Queue = MemoryQueue(max_bytes, dedupe_window)
        elif self.nats:
            from flight_writer.queue import make_queue

            settings = QueueSettings(
                type="nats",
                url=self._nats.urls,
                stream=self._nats.new_stream(),
                max_bytes=max_bytes,
                ack_wait=5,
                stream_slots=self.stride if self.stride > 1 else 0,
            )
            queue = make_queue(settings)
        else:
            fsync = self.kind.split("-")[1]
            path = self._tmp / f"wal{len(self.made)}"
            queue = WalQueue(path, max_bytes, fsync=fsync, dedupe_window=dedupe_window)
        self.made.append(queue)
        return queue

    def seq(self, n: int) -> int:
        """The seq of the n-th batch put (a stream's sequence n)."""
        return n * self.stride


@pytest.fixture(params=["memory", "wal-always", "wal-interval", "nats", "nats-slots"])
def new_queue(request, tmp_path) -> Iterator[Queues]:
    nats = request.getfixturevalue("nats_server") if request.param.startswith("nats") else None
    queues = Queues(request.param, tmp_path, nats)
    yield queues
    for queue in queues.made:
        queue.close()


def test_seqs_increase_and_get_returns_them_in_order(new_queue):
    q, seq = new_queue(), new_queue.seq
    seqs = [q.put("ds", b"k", BATCH, 1).seq for _ in range(5)]
    assert seqs == [seq(n) for n in range(1, 6)] and q.last_seq == seq(5)
    got = q.take(3, 0) + q.take(10, 0)
    assert [e.seq for e in got] == seqs and got[0].batch.equals(BATCH) and got[0].dataset == "ds"


def test_capacity_is_held_from_put_until_done_not_until_get(new_queue):
    q = new_queue()
    for _ in range(4):
        q.put("ds", b"k", BATCH, 1)
    got = q.take(10, 0)
    assert 4 * (new_queue.unit - 128) <= q.stats()["pending_bytes"] <= 4 * new_queue.unit
    assert q.stats()["pending_batches"] == 4
    q.confirm(got, None)
    assert q.stats()["pending_bytes"] == 0 and q.stats()["pending_batches"] == 0


def test_a_full_queue_waits_then_refuses_naming_its_bound(new_queue):
    q = new_queue(room=2)
    q.put("ds", b"k", BATCH, 1)
    q.put("ds", b"k", BATCH, 1)
    with pytest.raises(QueueFull, match=r"queue full: .*(bytes pending|queue\.max_bytes).*waited 0\.05 s"):
        q.put("ds", b"k", BATCH, 0.05)


def test_a_waiting_put_goes_in_once_done_releases_room(new_queue):
    q = new_queue(room=1)
    q.put("ds", b"k", BATCH, 1)
    entries = q.take(1, 0)
    put_done = threading.Event()
    result: list[int] = []

    def producer() -> None:
        result.append(q.put("ds", b"k", BATCH, 30).seq)
        put_done.set()

    threading.Thread(target=producer).start()
    assert not put_done.wait(0.1)  # held back by the bound (a bounded wait: nothing can signal "still waiting")
    q.confirm(entries, None)
    assert put_done.wait(30) and result == [new_queue.seq(2)]


def test_a_batch_larger_than_the_whole_bound_is_refused_at_once(new_queue):
    q = new_queue(room=1)
    big = pa.record_batch({"i": pa.array(range(2000), pa.int64())})  # 20 x BATCH
    with pytest.raises(QueueWriteError, match=r"max_bytes"):
        q.put("ds", b"k", big, 30)  # at once: it could never fit
    assert q.put("ds", b"k", BATCH, 1) == (new_queue.seq(1), False)


def test_a_known_client_id_returns_the_original_seq_within_the_window(new_queue):
    if new_queue.nats:
        pytest.skip("JetStream's window is a duration (queue.duplicate_window): tests/queue/test_nats.py")
    q = new_queue(dedupe_window=2)
    assert q.put("ds", b"k", BATCH, 1, "a") == (1, False)
    assert q.put("ds", b"k", BATCH, 1, "a") == (1, True)
    assert q.stats()["pending_batches"] == 1  # the duplicate stored nothing
    q.put("ds", b"k", BATCH, 1, "b")
    q.put("ds", b"k", BATCH, 1, "c")  # "a" leaves the window
    assert q.put("ds", b"k", BATCH, 1, "a") == (4, False)


def test_put_many_takes_all_pieces_or_none(new_queue):
    if new_queue.nats:
        pytest.skip("one message per piece on JetStream; ids make a re-sent batch store only missing pieces")
    q = new_queue(room=2.5)
    q.put("d", b"k", BATCH, 1.0)
    with pytest.raises(QueueFull):
        q.put_many("d", b"k", [BATCH, BATCH], 0.05, [None, None])  # one piece would fit, two do not
    assert q.last_seq == 1 and q.stats()["pending_batches"] == 1
    accepted = q.put_many("d", b"k", [BATCH], 0.05, ["a#1"])
    again = q.put_many("d", b"k", [BATCH], 0.05, ["a#1"])  # known: no room needed
    assert [a.seq for a in accepted] == [2] and again[0].duplicate and again[0].seq == 2


def test_packed_puts_are_kept_in_order_and_each_receipt_names_the_record_holding_it(new_queue):
    q = new_queue()
    batches = [pa.record_batch({"i": pa.array(range(k * 100, k * 100 + 100), pa.int64())}) for k in range(20)]
    receipts = [q.put_packed("ds", b"k", b, 5) for b in batches]
    seqs = [r.result(60).seq for r in receipts]
    got = take_rows(q, 2000)
    assert [e.seq for e in got] == sorted(set(seqs)) and q.last_seq == max(seqs)
    assert pa.Table.from_batches([e.batch for e in got]).equals(pa.Table.from_batches(batches))
    assert seqs == sorted(seqs) and not any(r.result().duplicate for r in receipts)
    if not q.packs:  # a record per batch
        assert seqs == [new_queue.seq(n) for n in range(1, 21)]
    q.confirm(got, None)
    assert q.position.durable_through == max(seqs)


def test_a_packed_put_on_a_full_or_closed_queue_says_so(new_queue):
    q = new_queue(room=1)
    q.put("ds", b"k", BATCH, 1)
    with pytest.raises(QueueFull, match=r"queue full: .*waited 0\.05 s"):
        q.put_packed("ds", b"k", BATCH, 0.05).result(60)  # at once, or in the receipt (NATS)
    q.refuse_puts()
    with pytest.raises(QueueClosed):
        q.put_packed("ds", b"k", BATCH, 1).result(60)


def test_a_put_is_as_safe_as_ack_state_once_logged(new_queue):
    q = new_queue()
    seq, _ = q.put("ds", b"k", BATCH, 1, wait=False)
    assert q.settle(seq, True) and q.settle(seq, False)
    assert q.ack_state in ("queued", "logged")


def test_wake_returns_a_waiting_get_empty(new_queue):
    q = new_queue()
    result: list[list] = []
    t = threading.Thread(target=lambda: result.append(q.take(10, 60)))
    t.start()
    q.wake()
    t.join(30)
    assert result == [[]]


def test_refuse_puts_keeps_what_was_put_for_get(new_queue):
    q = new_queue()
    q.put("ds", b"k", BATCH, 1)
    q.refuse_puts()
    with pytest.raises(QueueClosed):
        q.put("ds", b"k", BATCH, 1)
    with pytest.raises(QueueClosed):
        q.put_many("ds", b"k", [BATCH], 1, [None])
    assert [e.seq for e in q.take(10, 0)] == [new_queue.seq(1)]


def test_close_refuses_puts(new_queue):
    q = new_queue()
    q.close()
    with pytest.raises(QueueClosed):
        q.put("ds", b"k", BATCH, 1)


def test_counts_per_dataset_and_the_oldest_pending_age(new_queue):
    q = new_queue()
    assert q.stats()["oldest_pending_age_s"] is None
    q.put("a", b"k", BATCH, 1)
    q.put("b", b"k", BATCH, 1)
    q.put("a", b"k", BATCH, 1)
    assert q.received_by_dataset() == {"a": (2, 200, 2 * SIZE), "b": (1, 100, SIZE)}  # Arrow bytes
    stats = q.stats()
    assert stats["oldest_pending_age_s"] >= 0 and stats["received_batches"] == 3 and stats["received_rows"] == 300
    q.confirm(q.take(10, 0), None)
    assert q.stats()["oldest_pending_age_s"] is None


def test_a_duplicate_waiting_for_room_is_answered_as_one_once_its_twin_goes_in(new_queue):
    q = new_queue(room=1)
    q.put("ds", b"k", BATCH, 1)
    results: list[object] = []
    waiting = [threading.Thread(target=lambda: results.append(q.put("ds", b"k", BATCH, 30, "same"))) for _ in "ab"]
    for t in waiting:
        t.start()
    q.confirm(q.take(1, 0), None)  # room for one: the other is its duplicate, not a second wait
    for t in waiting:
        t.join(30)
    assert sorted(results) == [(new_queue.seq(2), False), (new_queue.seq(2), True)]


def test_an_empty_batch_takes_a_seq_like_any_other(new_queue):
    q, seq = new_queue(), new_queue.seq
    empty = BATCH.slice(0, 0)
    assert q.put("ds", b"k", empty, 1) == (seq(1), False)
    assert q.put("ds", b"k", empty, 1, "e") == (seq(2), False) and q.put("ds", b"k", empty, 1, "e") == (seq(2), True)


# ids that a NATS header would make one (stripped, CR/LF turned into spaces), the encoding's own marker,
# what a process names the batches without an id, and non-ASCII: each a batch id of its own, on every queue
NEAR_IDS = ["a", " a", "a ", "a\n", "a\r", "a b", "a  b", "", " ", "~b64~YQ==", "~b64~", "é", "e\u0301", "~x-1"]


def test_ids_that_differ_anywhere_are_different_batches_and_come_back_as_sent(new_queue):
    q, seq = new_queue(), new_queue.seq
    firsts = [q.put("ds", b"k", BATCH, 1, cid) for cid in NEAR_IDS]
    assert firsts == [(seq(n), False) for n in range(1, len(NEAR_IDS) + 1)]
    assert [q.put("ds", b"k", BATCH, 1, cid) for cid in NEAR_IDS] == [(a.seq, True) for a in firsts]
    taken = take_rows(q, len(NEAR_IDS) * BATCH.num_rows)
    assert [(e.seq, e.client_id) for e in taken] == [(a.seq, cid) for a, cid in zip(firsts, NEAR_IDS, strict=True)]


# -- the write side's records reach the position, and flush goes through the feed ---------------------------
def test_confirm_and_reject_advance_the_position_and_release_capacity(new_queue):
    q, seq = new_queue(), new_queue.seq
    for _ in range(3):
        q.put("ds", b"k", BATCH, 1)
    first, second, third = q.take(10, 0)
    assert q.position.describe(seq(1))["state"] == q.ack_state and q.position.durable_through < seq(1)
    q.confirm([second], "ds/part-2.parquet")
    assert q.position.durable_through < seq(1)  # seq 1 is not resolved yet: the position only moves in order
    q.reject([first], "rejected by the Parquet encoder")
    assert seq(2) <= q.position.durable_through < seq(3)  # every seq issued up to it (none between with slots)
    error = "rejected by the Parquet encoder"
    assert q.position.describe(seq(1)) == {"seq": seq(1), "state": "failed", "error": error}
    assert q.position.describe(seq(2)) == {"seq": seq(2), "state": "durable", "file": "ds/part-2.parquet"}
    full = 100 * new_queue.unit
    assert q.stats()["pending_batches"] == 1 and full - new_queue.unit <= q.room() < full
    q.confirm([third], None)  # no rows, no file
    assert q.position.durable_through == seq(3) and q.room() == full


def test_flush_asks_the_feed_and_returns_once_the_position_has_the_seqs(new_queue):
    q = new_queue()
    q.put("a", b"k", BATCH, 1)
    q.put("b", b"k", BATCH, 1)
    # JetStream: a dataset's seqs are not known across processes, so writers write out every buffer and the
    # flush waits for everything put before it
    asked = [None] if new_queue.nats else ["a"]
    assert q.flush("a", 0) is False  # nobody wrote it yet
    assert _requests_arrive(q) == asked
    result: list[bool] = []
    waiter = threading.Thread(target=lambda: result.append(q.flush("a", 60)))
    waiter.start()
    a, b = q.take(10, 0)  # a writer: takes, sees the request, stores what it asks for
    assert _requests_arrive(q) == asked
    q.confirm([a], "a/part-1.parquet")
    if not new_queue.nats:
        waiter.join(30)
        assert result == [True] and q.position.describe(b.seq)["state"] == q.ack_state  # b was not asked for
    q.confirm([b], "b/part-2.parquet")
    waiter.join(30)
    assert result == [True]
    assert q.flush("a", 0) is True  # nothing pending: nothing to ask


def test_flush_of_everything_and_close_ends_a_waiting_flush(new_queue):
    q = new_queue()
    assert q.flush(None, 0) is True  # nothing pending
    _requests_arrive(q)  # asked all the same: stored files may still wait for their table commit
    q.put("a", b"k", BATCH, 1)
    q.take(10, 0)
    result: list[bool] = []
    waiter = threading.Thread(target=lambda: result.append(q.flush(None, 60)))
    waiter.start()
    assert _requests_arrive(q) == [None]
    q.close()  # the writer is gone: the flush answers instead of waiting forever
    waiter.join(30)
    assert result == [False]


def _requests_arrive(q: Queue) -> list[str | None]:
    """The flush requests a writer would see, once the flushing thread has made one (it runs beside us)."""
    while not (requests := q.flush_requests()):
        q.take(0, 0.05)  # a writer waiting on the feed is woken by a request
    return requests
