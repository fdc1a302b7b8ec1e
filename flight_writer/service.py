"""The service: queue + writer + Flight server wired together, with a start/stop lifecycle.

``Service(settings)`` builds every part from settings; ``Service(settings, queue=..., storage=...)``
takes parts a library user made. ``start()`` opens in order storage -> writer -> server; ``stop()`` is
the mirror image: stop taking calls and let in-flight ones finish (for up to ``server.shutdown_timeout``
seconds; then no stream may add a batch), drain the queue and write every buffer, then close the queue.
After a graceful stop every batch that got a PutResult is in Parquet.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import opendal
import pyarrow as pa
from loguru import logger

from flight_writer import status
from flight_writer._version import __version__
from flight_writer.config import Settings
from flight_writer.config.live import split_changes
from flight_writer.ingest.auth import Authenticator, load_principals
from flight_writer.ingest.server import FlightWriterServer
from flight_writer.ingest.tls import tls_options
from flight_writer.lake.storage import Storage, StorageError, first_line
from flight_writer.lake.tables import make_tables
from flight_writer.metrics import Metrics
from flight_writer.queue import Queue, WalQueue, make_queue
from flight_writer.queue.counting import MAX_DATASETS
from flight_writer.queue.tracker import DurabilityTracker
from flight_writer.write.commits import Committer
from flight_writer.write.writer import Writer


class Service:
    """One process of flight-writer: a queue, the writer draining its feed into storage, and the Flight
    server putting into it; ``start``/``stop`` (or ``with``) open and close them in order.

    ``role``: ``all`` (the default: both in this process), ``ingest`` (the Flight server only) or ``write``
    (the writer only); the last two need a queue shared between processes (``queue.type = "nats"``)."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        queue: Queue | None = None,
        storage: Storage | opendal.Operator | None = None,
        role: str = "all",
    ) -> None:
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
        self.settings = settings or Settings()
        self.role = role
        self._queue_arg = queue
        self._storage_arg = storage
        self._state = "unopened"
        self.queue: Queue
        self.storage: Storage
        self.writer: Writer | None = None
        self.committer: Committer | None = None  # lake table commits (write/commits.py), with the writer
        self.server: FlightWriterServer | None = None
        self.metrics: Metrics | None = None
        #: after stop(): calls were still open at server.shutdown_timeout (they end with the process)
        self.calls_open = False
        self.started_at = 0.0  # time.monotonic() at start (uptime)

    @property
    def tracker(self) -> DurabilityTracker:
        """The durability position (the queue's)."""
        return self.queue.position

    @property
    def port(self) -> int:
        if self.server is None:
            raise RuntimeError("a write process has no Flight server")
        return self.server.port

    @property
    def location(self) -> str:
        """Where clients connect: the configured host, or 127.0.0.1 when listening on all interfaces."""
        scheme, _, rest = self.settings.server.location.partition("://")
        host = rest.rsplit(":", 1)[0] if ":" in rest else rest
        if host in ("0.0.0.0", "", "[::]"):
            host = "127.0.0.1"
        return f"{scheme}://{host}:{self.port}"

    def start(self) -> Service:
        if self._state != "unopened":
            raise RuntimeError(f"cannot start a service that is {self._state}")
        s = self.settings
        given = self._storage_arg
        if isinstance(given, opendal.Operator):
            given = Storage(given, "opendal", "")
        auth = Authenticator(load_principals(s.auth.principals_file)) if s.auth.principals_file else None
        self.storage = given or Storage.from_settings(s.storage)
        check_error = None
        try:
            self.storage.check()
        except StorageError as exc:
            if s.storage.startup_check:
                raise
            check_error = str(exc)
            logger.error("{} (storage.startup_check = false: starting anyway)", exc)
        self.queue = self._queue_arg or make_queue(s.queue, s.server.ack_history, self.role)
        try:
            if self.role != "ingest":
                # write processes share the root: only what no one has touched for an hour is a crash's
                self.storage.remove_partials(None if self.role == "all" else 3600.0)
                self.writer = Writer(self.queue, self.storage, s.writer, s.datasets, crashed=self.queue.close)
                tables = make_tables(s.tables, s.datasets, s.storage)
                self.committer = Committer(
                    tables, s.datasets, s.tables, self.storage, self.queue.committed, self.queue.identity, s.writer
                )
                try:  # what a crash left uncommitted, before anything new is stored
                    self.committer.adopt(patient=False)
                    settled = not self.committer.incomplete
                except Exception as exc:
                    if s.storage.startup_check:
                        raise StorageError(f"lake tables: {first_line(exc)}") from exc
                    logger.error("lake tables: {} (storage.startup_check = false: starting anyway)", exc)
                    settled = False
                if not settled:  # the seqs from before the start are not known to be in their tables yet
                    self.queue.position.hold_committed()
                    self.committer.on_recovered = self.queue.position.release_committed
                self.writer.followers.watchers.append(self.committer)
                self.committer.start()
                self.writer.start()
                if check_error is not None:
                    self.writer.report_error(check_error)
            if self.role != "write":
                self.server = FlightWriterServer(
                    s.server.location,
                    self.queue,
                    self.status,
                    s.queue.put_timeout,
                    self.storage,
                    s.flight_sql,
                    s.server,
                    auth,
                    s.datasets,
                    self.committer,
                    **tls_options(s.server),
                )
            if s.metrics.listen:
                self.metrics = Metrics(
                    s.metrics,
                    self.status,
                    self.not_ready,
                    lambda: status.busiest_datasets(self, MAX_DATASETS),
                    lambda: status.health(self),
                )
                if self.writer is not None:
                    self.writer.followers.listeners.append(self.metrics.file_stored)
                if isinstance(self.queue, WalQueue):
                    self.queue.fsync_listeners.append(self.metrics.wal_fsync)
                self.metrics.start()
        except Exception:  # e.g. the port is taken: give back what was opened (the WAL's lock and threads)
            if self.server is not None:
                self.server.shutdown()
            if self.writer is not None:
                self.writer.close()
            if self.committer is not None:
                self.committer.close()
            self.queue.close()
            raise
        self.started_at = time.monotonic()
        self._state = "opened"
        logger.info(
            "flight-writer {} {} queue={} storage={}:{} arrow-allocator={} (settings: log.level = debug shows each)",
            __version__,
            f"listening on {s.server.location} (port {self.port})" if self.server else "writing (role = write)",
            self.queue.type,
            self.storage.service,
            self.storage.root,
            pa.default_memory_pool().backend_name,
        )
        for section, values in s.masked().items():  # one setting per line, secrets masked
            for key, value in values.items():
                logger.debug("setting {}.{} = {!r}", section, key, value)
        if self.metrics is not None:
            logger.info("metrics on http://{}/metrics (and /healthz, /readyz)", self._metrics_address())
        return self

    def stop(self, timeout: float | None = None) -> bool:
        """Graceful stop. False if the writer could not store everything within ``timeout``."""
        if self._state != "opened":
            return True
        self._state = "closing"
        if self.server is not None:
            self._stop_calls()
        finished = True
        if self.writer is not None:
            # pending: on NATS the stream's messages, every process's (claims of batch ids too)
            logger.info(
                "stopping: writing what this process holds ({} pending in the queue)",
                self.queue.stats()["pending_batches"],
            )
            finished = self.writer.close(timeout)
        if self.committer is not None:
            self.committer.close(timeout)  # commit what the writer stored last
        self.queue.close()
        self._state = "closed"
        logger.info("stopped: durable through seq {}", self.tracker.durable_through)
        if self.metrics is not None:  # last: /readyz said "shutting down" during the stop
            self.metrics.close()
        return finished

    def _stop_calls(self) -> None:
        """Let calls in flight finish, for up to ``server.shutdown_timeout`` seconds."""
        assert self.server is not None
        logger.info("stopping: finishing calls in flight")
        calls = threading.Thread(target=self.server.shutdown, name="flight-writer-shutdown", daemon=True)
        calls.start()
        calls.join(self.settings.server.shutdown_timeout)
        if calls.is_alive():
            # pyarrow cannot end a call from the server's side: take no more batches (a stream that sends
            # one is told the server is shutting down), write what was taken, and leave the calls to the
            # process's exit (``calls_open``)
            self.queue.refuse_puts()
            logger.warning(
                "stopping: {} streams still open after server.shutdown_timeout ({:g} s): taking no more batches",
                self.server.active_streams,
                self.settings.server.shutdown_timeout,
            )
            self.calls_open = True

    def reload(self, new: Settings) -> tuple[list[str], list[str]]:
        """Apply what can change while running (SIGHUP); returns (settings changed now, settings that
        changed but need a restart, left as they were). The principals file is read again whether or not
        its name changed (new secrets, rotated ones, changed rights). ``AuthError`` if it cannot be used:
        nothing changes then. Logging is the caller's (``log.*`` are returned as changed)."""
        auth = self.server.authenticator if self.server is not None else None
        also_live: tuple[str, ...] = ()
        if auth is not None and new.auth.principals_file:  # another file, while auth stays on: live too
            also_live = ("auth.principals_file",)
            auth.reload(load_principals(new.auth.principals_file))  # raises before anything changed
        self.settings, live, restart = split_changes(self.settings, new, also_live)
        if self.writer is not None:
            self.writer.update(self.settings.writer)
        if self.server is not None:
            self.server.update(self.settings.server, self.settings.flight_sql, self.settings.queue.put_timeout)
        return live, restart  # metrics.ready_* are read from self.settings at each /readyz

    def abort(self) -> None:
        """Stop retrying storage now; used by a second signal."""
        if self._state in ("opened", "closing") and self.writer is not None:
            self.writer.abort()
            if self.committer is not None:
                self.committer.abort()

    def __enter__(self) -> Service:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _metrics_address(self) -> str:
        host = self.settings.metrics.listen.rpartition(":")[0]
        return f"{host}:{self.metrics.port}" if self.metrics else ""

    @property
    def state(self) -> str:
        """unopened, opened, closing or closed."""
        return self._state

    def not_ready(self) -> str | None:
        """Why the server should not get data now (``/readyz``), or None."""
        return status.not_ready(self)

    def status(self) -> dict[str, Any]:
        """The ``status`` action's answer (status.py)."""
        return status.status_of(self)

    def busiest_datasets(self, n: int) -> dict[str, dict[str, int]]:
        """Received and written counts of the ``n`` datasets that received the most Arrow bytes since start."""
        return status.busiest_datasets(self, n)


ROLES = ("all", "ingest", "write")
