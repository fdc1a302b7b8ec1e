"""Write-ahead-log queue: an acknowledged batch survives a crash, and lands in Parquet exactly once.

On disk, under ``queue.path``::

    LOCK                      flock'ed while a server uses the directory (one server per WAL)
    RESERVE                   256 KiB of ballast, deleted to make room for the manifest when the disk is full
    seg-<first seq>.wal       batch records, appended (log.py)
    manifest.log              the writer's plans and confirmations, plus client ids of deleted segments
                              (manifest.py)

Their bytes: format.py. Reading them back at start: recovery.py.

The queue is the memory queue (memory.py) with the segment log as its journal. Durability: with ``fsync =
always`` a batch settles once fsynced, and only then does its reply go out (saying ``logged``); the server
puts with ``wait=False`` and keeps reading its stream, sending each reply, in order, as ``settle(seq)``
turns true, so even a single producer commits in groups. Every policy writes the record before the reply,
so a killed *process* loses nothing; the policy decides what a power loss can take. A plan is fsynced
(unless ``never``) before its upload starts.
"""

from __future__ import annotations

import fcntl
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loguru import logger

from flight_writer.queue.base import Entry, Plan, QueueWriteError
from flight_writer.queue.memory import MemoryQueue
from flight_writer.queue.tracker import DurabilityTracker
from flight_writer.queue.wal.format import CRC32, MAGIC, plan_record
from flight_writer.queue.wal.log import FSYNC_POLICIES, SegmentLog
from flight_writer.queue.wal.manifest import Manifest
from flight_writer.queue.wal.recovery import recover

__all__ = ["FSYNC_POLICIES", "WalQueue"]


class WalQueue(MemoryQueue):
    """Implements :class:`Queue` on a local write-ahead log (see the module docstring)."""

    type = "wal"

    def __init__(
        self,
        path: str | os.PathLike[str],
        max_bytes: int,
        *,
        segment_bytes: int = 64 << 20,
        fsync: str = "always",
        fsync_interval_ms: int = 100,
        compression: str = "lz4",
        dedupe_window: int = 100_000,
        history: int = 100_000,
    ) -> None:
        directory = Path(path)
        directory.mkdir(parents=True, exist_ok=True)
        manifest = Manifest(directory)
        log = SegmentLog(directory, manifest, segment_bytes, fsync, fsync_interval_ms / 1000, compression)
        self._dir = directory
        self._lock_fd = os.open(directory / "LOCK", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise QueueWriteError(f"WAL directory {directory} is in use by another server") from None
        self.ack_state = "logged" if fsync == "always" else "queued"
        super().__init__(max_bytes, dedupe_window, history=history, journal=log)
        self.identity = f"wal:{_identity(directory)}"  # the log's seqs go on across restarts
        self._log, self._manifest = log, manifest
        if MAGIC == CRC32:  # google-crc32c fell back to Python: CRC-32C records from elsewhere read slowly
            logger.warning(
                "google-crc32c has no compiled implementation here: WAL records carry zlib's CRC-32, and "
                "records with CRC-32C (written where it had one) are checked in Python (~0.4 s per MiB)"
            )
        found = recover(directory)
        for client_id, seq in found.ids:
            self._ids.add(client_id, seq)
        log.open(found.live, found.last_seq, found.relog)
        manifest.rewrite(found.plans, found.confirmed, self._ids.items())
        self._last_seq = found.last_seq
        with self._lock:
            for entry in found.entries:
                self._accept(entry)
        self.position = DurabilityTracker(history, found.durable_through, pending_state=self.ack_state)
        self.position.mark_durable(found.resolved_above, None)
        for seq, error in found.failed.items():
            self.position.mark_failed([seq], error)
        manifest.ensure_reserve()
        self._report = found.report

    @property
    def fsync_listeners(self) -> list[Callable[[float], None]]:
        """Called with the seconds each fsync round took (metrics)."""
        return self._log.fsync_listeners

    @property
    def recovery(self) -> dict[str, Any]:
        """What the start found: segments, records, torn bytes, quarantined segments, pending and replanned
        batches, the last recovered seq, and how many recovered batches were stored since."""
        return {**self._report, "replayed": self._log.replayed}

    def settle(self, seq: int, wait: bool) -> bool:
        return self._log.settle(seq, wait)

    def plan(self, plan: Plan, entries: list[Entry] | None = None) -> None:
        self._manifest.append([plan_record(plan)], sync=self._log.fsync != "never")

    def close(self) -> None:
        super().close()
        self._log.close()
        self._manifest.close()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), **self._log.stats(), "recovery": self.recovery}


def _identity(directory: Path) -> str:
    """The log directory's own random name, made with it: a log made again numbers seqs from 1 again."""
    path = directory / "IDENTITY"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        made = uuid.uuid4().hex
        tmp = directory / "IDENTITY.tmp"
        tmp.write_text(made + "\n")
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return made
