"""The queue seam: what the Flight server puts batches into and the writer drains.

A queue assigns every batch its sequence number (``seq``) at ``put``, so queue order is seq order
and a WAL can persist the numbering. Capacity is counted in Arrow bytes from ``put`` until the writer
calls ``done`` -- that is, until the batch is durable, not merely dequeued -- so ``max_bytes`` bounds
everything the server holds for producers: the queue, the writer's buffers and files being uploaded.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any

import pyarrow as pa


class QueueFull(Exception):
    """``put`` waited ``timeout`` seconds and the queue still had no room."""


class QueueClosed(Exception):
    """The queue is closed: no more puts."""


@dataclass(slots=True, eq=False)
class Entry:
    seq: int
    dataset: str
    schema_key: bytes  # the stream's serialized schema: batches with equal keys may share a file
    batch: pa.RecordBatch
    received_at: float  # UTC epoch seconds; picks the date=/hour= partition
    nbytes: int


class Queue(abc.ABC):
    """Bounded, FIFO, seq-assigning. Implementations must be safe to call from many threads."""

    type: str

    @abc.abstractmethod
    def put(self, dataset: str, schema_key: bytes, batch: pa.RecordBatch, timeout: float) -> int:
        """Append a batch and return its seq; wait up to ``timeout`` s for room, else raise QueueFull."""

    @abc.abstractmethod
    def get(self, max_items: int, timeout: float) -> list[Entry]:
        """Up to ``max_items`` entries in seq order, waiting up to ``timeout`` s for one (``[]`` if none)."""

    @abc.abstractmethod
    def done(self, entries: list[Entry]) -> None:
        """The entries are durable (or failed for good): release their capacity."""

    @abc.abstractmethod
    def wake(self) -> None:
        """Make a ``get`` that is waiting now return at once."""

    @abc.abstractmethod
    def close(self) -> None:
        """Refuse further puts and wake every waiter."""

    @property
    @abc.abstractmethod
    def last_seq(self) -> int:
        """The highest seq handed out so far (0 before the first)."""

    @abc.abstractmethod
    def stats(self) -> dict[str, Any]:
        """At least ``pending_batches`` and ``pending_bytes`` (put, not yet done)."""
