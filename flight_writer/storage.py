"""The storage seam: whole objects written through one OpenDAL operator, visible only when complete.

Where the service can rename (``fs``), an object is written under ``_tmp/`` and renamed into place, so a
reader listing the dataset never sees a half-written file. Elsewhere one ``write`` call uploads the
object, which the service makes visible only once the upload completed (single PUT or a completed
multipart upload); a failed upload commits nothing.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from typing import Any

import opendal

from flight_writer.config import StorageSettings

TMP_DIR = "_tmp/"


class StorageError(Exception):
    """The operator could not be built from the settings."""


class Storage:
    def __init__(self, operator: opendal.Operator, service: str = "", root: str = "") -> None:
        self.operator = operator
        self.service = service
        self.root = root
        self._can_rename = bool(operator.capability().rename)

    @classmethod
    def from_settings(cls, settings: StorageSettings) -> Storage:
        options = dict(settings.options)
        root = settings.root
        if settings.type == "fs":
            root = os.path.abspath(root)
            os.makedirs(root, exist_ok=True)
        if root:
            options["root"] = root
        try:
            operator = opendal.Operator(settings.type, **options)
        except opendal.exceptions.Unsupported as exc:
            raise StorageError(f"storage.type {settings.type!r} is not an OpenDAL service this build has") from exc
        except opendal.exceptions.Error as exc:
            first = str(exc).strip().splitlines()[0]
            raise StorageError(f"storage.type {settings.type!r}: invalid storage options: {first}") from exc
        return cls(operator, settings.type, root)

    def describe(self) -> dict[str, Any]:
        return {"service": self.service, "root": self.root}

    def write(self, path: str, data: Any, content_type: str = "application/octet-stream") -> None:
        """Store ``data`` (bytes or a buffer) at ``path``; on error nothing appears at ``path``."""
        if not self._can_rename:
            self.operator.write(path, data, content_type=content_type)
            return
        tmp = f"{TMP_DIR}{uuid.uuid4().hex}.partial"
        try:
            self.operator.write(tmp, data)
            self.operator.rename(tmp, path)
        except BaseException:
            with contextlib.suppress(Exception):  # the original error is the one worth reporting
                self.operator.delete(tmp)
            raise

    def remove_partials(self) -> None:
        """Delete what a crash left under ``_tmp/`` (one server per storage root)."""
        if not self._can_rename:
            return
        for path in self.list(TMP_DIR):
            with contextlib.suppress(Exception):
                self.operator.delete(path)

    def read(self, path: str) -> bytes:
        return bytes(self.operator.read(path))

    def list(self, prefix: str = "") -> list[str]:
        """Paths of the objects (not directories) under ``prefix``, recursively, sorted."""
        return sorted(e.path for e in self.operator.scan(prefix) if not e.path.endswith("/"))

    def delete(self, path: str) -> None:
        self.operator.delete(path)
