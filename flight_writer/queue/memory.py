"""In-memory queue: fast, bounded, and lost with the process (a WAL queue keeps acks across crashes)."""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

import pyarrow as pa

from flight_writer.queue.base import Entry, Queue, QueueClosed, QueueFull


class MemoryQueue(Queue):
    """Implements :class:`Queue` with a deque under one lock.

    A batch larger than ``max_bytes`` is admitted when nothing else is pending, so it can never wait forever.
    """

    type = "memory"

    def __init__(self, max_bytes: int, first_seq: int = 1) -> None:
        self._max_bytes = max_bytes
        self._lock = threading.Lock()
        self._not_empty = threading.Condition(self._lock)
        self._has_room = threading.Condition(self._lock)
        self._items: deque[Entry] = deque()
        self._last_seq = first_seq - 1
        self._pending_bytes = 0
        self._pending_batches = 0
        self._woken = False
        self._closed = False

    def put(self, dataset: str, schema_key: bytes, batch: pa.RecordBatch, timeout: float) -> int:
        nbytes = batch.nbytes
        with self._lock:
            deadline = None
            while self._pending_bytes and self._pending_bytes + nbytes > self._max_bytes and not self._closed:
                if deadline is None:
                    deadline = time.monotonic() + timeout
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise QueueFull(
                        f"queue full: {self._pending_bytes} of {self._max_bytes} bytes pending, "
                        f"waited {timeout:g} s"
                    )
                self._has_room.wait(remaining)
            if self._closed:
                raise QueueClosed("queue is closed")
            self._last_seq += 1
            self._items.append(Entry(self._last_seq, dataset, schema_key, batch, time.time(), nbytes))
            self._pending_bytes += nbytes
            self._pending_batches += 1
            self._not_empty.notify()
            return self._last_seq

    def get(self, max_items: int, timeout: float) -> list[Entry]:
        with self._lock:
            if not self._items and not self._woken and timeout > 0:
                self._not_empty.wait(timeout)
            self._woken = False
            n = min(max_items, len(self._items))
            return [self._items.popleft() for _ in range(n)]

    def done(self, entries: list[Entry]) -> None:
        if not entries:
            return
        with self._lock:
            self._pending_bytes -= sum(e.nbytes for e in entries)
            self._pending_batches -= len(entries)
            self._has_room.notify_all()

    def wake(self) -> None:
        with self._lock:
            self._woken = True
            self._not_empty.notify_all()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._woken = True
            self._not_empty.notify_all()
            self._has_room.notify_all()

    @property
    def last_seq(self) -> int:
        return self._last_seq

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "pending_batches": self._pending_batches,
                "pending_bytes": self._pending_bytes,
                "queued_batches": len(self._items),
                "max_bytes": self._max_bytes,
            }
