"""The queue seam, split by role: what the ingest doors need (:class:`Ingest`) and what the writer needs
(:class:`Feed`). One :class:`Queue` implements both; in one process (``memory``, ``wal``) the two roles hold
the same object, across processes each role holds its own end of a shared log.

Ingest: ``put`` assigns every batch its sequence number (``seq``) and returns a receipt (:class:`Accepted`);
``settle(seq)`` resolves it once the batch is as safe as the reply says (``ack_state``: ``queued``, or
``logged`` when it is on disk first). ``flush`` asks the writers to write out what was put so far and waits
for it. ``position`` (a :class:`~flight_writer.queue.tracker.DurabilityTracker`) answers ``ack`` and ``status``: it
applies the durability records the write side produces, so it advances only after storage confirmed a write.

Feed: ``take`` hands out entries in seq order. Before storing an object the writer records its ``plan``
(the object's path and exact seqs); after storage confirmed it, ``confirm`` (or ``reject``, for batches the
encoder refused for good, kept aside) produces the durability record and releases the entries' capacity.
A queue that survives crashes keeps plans and confirmations, and after a restart hands back each
planned-but-unconfirmed entry with its plan (``Entry.planned``), so the writer stores the same object under
the same name again: exactly once, never a second copy.

One byte bound, counted here: capacity is held from ``put`` until ``confirm``/``reject`` -- until the batch is
durable, not merely taken -- so ``max_bytes`` bounds everything the server holds for producers: the queue,
the writer's buffers and files being uploaded. ``room()`` is what is left; the writer seals buffers early
when they hold more than that (writer.py).

A ``put`` that carries a client id already accepted within the last ``dedupe_window`` ids returns the
original seq with ``duplicate=True`` and stores nothing.
"""

from __future__ import annotations

import abc
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, NamedTuple

import pyarrow as pa

from flight_writer.queue.tracker import DurabilityTracker


class QueueFull(Exception):
    """``put`` waited ``timeout`` seconds and the queue still had no room."""


class QueueClosed(Exception):
    """The queue is closed: no more puts."""


class QueueLost(Exception):
    """The queue took back what it handed out (a shared queue redelivers it to another writer after this one
    lost its connection): the file holding it must not be stored; the batches come again from the feed."""


class QueueWriteError(Exception):
    """The queue could not record the batch (e.g. its disk is full); nothing was accepted."""


@dataclass(frozen=True, slots=True)
class Plan:
    """One object the writer is about to store: ``kind`` is ``parquet``, or ``failed`` for a batch the
    encoder rejected (kept as Arrow IPC, its seq marked failed with ``error``)."""

    path: str
    kind: str
    seqs: tuple[int, ...]
    error: str | None = None


@dataclass(slots=True, eq=False)
class Entry:
    seq: int
    dataset: str
    schema_key: bytes  # the stream's serialized schema: batches with equal keys may share a file
    batch: pa.RecordBatch
    received_at: float  # UTC epoch seconds; picks the date=/hour= partition
    nbytes: int  # the memory its buffers hold (get_total_buffer_size): what it counts against max_bytes
    client_id: str | None = None
    handle: Any = None  # the implementation's own reference to where the batch is kept
    planned: Plan | None = None  # handed back after a restart: store it exactly as this plan says


class Accepted(NamedTuple):
    """The receipt of a ``put``: the batch's seq, and whether it was a duplicate of an earlier id."""

    seq: int
    duplicate: bool


