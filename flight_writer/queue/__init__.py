"""The queue seam between the ingest and write roles (``flight_writer.queue``, not a top-level ``queue``:
that would shadow the standard library's ``queue``, which ``concurrent.futures`` and ``logging`` import).

``base.py`` is the seam only (``Ingest``, ``Feed``, ``SharedFeed``, ``Queue``, the entry and plan records);
``memory.py`` the queue of one process; ``wal/`` the write-ahead log; ``nats/`` JetStream across processes.
``tracker.py`` is the durability position every queue holds; ``seqs.py`` seq sets as text; ``ipc.py`` the
Arrow IPC bytes a batch is kept as (WAL and NATS); ``counting.py`` the counters and id window the
implementations share.

May import: ``flight_writer.config`` only. The roles above use it; it knows neither.
"""

from __future__ import annotations

from flight_writer.config import QueueSettings
from flight_writer.queue.base import (
    Accepted,
    Entry,
    Feed,
    Ingest,
    Plan,
    Queue,
    QueueClosed,
    QueueFull,
    QueueLost,
    QueueWriteError,
    SharedFeed,
)
from flight_writer.queue.memory import MemoryQueue
from flight_writer.queue.wal.queue import WalQueue

__all__ = [
    "Accepted",
    "Entry",
    "Feed",
    "Ingest",
    "MemoryQueue",
    "Plan",
    "Queue",
    "QueueClosed",
    "QueueFull",
    "QueueLost",
    "QueueWriteError",
    "SharedFeed",
    "WalQueue",
    "make_queue",
    "queue_class",
]


def queue_class(queue_type: str) -> type[Queue]:
    """The class ``queue.type`` names (nats-py is imported only for ``nats``)."""
    if queue_type == "nats":
        from flight_writer.queue.nats.queue import NatsQueue

        return NatsQueue
    classes: dict[str, type[Queue]] = {"memory": MemoryQueue, "wal": WalQueue}
    if queue_type not in classes:
        raise ValueError(f"unknown queue.type {queue_type!r}")
    return classes[queue_type]


def make_queue(settings: QueueSettings, history: int = 100_000, role: str = "all") -> Queue:
    """The queue that ``queue.type`` names; its position remembers the files of ``history`` seqs. ``role``
    (``all``, ``ingest``, ``write``) is the part of it this process uses: only ``nats`` has more than ``all``."""
    if settings.type == "nats":
        from flight_writer.queue.nats.queue import NatsQueue  # nats-py only where it is used

        if settings.seq_stride > 1:
            from flight_writer.queue.nats.sharded import ShardedNatsQueue

            return ShardedNatsQueue(settings, role, history)
        return NatsQueue(settings, role, history)
    if role != "all" and not queue_class(settings.type).shared:
        raise ValueError(f"queue.type {settings.type!r} runs ingest and write in one process: role must be all")
    if settings.type == "memory":
        return MemoryQueue(settings.max_bytes, settings.dedupe_window, history=history)
    if settings.type == "wal":
        return WalQueue(
            settings.path,
            settings.max_bytes,
            segment_bytes=settings.segment_bytes,
            fsync=settings.fsync,
            fsync_interval_ms=settings.fsync_interval_ms,
            compression=settings.compression,
            dedupe_window=settings.dedupe_window,
            history=history,
        )
    raise ValueError(f"unknown queue.type {settings.type!r}")
