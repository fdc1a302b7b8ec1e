"""Write-ahead-log queue: an acknowledged batch survives a crash, and lands in Parquet exactly once.

On disk, under ``queue.path``::

    LOCK                      flock'ed while a server uses the directory (one server per WAL)
    RESERVE                   256 KiB of ballast, deleted to make room for the manifest when the disk is full
    seg-<first seq>.wal       batch records, appended; a new segment at start and every segment_bytes
    manifest.log              the writer's plans and confirmations, plus client ids of deleted segments

Their bytes (batch records with a magic, length and crc32; checksummed JSON manifest lines): wal_format.py.

Durability: with ``fsync = always`` a batch is ``logged`` once fsynced, and only then does its reply go out
(saying ``logged``). A syncer thread fsyncs everything written so far, so batches arriving meanwhile share
one fsync: the server puts with ``wait=False`` and keeps reading its stream, sending each reply, in order, as
``logged(seq)`` turns true, so even a single producer commits in groups. ``interval`` fsyncs every
``fsync_interval_ms``; ``never`` leaves it to the OS. Every policy writes the record before the reply, so
a killed *process* loses nothing; the policy decides what a power loss can take. A plan is fsynced
(unless ``never``) before its upload starts.

Recovery, before the server takes calls: read the manifest, then every segment. A damaged record at the
very end of the newest segment is a torn write and is cut off with a warning. Damage anywhere else moves the
segment to ``.corrupt`` with an error naming what was lost; every intact record in it (found again by the
magic) is logged anew. Batches not confirmed are handed to the writer again; those of a plan without its
confirmation come back with that plan, so the writer stores the same object under the same name again
instead of a second copy. A segment is deleted once all its batches are durable.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
from loguru import logger

from flight_writer.queue.base import Entry, Plan, QueueWriteError
from flight_writer.queue.memory import MemoryQueue
from flight_writer.queue.wal_format import (
    encode_record,
    manifest_line,
    plan_record,
    read_manifest,
    scan_segment,
)
from flight_writer.seqs import seq_ranges

FSYNC_POLICIES = ("always", "interval", "never")
MANIFEST = "manifest.log"
RESERVE = "RESERVE"
RESERVE_BYTES = 256 << 10  # freed when the disk is full, so confirmations can still be written


@dataclass
class _Segment:
    first_seq: int
    path: Path
    fd: int = -1
    size: int = 0
    outstanding: int = 0  # records not yet done
    ids: list[tuple[str, int]] = field(default_factory=list)


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
    ) -> None:
        if fsync not in FSYNC_POLICIES:
            raise ValueError(f"fsync must be one of {FSYNC_POLICIES}, got {fsync!r}")
        super().__init__(max_bytes, dedupe_window)
        self.ack_state = "logged" if fsync == "always" else "queued"
        self._dir = Path(path)
        self._dir.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(self._dir / "LOCK", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise QueueWriteError(f"WAL directory {self._dir} is in use by another server") from None
        self._segment_bytes = segment_bytes
        self._fsync = fsync
        self._interval = fsync_interval_ms / 1000
        # compressing costs CPU (lz4: ~2 GB/s per core on spans) and halves the bytes the disk must take
        self._ipc_options = pa.ipc.IpcWriteOptions(
            compression=None if compression == "none" else compression, use_threads=False
        )
        self._segments: dict[int, _Segment] = {}
        self._active: _Segment | None = None
        self._written = 0  # bytes appended since start: the syncer's clock
        self._synced = 0
        self._synced_seq = 0  # every record up to this seq is fsynced
        self._fsyncs = 0  # by the syncer, since start
        #: called with the seconds each of the syncer's fsync rounds took (metrics)
        self.fsync_listeners: list[Callable[[float], None]] = []
        self._retired: list[int] = []  # fds of rotated segments the syncer must still fsync and close
        self._sync_error: str | None = None
        self._synced_cond = threading.Condition(self._lock)  # waiters: "my record is fsynced"
        self._sync_wanted = threading.Condition(self._lock)  # the syncer: "something to fsync"
        self._manifest_lock = threading.Lock()
        self._manifest_fd = -1
        self._stopping = False
        self.recovery: dict[str, Any] = {}
        self._recovered_state: tuple[int, list[int], dict[int, str]] = (0, [], {})
        self._reserve_ok = False
        self._recover()
        self._ensure_reserve()
        self._syncer: threading.Thread | None = None
        if fsync != "never":
            self._syncer = threading.Thread(target=self._sync_loop, name="flight-writer-wal-sync", daemon=True)
            self._syncer.start()

    # -- writing ---------------------------------------------------------------------------------------
    def _record(self, entry: Entry) -> None:
        """Under the queue lock: append the record and wake the syncer."""
        if self._sync_error is not None:
            raise QueueWriteError(f"WAL fsync failed earlier: {self._sync_error}")
        if not self._reserve_ok and not self._ensure_reserve():
            raise QueueWriteError(
                f"disk full: no room for the WAL in {self._dir} (kept {RESERVE_BYTES} bytes "
                "for confirming what is already logged)"
            )
        parts = encode_record(entry, self._ipc_options)
        active = self._active
        assert active is not None
        if active.size >= self._segment_bytes:
            active = self._rotate(entry.seq)
        self._append(active, parts)
        entry.segment = active.first_seq
        active.outstanding += 1
        if entry.client_id is not None:
            active.ids.append((entry.client_id, entry.seq))
        if self._fsync == "always":
            self._sync_wanted.notify()

    def _append(self, seg: _Segment, parts: list[Any]) -> None:
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

    def _rotate(self, first_seq: int) -> _Segment:
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

    def _open_segment(self, first_seq: int) -> _Segment:
        path = self._dir / f"seg-{first_seq:020d}.wal"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        seg = _Segment(first_seq, path, fd, os.fstat(fd).st_size)
        self._segments[first_seq] = seg
        self._active = seg
        _fsync_dir(self._dir)
        return seg

    def logged(self, seq: int, wait: bool) -> bool:
        if self._fsync != "always":
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
                if self._fsync == "always":
                    while self._synced == self._written and not self._retired and not self._stopping:
                        self._sync_wanted.wait()
                elif not self._stopping:
                    self._sync_wanted.wait(self._interval)
                if self._synced == self._written and not self._retired:
                    if self._stopping:
                        return
                    continue
                target, target_seq = self._written, self._last_seq
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
                self._fsyncs += 1
                self._synced_cond.notify_all()
            for listener in self.fsync_listeners:
                listener(time.monotonic() - started)

    # -- the writer's side -----------------------------------------------------------------------------
    def plan(self, plan: Plan) -> None:
        self._manifest_append([plan_record(plan)], sync=self._fsync != "never")

    def _finished(self, entries: list[Entry]) -> None:
        self._manifest_append([{"done": seq_ranges(sorted(e.seq for e in entries))}], sync=False)
        with self._lock:
            emptied = []
            for e in entries:
                seg = self._segments.get(e.segment)
                if seg is not None:
                    seg.outstanding -= 1
                    if seg.outstanding == 0 and seg is not self._active:
                        emptied.append(seg)
            for seg in emptied:
                self._delete_segment(seg)
            self.recovery["replayed"] = self.recovery.get("replayed", 0) + sum(
                1 for e in entries if e.seq <= self.recovery.get("last_recovered_seq", 0)
            )

    def _delete_segment(self, seg: _Segment) -> None:
        """Under the queue lock. Its client ids move to the manifest, so duplicates are still caught."""
        if seg.ids:
            self._manifest_append([{"ids": seg.ids}], sync=False)
        if self._fsync != "never":  # the confirmations must outlive the records they cover
            self._manifest_sync()
        del self._segments[seg.first_seq]
        with contextlib.suppress(FileNotFoundError):
            seg.path.unlink()

    def _manifest_append(self, records: list[dict[str, Any]], sync: bool) -> None:
        data = b"".join(manifest_line(r) for r in records)
        with self._manifest_lock:
            size = os.fstat(self._manifest_fd).st_size
            for attempt in (1, 2):
                try:
                    if os.write(self._manifest_fd, data) != len(data):
                        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                    if sync:
                        os.fsync(self._manifest_fd)
                    return
                except OSError as exc:
                    with contextlib.suppress(OSError):
                        os.ftruncate(self._manifest_fd, size)
                    if exc.errno == errno.ENOSPC and attempt == 1 and self._release_reserve():
                        continue
                    raise QueueWriteError(f"cannot write {self._dir / MANIFEST}: {exc.strerror or exc}") from exc

    def _ensure_reserve(self) -> bool:
        """Create the ballast file if it is missing; False when the disk has no room for it."""
        path = self._dir / RESERVE
        try:
            if not path.exists() or path.stat().st_size < RESERVE_BYTES:
                with open(path, "wb") as f:
                    f.write(bytes(RESERVE_BYTES))
                    f.flush()
                    os.fsync(f.fileno())
        except OSError:
            with contextlib.suppress(OSError):
                path.unlink()
            self._reserve_ok = False
            return False
        self._reserve_ok = True
        return True

    def _release_reserve(self) -> bool:
        try:
            (self._dir / RESERVE).unlink()
        except FileNotFoundError:
            return False
        self._reserve_ok = False
        logger.warning("WAL disk {} is full: released the reserve to record confirmations", self._dir)
        return True

    def _manifest_sync(self) -> None:
        with self._manifest_lock:
            os.fsync(self._manifest_fd)

    # -- lifecycle and state ---------------------------------------------------------------------------
    def close(self) -> None:
        super().close()
        with self._lock:
            self._stopping = True
            self._sync_wanted.notify_all()
        if self._syncer is not None:
            self._syncer.join()
        with self._lock:
            for seg in self._segments.values():
                if seg.fd >= 0:
                    with contextlib.suppress(OSError):
                        if self._fsync != "never":
                            os.fsync(seg.fd)
                        os.close(seg.fd)
                    seg.fd = -1
        with self._manifest_lock:
            if self._manifest_fd >= 0:
                os.close(self._manifest_fd)
                self._manifest_fd = -1
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def recovered(self) -> tuple[int, list[int], dict[int, str]]:
        return self._recovered_state

    def stats(self) -> dict[str, Any]:
        stats = super().stats()
        with self._lock:
            stats.update(
                {
                    "wal_bytes": sum(s.size for s in self._segments.values()),
                    "wal_segments": len(self._segments),
                    "fsync": self._fsync,
                    "wal_written_bytes": self._written,  # since start
                    "wal_synced_bytes": self._synced,
                    "wal_fsyncs": self._fsyncs,
                    "recovery": dict(self.recovery),
                }
            )
        return stats

    # -- recovery --------------------------------------------------------------------------------------
    def _recover(self) -> None:
        manifest_path = self._dir / MANIFEST
        plans, done, failed_errors, ids = read_manifest(manifest_path)
        entries, to_relog, confirmed_here, last_seq, report = self._read_segments(done, ids)
        last_seq = max([last_seq, *(max(p.seqs) for p in plans.values() if p.seqs), *(s for _, s in ids)])
        entries.sort(key=lambda e: e.seq)
        pending = {e.seq for e in entries}
        by_seq = {e.seq: e for e in entries}
        for plan in plans.values():  # an unconfirmed plan whose batches are all here is redone exactly
            if any(s not in done for s in plan.seqs) and all(s in pending for s in plan.seqs):
                for s in plan.seqs:
                    by_seq[s].plan = plan
        for client_id, seq in ids:
            self._ids.add(client_id, seq)
        self._last_seq = last_seq
        self._keep_segments(entries, to_relog, last_seq)
        self._synced, self._synced_seq = self._written, last_seq  # all that came before is on disk
        still_confirmed = sorted(s for first in self._segments for s in confirmed_here.get(first, []))
        self._rewrite_manifest(
            manifest_path,
            [p for p in plans.values() if any(s in pending for s in p.seqs)],
            still_confirmed,
            self._ids.items(),
        )
        with self._lock:
            for entry in entries:
                self._accept(entry)
        through = (entries[0].seq - 1) if entries else last_seq
        resolved_above = sorted(set(range(through + 1, last_seq + 1)) - pending)
        self._recovered_state = (
            through,
            resolved_above,
            {s: e for s, e in failed_errors.items() if s > through},
        )
        self.recovery = {
            **report,
            "pending": len(entries),
            "replanned": sum(1 for e in entries if e.plan),
            "last_recovered_seq": last_seq,
            "replayed": 0,
        }
        if report["segments"]:
            logger.info(
                "WAL recovered: {} segments, {} records, {} batches to write ({} as planned files), next seq {}",
                report["segments"],
                report["records"],
                len(entries),
                self.recovery["replanned"],
                last_seq + 1,
            )

    def _read_segments(
        self, done: set[int], ids: list[tuple[str, int]]
    ) -> tuple[list[Entry], list[Entry], dict[int, list[int]], int, dict[str, Any]]:
        """Every segment's intact records: the pending entries, those of them to log again (their segment
        is quarantined), per segment the seqs already confirmed, the highest seq, and a report. Client ids
        found are added to ``ids``."""
        segment_paths = sorted(self._dir.glob("seg-*.wal"))
        entries: list[Entry] = []
        to_relog: list[Entry] = []
        confirmed_here: dict[int, list[int]] = {}  # per segment: its records already confirmed
        last_seq = max((int(p.stem[4:]) - 1 for p in segment_paths), default=0)
        report: dict[str, Any] = {"segments": len(segment_paths), "records": 0, "torn_bytes": 0, "quarantined": []}
        for i, seg_path in enumerate(segment_paths):
            newest = i == len(segment_paths) - 1
            records, damage = scan_segment(seg_path)
            report["records"] += len(records)
            relog = damage is not None and self._set_damage_aside(seg_path, damage, newest, len(records), report)
            seg_first = int(seg_path.stem[4:])
            for entry in records:
                last_seq = max(last_seq, entry.seq)
                if entry.client_id is not None:
                    ids.append((entry.client_id, entry.seq))
                if entry.seq in done:
                    confirmed_here.setdefault(seg_first, []).append(entry.seq)
                    continue
                entry.segment = seg_first
                entries.append(entry)
                if relog:
                    entry.segment = -1  # its segment is quarantined: log it again
                    to_relog.append(entry)
        return entries, to_relog, confirmed_here, last_seq, report

    @staticmethod
    def _set_damage_aside(
        seg_path: Path, damage: tuple[int, int, bool], newest: bool, intact: int, report: dict[str, Any]
    ) -> bool:
        """Cut off a torn end of the newest segment (False), or quarantine a damaged segment (True: its
        intact records must be logged again)."""
        start, end, found_after = damage
        if newest and not found_after:
            logger.warning(
                "WAL {}: cut off a torn record at its end ({} bytes at offset {})", seg_path.name, end - start, start
            )
            report["torn_bytes"] += end - start
            os.truncate(seg_path, start)
            return False
        corrupt = seg_path.with_suffix(".wal.corrupt")
        logger.error(
            "WAL {} is damaged at bytes {}..{}: kept its {} intact records, lost what lay in that range; "
            "moved it to {}",
            seg_path.name,
            start,
            end,
            intact,
            corrupt.name,
        )
        report["quarantined"].append(corrupt.name)
        seg_path.rename(corrupt)
        return True

    def _keep_segments(self, entries: list[Entry], to_relog: list[Entry], last_seq: int) -> None:
        """Keep the segments with pending records, delete the rest, open a fresh active segment and log
        in it again the intact records of quarantined ones (with their seq)."""
        live = Counter(e.segment for e in entries)
        for seg_path in sorted(self._dir.glob("seg-*.wal")):
            first = int(seg_path.stem[4:])
            if first in live:
                seg = _Segment(first, seg_path, -1, seg_path.stat().st_size, outstanding=live[first])
                self._segments[first] = seg
            else:
                seg_path.unlink()
        active = self._open_segment(last_seq + 1)
        for entry in to_relog:
            self._append(active, encode_record(entry, self._ipc_options))
            entry.segment = active.first_seq
            active.outstanding += 1
        if to_relog and self._fsync != "never":
            os.fsync(active.fd)

    def _rewrite_manifest(
        self, path: Path, plans: list[Plan], confirmed: list[int], ids: list[tuple[str, int]]
    ) -> None:
        """The manifest anew, holding only what the live segments still need."""
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            for plan in plans:
                f.write(manifest_line(plan_record(plan)))
            if confirmed:
                f.write(manifest_line({"done": seq_ranges(confirmed)}))
            if ids:
                f.write(manifest_line({"ids": ids}))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(self._dir)
        self._manifest_fd = os.open(path, os.O_WRONLY | os.O_APPEND)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
