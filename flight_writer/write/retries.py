"""Retrying what storage, the local disk or the queue's log refuse, and the error state that shows it:
``status``'s ``last_error`` and ``error_for_s``, ``retries`` and ``retries_by_kind`` (metrics:
``flight_writer_retries_total{operation, error}``, the error labelled by cause: timeout, unreachable,
throttled, permission_denied, not_found, disk_full, ...). The first success after errors is logged, with
how long they lasted.

An operation is retried until it succeeds, with exponential backoff from ``writer.retry_initial_delay`` up
to ``writer.retry_max_delay``; errors that retrying cannot fix (credentials, a missing bucket) wait the
longest delay each time and say so. A hard stop (``abort``) ends the waiting with ``Aborted``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from loguru import logger

from flight_writer.config import WriterSettings
from flight_writer.lake.storage import PERMANENT_ERRORS, error_cause, first_line
from flight_writer.queue.base import QueueLost


class Aborted(Exception):
    """The writer was told to give up (hard stop); pending data was not written."""


class Retries:
    def __init__(self, settings: WriterSettings, abort: threading.Event) -> None:
        self.settings = settings  # replaced on a live reload
        self._abort = abort
        self._lock = threading.Lock()
        self._count = 0
        self._by_kind: dict[tuple[str, str], int] = {}  # (operation, error class) -> retries
        self._last_error: str | None = None
        self._error_since: float | None = None

    def run(
        self, what: str, action: Callable[[], Any], transient: tuple[type[BaseException], ...] = (Exception,)
    ) -> Any:
        """Run ``action`` until it succeeds; errors of the ``transient`` kinds are retried with backoff
        (shown in ``last_error``), others raised. ``Aborted`` on a hard stop. ``what``'s first word names
        the operation (upload, encode, write, confirm, record, store)."""
        delay = self.settings.retry_initial_delay
        while True:
            try:
                result = action()
            except QueueLost:
                raise  # retrying cannot bring the batches back: they come again from the feed
            except transient as exc:
                kind = (what.split(" ", 1)[0], error_cause(exc))  # e.g. ("upload", "timeout")
                with self._lock:
                    self._count += 1
                    self._by_kind[kind] = self._by_kind.get(kind, 0) + 1
                message = f"{what} failed: {type(exc).__name__}: {first_line(exc)}"
                if isinstance(exc, PERMANENT_ERRORS):
                    # retrying cannot fix it (credentials, bucket): keep the data, try again now and then
                    message += " (needs fixing: check the bucket and credentials; the data is kept)"
                    delay = self.settings.retry_max_delay
                    logger.error("{}; retrying in {:.1f}s", message, delay)
                else:
                    logger.warning("{}; retrying in {:.1f}s", message, delay)
                self.report(message)
                if self._abort.wait(delay):
                    raise Aborted(what) from exc
                delay = min(delay * 2, self.settings.retry_max_delay)
            else:
                if self._last_error is not None:
                    with self._lock:
                        since, self._last_error, self._error_since = self._error_since, None, None
                    if since is not None:
                        logger.info("{} succeeded: working again after {:.1f} s of errors", what, time.time() - since)
                return result

    def report(self, message: str) -> None:
        """Show a problem in ``last_error`` (also one found outside a retry, e.g. the storage check)."""
        with self._lock:
            self._last_error = message
            if self._error_since is None:
                self._error_since = time.time()

    def stats(self) -> dict[str, Any]:
        with self._lock:
            since = self._error_since
            return {
                "retries": self._count,
                "retries_by_kind": [
                    {"operation": op, "error": error, "retries": n} for (op, error), n in self._by_kind.items()
                ],
                "last_error": self._last_error,
                "error_for_s": None if since is None else round(time.time() - since, 3),
            }
