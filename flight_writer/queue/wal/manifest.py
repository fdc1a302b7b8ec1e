"""The WAL's manifest: the writer's plans and confirmations, and the client ids of deleted segments, as
checksummed lines appended to ``manifest.log`` (their format: format.py).

A full disk must not stop confirmations (they free the disk): ``RESERVE`` is a ballast file deleted to make
room for the manifest the first time an append finds the disk full; new batches are refused while it is gone
(``ensure_reserve``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
from pathlib import Path
from typing import Any

from loguru import logger

from flight_writer.queue.base import Plan, QueueWriteError
from flight_writer.queue.seqs import seq_ranges
from flight_writer.queue.wal.format import manifest_line, plan_record

MANIFEST = "manifest.log"
RESERVE = "RESERVE"
RESERVE_BYTES = 256 << 10  # freed when the disk is full, so confirmations can still be written


class Manifest:
    """Appends to ``<dir>/manifest.log``, safe from any thread. Opened by ``rewrite`` (recovery's last step)."""

    def __init__(self, directory: Path) -> None:
        self._dir = directory
        self.path = directory / MANIFEST
        self._lock = threading.Lock()
        self._fd = -1
        self.reserve_ok = False

    def append(self, records: list[dict[str, Any]], sync: bool) -> None:
        data = b"".join(manifest_line(r) for r in records)
        with self._lock:
            size = os.fstat(self._fd).st_size
            for attempt in (1, 2):
                try:
                    if os.write(self._fd, data) != len(data):
                        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                    if sync:
                        os.fsync(self._fd)
                    return
                except OSError as exc:
                    with contextlib.suppress(OSError):
                        os.ftruncate(self._fd, size)
                    if exc.errno == errno.ENOSPC and attempt == 1 and self._release_reserve():
                        continue
                    raise QueueWriteError(f"cannot write {self.path}: {exc.strerror or exc}") from exc

    def sync(self) -> None:
        with self._lock:
            os.fsync(self._fd)

    def rewrite(self, plans: list[Plan], confirmed: list[int], ids: list[tuple[str, int]]) -> None:
        """The manifest anew, holding only what the live segments still need; then open it for appends."""
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            for plan in plans:
                f.write(manifest_line(plan_record(plan)))
            if confirmed:
                f.write(manifest_line({"done": seq_ranges(confirmed)}))
            if ids:
                f.write(manifest_line({"ids": ids}))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        fsync_dir(self._dir)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)

    def ensure_reserve(self) -> bool:
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
            self.reserve_ok = False
            return False
        self.reserve_ok = True
        return True

    def _release_reserve(self) -> bool:
        try:
            (self._dir / RESERVE).unlink()
        except FileNotFoundError:
            return False
        self.reserve_ok = False
        logger.warning("WAL disk {} is full: released the reserve to record confirmations", self._dir)
        return True

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