class Ingest(abc.ABC):
    """What the ingest doors use: put batches in, learn how safe they are, ask for a flush."""

    type: str
    #: the state a PutResult reports: ``queued``, or ``logged`` when the batch is on disk before the reply
    ack_state: str = "queued"
    #: which seqs are durable or failed, advanced by the durability records the write side produces
    position: DurabilityTracker
    #: batches over this many Arrow bytes are put as row slices, each with a seq of its own (NATS's
    #: max_payload); None: any size in one piece
    max_message_bytes: int | None = None

    @abc.abstractmethod
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
        """Append a batch and return its receipt; wait up to ``timeout`` s for room, else raise QueueFull.
        With ``wait=False`` it returns before the batch is settled (see ``settle``)."""

    @abc.abstractmethod
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
        """Put these batches (the partition pieces of one batch) all or none: room for every one, or
        QueueFull/QueueClosed with none taken."""

    #: whether ``put_packed`` may pack several batches into one record (one seq): NATS, where each message
    #: costs a publish and an acknowledgment; the others keep a record per batch and answer at once
    packs: bool = False

    def put_packed(
        self,
        dataset: str,
        schema_key: bytes,
        batch: pa.RecordBatch,
        timeout: float,
        after: Future[Accepted] | None = None,
    ) -> Future[Accepted]:
        """Put a batch without an id that may share its record, and so its seq, with other batches of the
        same dataset and schema put meanwhile; the receipt comes once the record is kept (as safe as
        ``ack_state`` says), or the future holds QueueFull, QueueClosed or QueueWriteError. ``after``: the
        receipt of the stream's previous packed batch; if it failed, this put raises its error (and a batch
        put before the failure was known fails with it), so a stream never has a batch kept after one that
        was not. Queues that do not pack put it alone (``put(wait=False)``) and may raise at once."""
        return put_alone(self, dataset, schema_key, batch, timeout)

    def settle(self, seq: int, wait: bool) -> bool:
        """Whether batch ``seq`` is as safe as ``ack_state`` says (fsynced, for a WAL that replies
        ``logged``); with ``wait``, block until it is. Raises QueueWriteError if it never will be.
        ``put(wait=False)`` then ``settle`` lets a stream go on reading while its records are made safe."""
        return True

    @abc.abstractmethod
    def flush(self, dataset: str | None, timeout: float | None) -> bool:
        """Ask the writers to write out everything put before this call (of ``dataset``, or all) and wait
        until ``position`` has it resolved. False if ``timeout`` s passed first, or the queue closed."""

    @abc.abstractmethod
    def refuse_puts(self) -> None:
        """From now on ``put`` raises QueueClosed (and waiting puts stop waiting); ``take`` still hands
        out what was put before, so a writer can drain it (a stop whose deadline passed)."""

    @property
    @abc.abstractmethod
    def last_seq(self) -> int:
        """The highest seq handed out so far (0 before the first)."""

    def refresh(self) -> None:
        """Forget what is cached of other processes' puts, so that ``last_seq`` and ``position`` answer for
        every seq issued until now (NATS keeps a stream's state 0.2 s); nothing to forget in one process."""
        return None

    @abc.abstractmethod
    def stats(self) -> dict[str, Any]:
        """At least ``pending_batches`` and ``pending_bytes`` (put, not yet confirmed)."""

    def received_by_dataset(self) -> dict[str, tuple[int, int, int]]:
        """Batches, rows and Arrow bytes put since start, per dataset (for status and metrics)."""
        return {}


def put_alone(
    ingest: Ingest, dataset: str, schema_key: bytes, batch: pa.RecordBatch, timeout: float
) -> Future[Accepted]:
    """``put_packed`` for a batch that keeps a record of its own: ``put(wait=False)``, its receipt done."""
    done: Future[Accepted] = Future()
    done.set_result(ingest.put(dataset, schema_key, batch, timeout, None, wait=False))
    return done


class Feed(abc.ABC):
    """What the write role uses: take entries, say what it is about to store, confirm what it stored."""

    #: names this queue's seq numbering: seqs of two queues with different identities are unrelated (two
    #: servers on one root, a memory queue before and after a restart). Files and table commits carry it, so
    #: a seq read back from them is told to this queue only if it is this queue's. "": unknown (never told)
    identity: str = ""

    @abc.abstractmethod
    def take(self, max_items: int, timeout: float) -> list[Entry]:
        """Up to ``max_items`` entries in seq order, waiting up to ``timeout`` s for one (``[]`` if none)."""

    @abc.abstractmethod
    def flush_requests(self) -> list[str | None]:
        """The datasets ``flush`` asked to be written out since the last call (None: every dataset)."""

    def plan(self, plan: Plan, entries: list[Entry] | None = None) -> None:  # noqa: B027 - optional
        """The writer is about to store ``plan.path`` holding exactly ``plan.seqs`` (these ``entries``).
        QueueLost if the queue took some of them back: the object must not be stored. (A queue that
        forgets on restart needs no plans.)"""

    @abc.abstractmethod
    def confirm(self, entries: list[Entry], path: str | None, table: bool = False) -> None:
        """The entries are stored in ``path`` (None: they had no rows): mark them durable, release them.
        ``table``: the file waits for a table commit (``committed`` follows); else they are committed too."""

    @abc.abstractmethod
    def committed(self, seqs: tuple[int, ...]) -> None:
        """A table commit holding these seqs' files landed: mark them committed."""

    @abc.abstractmethod
    def reject(self, entries: list[Entry], error: str) -> None:
        """The entries failed for good (kept aside as a ``failed`` plan said): mark them failed, release."""

    @abc.abstractmethod
    def room(self) -> int:
        """Bytes that can still be put before producers wait (negative when over the bound); the writer's
        buffers hold no more than that. NATS: the stream's bound less what writers hold, not what waits
        in the stream for them (nats/queue.py)."""

    @abc.abstractmethod
    def wake(self) -> None:
        """Make a ``take`` that is waiting now return at once."""


class SharedFeed(Feed):
    """A feed that several write processes share (NATS): each takes part of the batches, and what one
    process holds can be taken back and handed to another."""

    @abc.abstractmethod
    def stop_taking(self) -> None:
        """The writer is stopping: from now on ``take`` hands out nothing more (the other writers take the
        rest); what this process holds it must still write."""

    @abc.abstractmethod
    def dropped(self) -> bool:
        """True once after the queue took back everything it handed out and not yet planned (the connection
        was lost for long enough to redeliver it): the writer drops its open buffers."""


class Queue(Ingest, Feed):
    """Both roles, for one process. Implementations must be safe to call from many threads.
    ``shared``: whether ingest and write may run as separate processes on it (``serve --role``)."""

    shared: bool = False

    @abc.abstractmethod
    def close(self) -> None:
        """Refuse further puts, wake every waiter (``flush`` returns False), release resources."""
