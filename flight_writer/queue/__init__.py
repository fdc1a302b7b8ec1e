"""Queue layer (``flight_writer.queue``, not a top-level ``queue``: that would shadow the standard library's
``queue``, which ``concurrent.futures`` and ``logging`` import)."""

from __future__ import annotations

from flight_writer.config import QueueSettings
from flight_writer.queue.base import Entry, Queue, QueueClosed, QueueFull
from flight_writer.queue.memory import MemoryQueue

__all__ = ["Entry", "MemoryQueue", "Queue", "QueueClosed", "QueueFull", "make_queue"]


def make_queue(settings: QueueSettings) -> Queue:
    """The queue that ``queue.type`` names."""
    if settings.type == "memory":
        return MemoryQueue(settings.max_bytes)
    raise ValueError(f"unknown queue.type {settings.type!r}")
