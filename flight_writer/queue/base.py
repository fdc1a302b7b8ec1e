"""The queue seam: what the Flight server puts batches into and the writer drains.

A queue assigns every batch its sequence number (``seq``) at ``put``, so queue order is seq order and a
WAL can persist the numbering. Capacity is counted in Arrow bytes from ``put`` until the writer calls
``done`` -- that is, until the batch is durable, not merely dequeued -- so ``max_bytes`` bounds everything
the server holds for producers: the queue, the writer's buffers and files being uploaded.

The writer tells the queue what it is about to store (``plan``: the object's path and exact seqs) before
uploading, and ``done`` after storage confirmed it. A queue that survives crashes logs both, so that after a
restart it hands back each planned-but-unconfirmed file as the same plan (``Entry.plan``) and the writer
stores the same object again under the same name: exactly once, never a second copy.

A ``put`` that carries a client id already accepted within the last ``dedupe_window`` ids returns the
original seq with ``duplicate=True`` and stores nothing.
"""

from __future__ import annotations

import abc
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, NamedTuple

import pyarrow as pa

MAX_DATASETS = 10_000  # datasets counted by name (status, metrics); beyond, together: names are the clients'
OTHER = "(other)"  # what those are counted as: not a valid dataset name, so it cannot collide with one


def count_for(table: dict[str, list[int]], dataset: str, items: int, rows: int, nbytes: int) -> None:
    """Add to a dataset's three counters in ``table`` (under its owner's lock): the first ``MAX_DATASETS``
    names each on their own, later ones together as ``OTHER``."""
    counts = table.get(dataset)
    if counts is None:
        counts = table.setdefault(dataset if len(table) < MAX_DATASETS else OTHER, [0, 0, 0])
    counts[0] += items
    counts[1] += rows
    counts[2] += nbytes


class QueueFull(Exception):
    """``put`` waited ``timeout`` seconds and the queue still had no room."""


class QueueClosed(Exception):
    """The queue is closed: no more puts."""


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
    nbytes: int  # the memory its buffers hold (get_total_buffer_size)
    client_id: str | None = None
    segment: int = 0  # where a log-backed queue keeps it
    plan: Plan | None = None  # set on recovery: this entry must be stored exactly as planned


class Accepted(NamedTuple):
    seq: int
    duplicate: bool


class Queue(abc.ABC):
    """Bounded, FIFO, seq-assigning. Implementations must be safe to call from many threads."""

    type: str
    #: the state a PutResult reports: ``queued``, or ``logged`` when the batch is on disk before the reply
    ack_state: str = "queued"

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
        """Append a batch and return its seq; wait up to ``timeout`` s for room, else raise QueueFull.
        With ``wait=False`` it returns before the batch is ``logged`` (see there)."""

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
        QueueFull/QueueClosed with none taken. This fallback is not atomic; implementations override it."""
        return [
            self.put(dataset, schema_key, b, timeout, c, wait=wait) for b, c in zip(batches, client_ids, strict=True)
        ]

    def logged(self, seq: int, wait: bool) -> bool:
        """Whether batch ``seq`` is as safe as ``ack_state`` says (fsynced, for a WAL that replies
        ``logged``); with ``wait``, block until it is. Raises QueueWriteError if it never will be.
        ``put(wait=False)`` then ``logged`` lets a stream go on reading while its records are fsynced."""
        return True

    @abc.abstractmethod
    def get(self, max_items: int, timeout: float) -> list[Entry]:
        """Up to ``max_items`` entries in seq order, waiting up to ``timeout`` s for one (``[]`` if none)."""

    def plan(self, plan: Plan) -> None:  # noqa: B027 - optional hook: only a crash-safe queue records plans
        """The writer is about to store ``plan.path`` holding exactly ``plan.seqs``."""

    @abc.abstractmethod
    def done(self, entries: list[Entry]) -> None:
        """The entries are durable (or failed for good): release their capacity."""

    @abc.abstractmethod
    def wake(self) -> None:
        """Make a ``get`` that is waiting now return at once."""

    @abc.abstractmethod
    def refuse_puts(self) -> None:
        """From now on ``put`` raises QueueClosed (and waiting puts stop waiting); ``get`` still hands
        out what was put before, so a writer can drain it (a stop whose deadline passed)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Refuse further puts, wake every waiter, release resources."""

    @property
    @abc.abstractmethod
    def last_seq(self) -> int:
        """The highest seq handed out so far (0 before the first)."""

    @abc.abstractmethod
    def stats(self) -> dict[str, Any]:
        """At least ``pending_batches`` and ``pending_bytes`` (put, not yet done)."""

    def received_by_dataset(self) -> dict[str, tuple[int, int, int]]:
        """Batches, rows and Arrow bytes put since start, per dataset (for status and metrics)."""
        return {}

    def recovered(self) -> tuple[int, list[int], dict[int, str]]:
        """For the durability tracker at start: (durable_through, seqs above it that are already resolved,
        failed seqs with their errors). A queue that forgets everything on restart has nothing to say."""
        return self.last_seq, [], {}


class IdWindow:
    """The last ``size`` client ids with the seq each was accepted as (for duplicate detection)."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._ids: OrderedDict[str, int] = OrderedDict()

    def get(self, client_id: str) -> int | None:
        return self._ids.get(client_id)

    def add(self, client_id: str, seq: int) -> None:
        self._ids[client_id] = seq
        if len(self._ids) > self._size:
            self._ids.popitem(last=False)

    def items(self) -> list[tuple[str, int]]:
        return list(self._ids.items())

    def __len__(self) -> int:
        return len(self._ids)
