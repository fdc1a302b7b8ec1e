"""In-memory queue: fast, bounded, and lost with the process (the WAL queue keeps acks across crashes).

Both roles in one object: producers' threads ``put``, the writer's loop ``take``s and ``confirm``s. A
:class:`Journal` (the WAL's log, wal.py) makes it durable: ``prepare`` encodes a batch before the lock (the
costly part: Arrow IPC, compression), ``append`` writes it under the lock so the log is in seq order (a
buffered write; fsync happens outside the lock, by the log's own thread), ``confirmed`` records what the
writer stored.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import deque
from typing import Any, Protocol

import pyarrow as pa

from flight_writer.queue.base import (
    Accepted,
    Entry,
    Queue,
    QueueClosed,
    QueueFull,
    QueueWriteError,
)
from flight_writer.queue.counting import Counts, IdWindow
from flight_writer.queue.tracker import DurabilityTracker


class Journal(Protocol):
    def prepare(self, batch: pa.RecordBatch, nbytes: int) -> Any: ...

    def append(self, entry: Entry, prepared: Any) -> None: ...

    def confirmed(self, entries: list[Entry]) -> None: ...


class MemoryQueue(Queue):
    """Implements :class:`Queue` with a deque under one lock.

    A batch larger than ``max_bytes`` is refused at once (QueueWriteError naming the setting): it could never
    fit, and a shared log (JetStream's ``max_bytes``) cannot take it either.
    ``history``: how many seqs' files the position remembers (``server.ack_history``).
    """

    type = "memory"

    def __init__(
        self,
        max_bytes: int,
        dedupe_window: int = 100_000,
        *,
        history: int = 100_000,
        last_seq: int = 0,
        journal: Journal | None = None,
    ) -> None:
        self._max_bytes = max_bytes
        self._journal = journal
        self.identity = f"memory:{uuid.uuid4().hex}"  # seqs start again at 1 with every process
        self._lock = threading.Lock()
        self._not_empty = threading.Condition(self._lock)
        self._has_room = threading.Condition(self._lock)
        self._items: deque[Entry] = deque()
        self._last_seq = last_seq
        self._pending_bytes = 0
        # dataset -> {seq: time received} of batches put and not yet confirmed, oldest first (per dataset for
        # flush; floats, not tuples: 100,000 pending tuples cost ~1 us per put in garbage collection)
        self._pending: dict[str, dict[int, float]] = {}
        self._pending_batches = 0
        self._ids = IdWindow(dedupe_window)
        self._flushes: list[str | None] = []
        self._woken = False
        self._closed = False
        self._received = Counts()  # batches, rows, Arrow bytes put since the queue was made (not recovered)
        self.position = DurabilityTracker(history, last_seq, pending_state=self.ack_state)

    # -- ingest ----------------------------------------------------------------------------------------
    def put(
        self,
        dataset: str,
        schema_key: bytes,
        batch: pa.RecordBatch,
        timeout: float,
        client_id: str | None = None,
        *,
        wait: bool = True,
    ) -> Accepted:
        nbytes = batch.get_total_buffer_size()  # 0.7 µs; .nbytes took 18 µs on a 100-row span batch
        if nbytes > self._max_bytes:
            raise QueueWriteError(self._too_large(nbytes))
        prepared = self._journal.prepare(batch, nbytes) if self._journal is not None else None
        with self._lock:
            if client_id is not None and (seq := self._ids.get(client_id)) is not None:
                return Accepted(seq, True)
            # the common case, room and open, without the waiting loop's bookkeeping
            room = not self._closed and self._pending_bytes + nbytes <= self._max_bytes
            if not room and not self._wait_for_room([nbytes], [client_id], timeout):
                return Accepted(self._ids.get(client_id), True)  # type: ignore[arg-type]  # came in during the wait
            seq = self._take_in(dataset, schema_key, batch, nbytes, client_id, prepared)
        if wait:
            self.settle(seq, wait=True)
        return Accepted(seq, False)

    def put_many(
        self,
        dataset: str,
        schema_key: bytes,
        batches: list[pa.RecordBatch],
        timeout: float,
        client_ids: list[str | None],
        *,
        wait: bool = True,
    ) -> list[Accepted]:
        sizes = [b.get_total_buffer_size() for b in batches]
        if sum(sizes) > self._max_bytes:
            raise QueueWriteError(self._too_large(sum(sizes)))
        journal = self._journal
        prepared = [journal.prepare(b, n) if journal is not None else None for b, n in zip(batches, sizes, strict=True)]
        with self._lock:
            self._wait_for_room(sizes, client_ids, timeout)  # all or none: a partial split is never left behind
            accepted = []
            for batch, nbytes, client_id, ready in zip(batches, sizes, client_ids, prepared, strict=True):
                if client_id is not None and (seq := self._ids.get(client_id)) is not None:
                    accepted.append(Accepted(seq, True))
                else:
                    seq = self._take_in(dataset, schema_key, batch, nbytes, client_id, ready)
                    accepted.append(Accepted(seq, False))
        if wait:
            self.settle(max(a.seq for a in accepted), wait=True)
        return accepted

    def _too_large(self, nbytes: int) -> str:
        return f"a batch of {nbytes} Arrow bytes is larger than queue.max_bytes ({self._max_bytes}): it can never fit"

    def _wait_for_room(self, sizes: list[int], client_ids: list[str | None], timeout: float) -> bool:
        """Under the lock: wait until the batches whose ids are not known yet fit. False if every one is
        known (a duplicate, also one that came in during the wait)."""
        deadline = None
        while True:
            unknown = [n for n, c in zip(sizes, client_ids, strict=True) if c is None or self._ids.get(c) is None]
            if not unknown:
                return False
            new = sum(unknown)
            if self._closed:
                raise QueueClosed("queue is closed")
            if self._pending_bytes + new <= self._max_bytes:
                return True
            if deadline is None:
                deadline = time.monotonic() + timeout
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise QueueFull(
                    f"queue full: {self._pending_bytes} of {self._max_bytes} bytes pending, waited {timeout:g} s"
                )
            self._has_room.wait(remaining)

    def _take_in(
        self, dataset: str, schema_key: bytes, batch: pa.RecordBatch, nbytes: int, client_id: str | None, prepared: Any
    ) -> int:
        """Under the lock, with room: the batch's entry, journaled, visible to ``take``, counted."""
        entry = Entry(self._last_seq + 1, dataset, schema_key, batch, time.time(), nbytes, client_id)
        if self._journal is not None:
            self._journal.append(entry, prepared)
        self._accept(entry)
        self._received.add(dataset, batch.num_rows, nbytes)
        return entry.seq

    def _accept(self, entry: Entry) -> None:
        """Under the lock: make the entry visible to ``take`` and count it (also for recovered entries)."""
        self._last_seq = max(self._last_seq, entry.seq)
        self._items.append(entry)
        self._pending_bytes += entry.nbytes
        of = self._pending.get(entry.dataset)
        if of is None:
            of = self._pending[entry.dataset] = {}
        of[entry.seq] = entry.received_at
        self._pending_batches += 1
        if entry.client_id is not None:
            self._ids.add(entry.client_id, entry.seq)
        self._not_empty.notify()

    def flush(self, dataset: str | None, timeout: float | None) -> bool:
        with self._lock:
            if dataset is None:
                seqs = [s for of in self._pending.values() for s in of]
            else:
                seqs = list(self._pending.get(dataset, ()))
            # asked even when nothing is pending: files stored already may still wait for a table commit
            self._flushes.append(dataset)
            self._woken = True
            self._not_empty.notify_all()
            if not seqs:
                return True
        return self.position.wait(seqs, timeout)

    def refuse_puts(self) -> None:
        with self._lock:
            self._closed = True
            self._has_room.notify_all()

    @property
    def last_seq(self) -> int:
        return self._last_seq

    # -- feed ------------------------------------------------------------------------------------------
    def take(self, max_items: int, timeout: float) -> list[Entry]:
        with self._lock:
            if not self._items and not self._woken and timeout > 0:
                self._not_empty.wait(timeout)
            self._woken = False
            n = min(max_items, len(self._items))
            return [self._items.popleft() for _ in range(n)]

    def flush_requests(self) -> list[str | None]:
        if not self._flushes:  # read without the lock: the writer asks every round
            return []
        with self._lock:
            requests, self._flushes = self._flushes, []
            return requests

    def confirm(self, entries: list[Entry], path: str | None, table: bool = False) -> None:
        if entries:
            self.position.mark_durable([e.seq for e in entries], path, table)
            self._release(entries)

    def committed(self, seqs: tuple[int, ...]) -> None:
        self.position.mark_committed(seqs)

    def reject(self, entries: list[Entry], error: str) -> None:
        if entries:
            self.position.mark_failed([e.seq for e in entries], error)
            self._release(entries)

    def _release(self, entries: list[Entry]) -> None:
        if self._journal is not None:
            self._journal.confirmed(entries)
        with self._lock:
            self._pending_bytes -= sum(e.nbytes for e in entries)
            for e in entries:
                of = self._pending.get(e.dataset)
                if of is not None and of.pop(e.seq, None) is not None:
                    self._pending_batches -= 1
                    if not of:
                        del self._pending[e.dataset]
            self._has_room.notify_all()

    def room(self) -> int:
        return self._max_bytes - self._pending_bytes  # one read of each: no lock needed for an estimate

    def wake(self) -> None:
        with self._lock:
            self._woken = True
            self._not_empty.notify_all()

    # -- both ------------------------------------------------------------------------------------------
    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._woken = True
            self._not_empty.notify_all()
            self._has_room.notify_all()
        self.position.close()

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "pending_batches": self._pending_batches,
                "pending_bytes": self._pending_bytes,
                "queued_batches": len(self._items),
                "dedupe_ids": len(self._ids),
                "received_batches": self._received.total[0],
                "received_rows": self._received.total[1],
                "received_bytes": self._received.total[2],
                # each dict keeps insertion (seq) order: its first value is its dataset's oldest
                "oldest_pending_age_s": round(max(0.0, time.time() - oldest), 3)
                if (oldest := min((next(iter(of.values())) for of in self._pending.values()), default=None)) is not None
                else None,
            }

    def received_by_dataset(self) -> dict[str, tuple[int, int, int]]:
        """Batches, rows and Arrow bytes put since the queue was made, per dataset (the first
        ``MAX_DATASETS`` names; the rest together under ``OTHER``)."""
        with self._lock:
            return self._received.by_dataset()
