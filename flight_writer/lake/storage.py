"""The storage seam: whole objects written through one OpenDAL operator, visible only when complete.

Where the service can rename (``fs``), an object is written under ``_tmp/`` and renamed into place, so a
reader listing the dataset never sees a half-written file. Elsewhere one ``write`` call uploads the object,
which the service shows only once the upload completed: a single request for objects up to
``multipart_threshold``, a multipart upload (``upload_chunk_bytes`` parts, ``upload_concurrency`` at once)
above it, on services that have one (s3, azblob). GCS uploads are always single requests (the GCS emulator
has no multipart API). Every write sets a content type (GCS listings need one).

A failed single-request upload leaves nothing behind. A failed multipart upload leaves no object, but
OpenDAL's Python binding cannot abort it, so on S3 its parts stay until a bucket lifecycle rule
(``AbortIncompleteMultipartUpload``) removes them; Azure drops uncommitted blocks by itself.

Every operation is bounded by ``timeout`` (``io_timeout`` for reads and writes), so a stalled connection
becomes an error the writer retries instead of a hang.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
import uuid
from typing import Any

import opendal
import pyarrow as pa
import pyarrow.parquet as pq
from loguru import logger
from opendal.layers import TimeoutLayer

from flight_writer.config import StorageSettings, without_password

TMP_DIR = "_tmp/"
PROBE_DIR = "_tmp/probe-"
FOOTER_GUESS = 64 * 1024  # one read of a file's tail holds most footers
# OpenDAL's exception classes do not share a base class (0.47): name them all
OPENDAL_ERRORS: tuple[type[Exception], ...] = tuple(
    cls for cls in vars(opendal.exceptions).values() if isinstance(cls, type) and issubclass(cls, Exception)
)
# errors that retrying cannot fix: the writer keeps the data and says so
PERMANENT_ERRORS = (
    opendal.exceptions.PermissionDenied,
    opendal.exceptions.ConfigInvalid,
    opendal.exceptions.NotFound,
)


# errors of os.link where a filesystem has no hard links: then an upload renames (and may replace)
NO_HARD_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.ENOSYS}


class StorageError(Exception):
    """The operator could not be built from the settings, or the startup check failed."""


class Storage:
    """Whole objects on an OpenDAL operator: write (visible only when complete), read, list, delete; on
    ``fs`` also a temporary local file for native code to write and rename into place."""

    def __init__(
        self, operator: opendal.Operator, service: str = "", root: str = "", settings: StorageSettings | None = None
    ) -> None:
        self.operator = operator
        self.service = service
        self.root = root
        self._settings = s = settings or StorageSettings()
        self.bucket = s.bucket
        self._can_rename = bool(operator.capability().rename)
        self._multipart = bool(operator.capability().write_can_multi) and service != "gcs"

    @classmethod
    def from_settings(cls, settings: StorageSettings) -> Storage:
        options = dict(settings.options)
        root = settings.root
        if settings.type == "fs":
            root = os.path.abspath(root)
            try:
                os.makedirs(root, exist_ok=True)
            except OSError as exc:
                raise StorageError(f"storage.root {root!r} cannot be made a directory: {exc.strerror}") from None
        if root:
            options["root"] = root
        if settings.bucket:
            options["container" if settings.type == "azblob" else "bucket"] = settings.bucket
        if settings.endpoint:
            options["endpoint"] = settings.endpoint
        if settings.region:
            options["region"] = settings.region
        try:
            operator = opendal.Operator(settings.type, **options)
        except opendal.exceptions.Unsupported as exc:
            raise StorageError(f"storage.type {settings.type!r} is not an OpenDAL service this build has") from exc
        except OPENDAL_ERRORS as exc:
            raise StorageError(f"storage.type {settings.type!r}: invalid storage settings: {first_line(exc)}") from exc
        operator = operator.layer(TimeoutLayer(timeout=settings.timeout, io_timeout=settings.io_timeout))
        return cls(operator, settings.type, root, settings)

    def describe(self) -> dict[str, Any]:
        """Where data goes, without credentials."""
        where: dict[str, Any] = {"service": self.service, "root": self.root}
        if self.bucket:
            where["bucket"] = self.bucket
        if self._settings.endpoint:
            where["endpoint"] = without_password(self._settings.endpoint)
        return where

    def check(self) -> None:
        """Write, read back and delete a small probe object; StorageError with one clear line if any fails."""
        path = f"{PROBE_DIR}{uuid.uuid4().hex}"
        where = (
            f"{self.service}:{self.bucket}/{self.root.lstrip('/')}" if self.bucket else f"{self.service}:{self.root}"
        )
        try:
            self.operator.write(path, b"flight-writer probe", content_type="text/plain")
            if bytes(self.operator.read(path)) != b"flight-writer probe":
                raise StorageError(f"storage check failed at {where}: the probe object read back differently")
            self.operator.delete(path)
        except OPENDAL_ERRORS as exc:
            raise StorageError(f"storage check failed at {where}: {type(exc).__name__}: {first_line(exc)}") from exc

    def write(self, path: str, data: Any, content_type: str = "application/octet-stream", replace: bool = True) -> None:
        """Store ``data`` (bytes or a buffer) at ``path``; on error nothing appears at ``path``. With
        ``replace=False`` only if nothing is there yet (FileExistsError), as ``create`` does."""
        if not isinstance(data, bytes):
            # OpenDAL 0.47 copies anything but bytes element by element: 40 MB as a pyarrow Buffer took
            # 3.6 s, as bytes 0.03 s (plus 0.1 s for the copy into bytes). Measured in bench/ notes.
            data = data.to_pybytes() if isinstance(data, pa.Buffer) else bytes(data)
        multipart = self._multipart and len(data) > self._settings.multipart_threshold
        if not replace and not multipart:  # a conditional write is one request (multipart ones replace)
            try:
                self.create(path, data, content_type)
            except opendal.exceptions.Unsupported:  # a service without conditional writes: replaced, as before
                self.write(path, data, content_type)
            return
        if not self._can_rename:
            options: dict[str, Any] = {"content_type": content_type}
            if multipart:
                options.update(chunk=self._settings.upload_chunk_bytes, concurrent=self._settings.upload_concurrency)
            self.operator.write(path, data, **options)
            return
        tmp = f"{TMP_DIR}{uuid.uuid4().hex}.partial"
        try:
            self.operator.write(tmp, data)
            self.operator.rename(tmp, path)
        except BaseException:
            with contextlib.suppress(Exception):  # the original error is the one worth reporting
                self.operator.delete(tmp)
            raise

    def local_tmp(self) -> tuple[str, str] | None:
        """A new temporary object under ``_tmp/`` that native code can write straight into, as (its path in
        this storage, its path on the local disk); ``commit`` moves it into place. None where storage is not
        a local directory (then an object is uploaded from memory with ``write``)."""
        if self.service != "fs" or not self._can_rename or not os.path.isabs(self.root):
            return None
        tmp = f"{TMP_DIR}{uuid.uuid4().hex}.partial"
        local = os.path.join(self.root, tmp)
        os.makedirs(os.path.dirname(local), exist_ok=True)
        return tmp, local

    def commit(self, tmp: str, path: str, replace: bool = True) -> None:
        """Move a complete temporary object from ``local_tmp`` to ``path`` (a rename: all or nothing). With
        ``replace=False`` only if nothing is there yet: a hard link, FileExistsError if the name is taken
        (the temporary object stays, for a later ``commit``)."""
        if replace:
            self.operator.rename(tmp, path)
            return
        target = os.path.join(self.root, path)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        try:
            os.link(os.path.join(self.root, tmp), target)
        except FileExistsError:
            raise
        except OSError as exc:
            if exc.errno not in NO_HARD_LINKS:
                raise
            # a filesystem without hard links (some FUSE and network mounts): renamed over, as before
            logger.warning("{}: no hard links here ({}); the upload replaces what may be there", self.root, exc)
            self.operator.rename(tmp, path)
            return
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(self.root, tmp))

    def remove_partials(self, older_than: float | None = None) -> None:
        """Delete what a crash left under ``_tmp/``: everything (one process writes to this root), or with
        ``older_than`` only files untouched for that many seconds (write processes share the root: another's
        file in the making is written to continuously, and a file job takes seconds to minutes)."""
        if not self._can_rename:
            return
        now = time.time()
        for path in self.list(TMP_DIR):
            with contextlib.suppress(Exception):
                if older_than is None or now - os.path.getmtime(os.path.join(self.root, path)) > older_than:
                    self.operator.delete(path)

    def read(self, path: str) -> bytes:
        return bytes(self.operator.read(path))

    def create(self, path: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        """Store ``data`` at ``path`` only if nothing is there yet, all or nothing (a log entry: two writers
        racing for one name, one wins). FileExistsError if something is there. A local directory: a
        temporary file hard-linked into place (the link fails if the name is taken); elsewhere one
        conditional request (``If-None-Match: *``)."""
        local = self.local_tmp()
        if local is not None:
            _, tmp_local = local
            target = os.path.join(self.root, path)
            try:
                with open(tmp_local, "wb") as f:
                    f.write(data)
                os.makedirs(os.path.dirname(target), exist_ok=True)
                os.link(tmp_local, target)  # FileExistsError if taken
            finally:
                with contextlib.suppress(OSError):
                    os.unlink(tmp_local)
            return
        try:
            self.operator.write(path, data, if_not_exists=True, content_type=content_type)
        except (opendal.exceptions.ConditionNotMatch, opendal.exceptions.Conflict):
            # 412: taken; 409 (S3): another conditional write of the name is in flight. Either way the caller
            # reads what is there and plans again (what it finds decides, not this answer)
            raise FileExistsError(errno.EEXIST, "exists already", path) from None

    def parquet_footer(self, path: str) -> tuple[int, pq.FileMetaData] | None:
        """The size and footer of the Parquet object at ``path``, reading only its tail; None if there is
        no object there, or none that ends like a Parquet file with a footer that parses."""
        try:
            size = self.operator.stat(path).content_length
        except opendal.exceptions.NotFound:
            return None
        tail = bytes(self.operator.read(path, offset=max(0, size - FOOTER_GUESS), size=min(size, FOOTER_GUESS)))
        if size < 12 or tail[-4:] != b"PAR1":
            return None
        length = int.from_bytes(tail[-8:-4], "little")
        if length + 8 > len(tail):
            if length + 12 > size:
                return None
            tail = bytes(self.operator.read(path, offset=size - length - 8, size=length + 8))
        footer = tail[-length - 8 : -8]
        try:
            return size, pq.read_metadata(pa.BufferReader(b"PAR1" + footer + tail[-8:]))
        except (pa.ArrowException, OSError):  # ends like Parquet, but its footer does not parse
            return None

    def list(self, prefix: str = "") -> list[str]:
        """Paths of the objects (not directories) under ``prefix``, recursively, sorted."""
        return sorted(e.path for e in self.operator.scan(prefix) if not e.path.endswith("/"))

    def delete(self, path: str) -> None:
        self.operator.delete(path)


def error_cause(exc: BaseException) -> str:
    """A short, stable label for why an operation failed (metrics' ``error`` label): OpenDAL's kind where it
    says enough, else what its message says (a timeout, an unreachable endpoint, throttling, the disk)."""
    for kind, cause in _KINDS:
        if isinstance(exc, kind):
            return cause
    if isinstance(exc, MemoryError):
        return "out_of_memory"
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return "disk_full"
    text = str(exc).lower()
    for cause, words in _CAUSES:
        if any(word in text for word in words):
            return cause
    if isinstance(exc, OSError):
        return "disk"
    return "other" if type(exc).__module__.startswith("opendal") else type(exc).__name__.lower()


_KINDS = (
    (opendal.exceptions.PermissionDenied, "permission_denied"),
    (opendal.exceptions.NotFound, "not_found"),
    (opendal.exceptions.ConfigInvalid, "config_invalid"),
    (opendal.exceptions.RateLimited, "throttled"),
    (opendal.exceptions.NotADirectory, "disk"),
    (opendal.exceptions.IsADirectory, "disk"),
)
_CAUSES = (
    ("disk_full", ("no space left", "disk full", "quota exceeded")),
    ("timeout", ("timed out", "timeout", "deadline")),
    ("throttled", ("rate limit", "slowdown", "slow down", "too many requests", " 429", " 503")),
    ("unreachable", ("connection refused", "connect error", "error sending request", "dns", "connection reset")),
    ("disk", ("not a directory", "is a directory", "read-only file system", "file exists")),
)


def first_line(exc: BaseException) -> str:
    """OpenDAL messages run over many lines of context; the first says what happened."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
