"""The WAL's segments: batch records appended in seq order, fsynced by a thread of their own.

``seg-<first seq>.wal`` files, a new one at start and every ``segment_bytes``. The log is the memory queue's
journal (memory.py): ``prepare`` encodes a batch's Arrow IPC before the queue's lock, ``append`` writes its
record under it. With ``fsync = always`` a syncer thread fsyncs everything written so far, so batches arriving
meanwhile share one fsync and ``settle(seq)`` turns true for all of them at once; ``interval`` fsyncs every
``fsync_interval_ms``; ``never`` leaves it to the OS. A segment is deleted once all its batches are
confirmed, its client ids moved to the manifest first so duplicates are still caught. With ``always``, after
a round of more than one record the syncer waits ``GROUP_WAIT`` before the next (group commit).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
from loguru import logger

from flight_writer.queue.base import Entry, QueueWriteError
from flight_writer.queue.ipc import PlainStreams, encode_ipc, write_options
from flight_writer.queue.seqs import seq_ranges
from flight_writer.queue.wal.format import encode_record
from flight_writer.queue.wal.manifest import RESERVE_BYTES, Manifest, fsync_dir

FSYNC_POLICIES = ("always", "interval", "never")
# a batch under this many Arrow bytes is logged uncompressed: compressing costs per buffer, and for small
# batches more than the bytes it saves are worth (100-row spans: 25 us a record with lz4, 13 without)
SMALL_RECORD_BYTES = 64 << 10
# fsync = always: after a round that covered more than one record (batches arriving back to back), the
# syncer waits this long before the next, so the batches behind join it (group commit, as PostgreSQL's
# commit_delay). A producer that waits for each reply has one record per round and never waits. 100-row
# batches, one pipelining producer, 161 MB, 2 vCPUs, medians of 3: server CPU 3.16 -> 2.54 s (1 ms) and
# 2.39 s (3 ms), 64.2 -> 76.2 and 80.6 MB/s: each round costs an fsync (~130 us of CPU here) and wakes
# every stream's replies thread. 1 ms: a logged reply of such a stream comes at most that much later.
GROUP_WAIT = 0.001


@dataclass
class Segment:
    first_seq: int
    path: Path
    fd: int = -1
    size: int = 0
    outstanding: int = 0  # records not yet confirmed
    ids: list[tuple[str, int]] = field(default_factory=list)


def segment_path(directory: Path, first_seq: int) -> Path:
    return directory / f"seg-{first_seq:020d}.wal"


class SegmentLog:
    """Appends, fsyncs and retires segments; ``open`` (after recovery) makes it ready to append."""

    def __init__(
        self, directory: Path, manifest: Manifest, segment_bytes: int, fsync: str, interval: float, compression: str
    ) -> None:
        if fsync not in FSYNC_POLICIES:
            raise ValueError(f"fsync must be one of {FSYNC_POLICIES}, got {fsync!r}")
        self._dir = directory
        self._manifest = manifest
        self._segment_bytes = segment_bytes
        self.fsync = fsync
        self._interval = interval
        # compressing costs CPU (lz4: ~2 GB/s per core on spans) and halves the bytes the disk must take
        self._ipc_options = write_options(compression)
        self._small_options = write_options("none")  # under SMALL_RECORD_BYTES
        self._plain = PlainStreams()  # ... written without a stream writer where they have no dictionaries
        self._lock = threading.Lock()
        self._synced_cond = threading.Condition(self._lock)  # waiters: "my record is fsynced"
        self._sync_wanted = threading.Condition(self._lock)  # the syncer: "something to fsync"
        self._segments: dict[int, Segment] = {}
        self._active: Segment | None = None
        self._appended_seq = 0
        self._written = 0  # bytes appended since start: the syncer's clock
        self._synced = 0
        self._synced_seq = 0  # every record up to this seq is fsynced
        self.fsyncs = 0  # by the syncer, since start
        self._retired: list[int] = []  # fds of rotated segments the syncer must still fsync and close
        self._sync_error: str | None = None
        self._stopping = False
        self._syncer: threading.Thread | None = None
        #: called with the seconds each of the syncer's fsync rounds took (metrics)
        self.fsync_listeners: list[Callable[[float], None]] = []
        self.recovered_through = 0  # seqs up to this came from before the start
        self.replayed = 0  # recovered batches confirmed since

    def open(self, live: dict[int, int], last_seq: int, relog: list[Entry]) -> None:
        """Keep the segments with ``live`` (first seq -> records still pending), delete the others, open a
        fresh active segment, log ``relog`` in it again (records of quarantined segments, with their seq),
        and start the syncer."""
        for path in sorted(self._dir.glob("seg-*.wal")):
            first = int(path.stem[4:])
            if first in live:
                self._segments[first] = Segment(first, path, -1, path.stat().st_size, outstanding=live[first])
            else:
                path.unlink()
        active = self._open_segment(last_seq + 1)
        for entry in relog:
            self._append(active, encode_record(entry, [encode_ipc(entry.batch, self._ipc_options)]))
            entry.handle = active.first_seq
            active.outstanding += 1
        if relog and self.fsync != "never":
            os.fsync(active.fd)
        self._synced, self._appended_seq = self._written, last_seq
        self._synced_seq = self.recovered_through = last_seq  # all that came before is on disk
        if self.fsync != "never":
            self._syncer = threading.Thread(target=self._sync_loop, name="flight-writer-wal-sync", daemon=True)
            self._syncer.start()

    # -- the journal (memory.py) -----------------------------------------------------------------------
    def prepare(self, batch: pa.RecordBatch, nbytes: int) -> list[pa.Buffer | bytes]:
        """The record's IPC stream, as buffers for the writev; ``nbytes``: the batch's Arrow bytes (the queue's
        ``get_total_buffer_size``, measured once)."""
        small = nbytes < SMALL_RECORD_BYTES
        if small and (parts := self._plain.parts(batch)) is not None:
            return parts
        return [encode_ipc(batch, self._small_options if small else self._ipc_options)]

    def append(self, entry: Entry, ipc: list[pa.Buffer | bytes]) -> None:
        """Under the queue's lock (so records are in seq order): append the record, wake the syncer."""
        if self._sync_error is not None:
            raise QueueWriteError(f"WAL fsync failed earlier: {self._sync_error}")
        if not self._manifest.reserve_ok and not self._manifest.ensure_reserve():
            raise QueueWriteError(
                f"disk full: no room for the WAL in {self._dir} (kept {RESERVE_BYTES} bytes "
                "for confirming what is already logged)"
            )
        parts = encode_record(entry, ipc)
        with self._lock:
            active = self._active
            assert active is not None
            if active.size >= self._segment_bytes:
                active = self._rotate(entry.seq)
            self._append(active, parts)
            entry.handle = active.first_seq
            active.outstanding += 1
            if entry.client_id is not None:
                active.ids.append((entry.client_id, entry.seq))
            self._appended_seq = entry.seq
            if self.fsync == "always":
                self._sync_wanted.notify()

    def confirmed(self, entries: list[Entry]) -> None:
        self._manifest.append([{"done": seq_ranges(sorted(e.seq for e in entries))}], sync=False)
        with self._lock:
            emptied = []
            for e in entries:
                seg = self._segments.get(e.handle)
                if seg is not None:
                    seg.outstanding -= 1
                    if seg.outstanding == 0 and seg is not self._active:
                        emptied.append(seg)
            for seg in emptied:
                self._delete_segment(seg)
            self.replayed += sum(1 for e in entries if e.seq <= self.recovered_through)

    # -- appending -------------------------------------------------------------------------------------
    def _append(self, seg: Segment, parts: list[Any]) -> None:
        total = sum(len(memoryview(p)) for p in parts)
        try:
            written = os.writev(seg.fd, parts)
            if written != total:  # a short write: the rest would fail the same way, or complete it
                rest = b"".join(bytes(memoryview(p)) for p in parts)[written:]
                os.write(seg.fd, rest)
        except OSError as exc:
            with contextlib.suppress(OSError):  # leave no partial record behind to append after
                os.ftruncate(seg.fd, seg.size)
            raise QueueWriteError(f"cannot write the WAL segment {seg.path}: {exc.strerror or exc}") from exc
        seg.size += total
        self._written += total

    def _rotate(self, first_seq: int) -> Segment:
        old = self._active
        seg = self._open_segment(first_seq)
        if old is not None:
            if self._syncer is not None:
                self._retired.append(old.fd)
            else:
                os.close(old.fd)
            old.fd = -1
            if old.outstanding == 0:
                self._delete_segment(old)
        return seg

    def _open_segment(self, first_seq: int) -> Segment:
        path = segment_path(self._dir, first_seq)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        seg = Segment(first_seq, path, fd, os.fstat(fd).st_size)
        self._segments[first_seq] = seg
        self._active = seg
        fsync_dir(self._dir)
        return seg

    def _delete_segment(self, seg: Segment) -> None:
        """Under the log's lock. Its client ids move to the manifest, so duplicates are still caught."""
        if seg.ids:
            self._manifest.append([{"ids": seg.ids}], sync=False)
        if self.fsync != "never":  # the confirmations must outlive the records they cover
            self._manifest.sync()
        del self._segments[seg.first_seq]
        with contextlib.suppress(FileNotFoundError):
            seg.path.unlink()

    # -- fsync -----------------------------------------------------------------------------------------
    def settle(self, seq: int, wait: bool) -> bool:
        if self.fsync != "always":
            return True
        with self._lock:
            while wait and self._synced_seq < seq and self._sync_error is None:
                self._synced_cond.wait()
            if self._synced_seq >= seq:
                return True
            if self._sync_error is not None:
                raise QueueWriteError(f"WAL fsync failed: {self._sync_error}")
            return False

    def _sync_loop(self) -> None:
        while True:
            with self._lock:
                if self.fsync == "always":
                    while self._synced == self._written and not self._retired and not self._stopping:
                        self._sync_wanted.wait()
                elif not self._stopping:
                    self._sync_wanted.wait(self._interval)
                if self._synced == self._written and not self._retired:
                    if self._stopping:
                        return
                    continue
                target, target_seq = self._written, self._appended_seq
                grouped = target_seq - self._synced_seq > 1
                retired, self._retired = self._retired, []
                active_fd = self._active.fd if self._active is not None else -1
            started = time.monotonic()
            try:
                for fd in [*retired, active_fd]:
                    if fd >= 0:
                        os.fsync(fd)
            except OSError as exc:
                logger.error("WAL fsync failed: {}", exc)
                with self._lock:
                    self._sync_error = str(exc)
                    self._synced_cond.notify_all()
                return
            finally:
                for fd in retired:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            with self._lock:
                self._synced = max(self._synced, target)
                self._synced_seq = max(self._synced_seq, target_seq)
                self.fsyncs += 1
                self._synced_cond.notify_all()
            for listener in self.fsync_listeners:
                listener(time.monotonic() - started)
            if grouped and self.fsync == "always":
                time.sleep(GROUP_WAIT)

    # -- state -----------------------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "wal_bytes": sum(s.size for s in self._segments.values()),
                "wal_segments": len(self._segments),
                "fsync": self.fsync,
                "wal_written_bytes": self._written,  # since start
                "wal_synced_bytes": self._synced,
                "wal_fsyncs": self.fsyncs,
            }

    def close(self) -> None:
        with self._lock:
            self._stopping = True
            self._sync_wanted.notify_all()
        if self._syncer is not None:
            self._syncer.join()
        with self._lock:
            for seg in self._segments.values():
                if seg.fd >= 0:
                    with contextlib.suppress(OSError):
                        if self.fsync != "never":
                            os.fsync(seg.fd)
                        os.close(seg.fd)
                    seg.fd = -1
