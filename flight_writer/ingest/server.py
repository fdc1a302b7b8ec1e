"""The Flight surface: which call goes where. Everything slow happens in the writer.

``do_put`` with a PATH descriptor is the path door (the path names the dataset; the ``x-flight-writer-ack``
header picks queued or durable replies), with a CMD descriptor Flight SQL's door (flightsql/door.py); both
feed the one ingest path (ingestor.py). The actions are actions.py's, dataset names paths.py's, TLS
options tls.py's. This module holds what applies to every call: the stream limits (``server.max_streams``,
per principal) and the middleware (authentication, the ack header).

Errors a client can cause are ``FlightServerError`` with a message naming the problem; a full queue is
``FlightUnavailableError``. Neither affects other calls or data already acknowledged.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.flight as flight

from flight_writer.config import DatasetSettings, FlightSqlSettings, ServerSettings
from flight_writer.ingest.actions import Actions
from flight_writer.ingest.admission import Admission
from flight_writer.ingest.auth import Authenticator, AuthMiddlewareFactory, HandshakeAllowed, authorize, principal_of
from flight_writer.ingest.flightsql.door import FlightSqlDoor, TableReplace
from flight_writer.ingest.ingestor import Ingestor
from flight_writer.ingest.paths import dataset_from_path
from flight_writer.ingest.refusals import Refusals
from flight_writer.lake.datasets import Datasets
from flight_writer.lake.storage import Storage
from flight_writer.queue import Ingest

ACK_HEADER = "x-flight-writer-ack"
ACK_LEVELS = ("queued", "durable", "committed")


class _AckLevel(flight.ServerMiddleware):
    def __init__(self, level: str) -> None:
        self.level = level


class _AckLevelFactory(flight.ServerMiddlewareFactory):
    """Reads ``x-flight-writer-ack`` before the call starts, so a bad value costs no data."""

    def start_call(self, info: flight.CallInfo, headers: dict[str, list[str]]) -> _AckLevel | None:
        values = headers.get(ACK_HEADER)
        if not values:
            return None
        level = values[0].strip().lower() if isinstance(values[0], str) else values[0].decode().strip().lower()
        if level not in ACK_LEVELS:
            raise flight.FlightServerError(
                f"header {ACK_HEADER} must be one of {', '.join(ACK_LEVELS)}, got {values[0]!r}"
            )
        return _AckLevel(level)


class FlightWriterServer(flight.FlightServerBase):
    """The Flight server: routes calls to the doors and the actions, counts open streams. It holds the
    queue's ingest side only; the writer is reached through the queue."""

    def __init__(
        self,
        location: str,
        queue: Ingest,
        status: Callable[[], dict[str, Any]],
        put_timeout: float,
        storage: Storage,
        flight_sql: FlightSqlSettings | None = None,
        limits: ServerSettings | None = None,
        auth: Authenticator | None = None,
        layout: DatasetSettings | None = None,
        tables: TableReplace | None = None,
        **kwargs: Any,
    ) -> None:
        #: refused calls by reason, logged in rate-limited summaries (refusals.py)
        self.refusals = Refusals()
        middleware: dict[str, flight.ServerMiddlewareFactory] = {"ack": _AckLevelFactory()}
        if auth is not None:  # every call then needs credentials (auth.py)
            middleware["auth"] = AuthMiddlewareFactory(auth, self.refusals)
            kwargs["auth_handler"] = HandshakeAllowed()
        super().__init__(location, middleware=middleware, **kwargs)  # kwargs: TLS
        self._queue = queue
        self._position = queue.position
        self._limits = limits or ServerSettings()
        datasets = Datasets(storage)
        admission = Admission(datasets, layout or DatasetSettings())
        self._ingestor = Ingestor(queue, admission, self._limits, put_timeout, self.refusals)
        self._sql = FlightSqlDoor(
            self._ingestor,
            admission,
            datasets,
            storage,
            flight_sql or FlightSqlSettings(),
            tables,
            lambda dataset: (layout or DatasetSettings()).rule_for(dataset).table,
        )
        self._actions = Actions(queue, status, self.refusals)
        self._auth = auth
        self._streams = 0  # do_put calls open now (metrics)
        self._streams_of: dict[str, int] = {}  # ... by principal, with auth
        self._streams_lock = threading.Lock()

    @property
    def authenticator(self) -> Authenticator | None:
        return self._auth

    def update(self, limits: ServerSettings, flight_sql: FlightSqlSettings, put_timeout: float) -> None:
        """New limits and Flight SQL settings (a live reload); calls already running keep what they read."""
        self._limits, self._sql.settings = limits, flight_sql
        self._ingestor.limits, self._ingestor.put_timeout = limits, put_timeout

    # -- do_put: two front doors, one ingest path -------------------------------------------------------
    def do_put(
        self,
        context: flight.ServerCallContext,
        descriptor: flight.FlightDescriptor,
        reader: flight.MetadataRecordBatchReader,
        writer: flight.FlightMetadataWriter,
    ) -> None:
        who = principal_of(context)
        name = who.name if who is not None else None
        limit = self._limits.max_streams_per_principal if who is None or who.max_streams is None else who.max_streams
        full = None
        with self._streams_lock:
            if self._streams >= self._limits.max_streams:
                full = f"{self._streams} streams are open, the most this server takes (server.max_streams); retry later"
            elif who is not None and self._streams_of.get(name, 0) >= limit:
                full = (
                    f"principal {name!r} has {limit} streams open, the most it may (its max_streams or "
                    "server.max_streams_per_principal); retry later"
                )
            else:
                self._streams += 1
                if who is not None:
                    self._streams_of[name] = self._streams_of.get(name, 0) + 1
        if full is not None:
            self.refusals.count("limits", full)
            raise flight.FlightUnavailableError(full)
        try:
            self._put(context, descriptor, reader, writer)
        finally:
            with self._streams_lock:
                self._streams -= 1
                if who is not None:
                    self._streams_of[name] -= 1
                    if not self._streams_of[name]:
                        del self._streams_of[name]

    @property
    def active_streams(self) -> int:
        return self._streams

    def _put(
        self,
        context: flight.ServerCallContext,
        descriptor: flight.FlightDescriptor,
        reader: flight.MetadataRecordBatchReader,
        writer: flight.FlightMetadataWriter,
    ) -> None:
        level = context.get_middleware("ack")
        if descriptor.descriptor_type == flight.DescriptorType.CMD:
            self._sql.ingest(context, descriptor.command, level.level if level else None, reader, writer)
            return
        if descriptor.descriptor_type != flight.DescriptorType.PATH:
            problem = (
                f"do_put needs a PATH descriptor naming the dataset, got a {descriptor.descriptor_type.name} descriptor"
            )
            self.refusals.count("bad_request", problem)
            raise flight.FlightServerError(problem)
        try:
            dataset = dataset_from_path([p.decode("utf-8", "replace") for p in descriptor.path])
        except ValueError as exc:
            self.refusals.count("bad_request", str(exc))
            raise flight.FlightServerError(str(exc)) from None
        authorize(context, f"write dataset {dataset!r}", lambda who: who.may_write(dataset))
        until = level.level if level is not None and level.level != "queued" else None
        seqs, _ = self._ingestor.ingest(dataset, reader, writer, keep_seqs=until is not None)
        if until is not None:
            final: dict[str, Any] = {"state": until, **self._ingestor.make_durable(dataset, seqs, until)}
            writer.write(pa.py_buffer(json.dumps(final).encode()))

    # -- Flight SQL: bulk ingestion for ADBC clients, catalog answers (flightsql/door.py) --------------------
    def get_flight_info(
        self, context: flight.ServerCallContext, descriptor: flight.FlightDescriptor
    ) -> flight.FlightInfo:
        return self._sql.get_flight_info(context, descriptor)

    def do_get(self, context: flight.ServerCallContext, ticket: flight.Ticket) -> flight.RecordBatchStream:
        return self._sql.do_get(context, ticket)

    # UNIMPLEMENTED answers come from raising NotImplementedError: no Flight error class maps to that gRPC
    # code, and pyarrow appends the Python traceback (these few frames) to the message. The right code
    # matters more (ADBC turns it into NotSupportedError); the messages say what to use instead.
    def list_flights(self, context: flight.ServerCallContext, criteria: bytes) -> None:
        raise NotImplementedError(
            "list_flights is not supported: list datasets with Flight SQL GetTables (ADBC adbc_get_objects)"
        )

    def get_schema(self, context: flight.ServerCallContext, descriptor: flight.FlightDescriptor) -> None:
        raise NotImplementedError(
            "get_schema is not supported: a dataset's schema is in Flight SQL GetTables (include_schema)"
        )

    def do_exchange(
        self,
        context: flight.ServerCallContext,
        descriptor: flight.FlightDescriptor,
        reader: flight.MetadataRecordBatchReader,
        writer: flight.MetadataRecordBatchWriter,
    ) -> None:
        raise NotImplementedError("do_exchange is not supported: send data with do_put")

    # -- do_action (actions.py) ------------------------------------------------------------------------
    def list_actions(self, context: flight.ServerCallContext) -> list[tuple[str, str]]:
        return self._actions.list()

    def do_action(self, context: flight.ServerCallContext, action: flight.Action) -> list[bytes]:
        return self._actions.call(context, action)
