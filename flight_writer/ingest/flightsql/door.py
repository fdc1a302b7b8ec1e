"""The Flight SQL door: bulk ingestion as ADBC clients speak it (``CommandStatementIngest`` on ``do_put``,
with its table modes) and the catalog answers they ask for (SqlInfo, catalogs, schemas, tables, table
types). The batches go the same way as the path door's (the :class:`Ingestor`); this module adds the table
modes (``fail``/``append``/``replace``, ``if_not_exist``), the rights they need and the answers.
messages.py has the messages.

Catalog answers come from the names :meth:`Admission.names` keeps (storage's, listed again in the
background, and those admitted here), never from a listing of storage per call. What a client controls in
them is bounded (messages.py): pattern length, rows, the schemas one call reads; a call whose client went
away stops reading schemas."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.flight as flight

from flight_writer.config import FlightSqlSettings
from flight_writer.ingest.admission import Admission
from flight_writer.ingest.auth import authorize, principal_of
from flight_writer.ingest.flightsql import messages as flightsql
from flight_writer.ingest.ingestor import Ingestor
from flight_writer.ingest.paths import dataset_from_path
from flight_writer.lake.datasets import Datasets, parquet_schema_of
from flight_writer.lake.storage import Storage


class TableReplace(Protocol):
    """How a replace reaches a dataset's lake table: one overwrite commit (the write role's committer; in
    the same process only)."""

    def commits(self, dataset: str) -> bool: ...

    def begin_replace(self, dataset: str) -> None: ...

    def finish_replace(self, dataset: str, files: list[str], seqs: list[int], ok: bool) -> bool: ...


class FlightSqlDoor:
    """Flight SQL's door onto the one ingest path (``ingestor``); ``settings`` (flight_sql.*) may be replaced
    while running (a live reload)."""

    def __init__(
        self,
        ingestor: Ingestor,
        admission: Admission,
        datasets: Datasets,
        storage: Storage,
        settings: FlightSqlSettings,
        tables: TableReplace | None = None,
        table_of: Callable[[str], str] = lambda dataset: "none",
    ) -> None:
        self._tables = tables
        self._table_of = table_of  # the dataset's table format (datasets.table)
        self._ingestor = ingestor
        self._admission = admission
        self._datasets = datasets
        self._storage = storage
        self.settings = settings

    def ingest(
        self,
        context: flight.ServerCallContext,
        command: bytes,
        ack_header: str | None,
        reader: flight.MetadataRecordBatchReader,
        writer: flight.FlightMetadataWriter,
    ) -> None:
        try:
            name, value = flightsql.unpack_any(command)
            if name != flightsql.INGEST:
                raise NotImplementedError(
                    f"Flight SQL command {name or '(none)'} is not supported: "
                    "this server only ingests (CommandStatementIngest)"
                )
            cmd = flightsql.parse_ingest(value)
        except flightsql.LimitError as exc:
            raise flight.FlightServerError(f"do_put Flight SQL command refused: {exc}") from None
        except flightsql.ProtobufError as exc:
            raise flight.FlightServerError(f"do_put command is not a Flight SQL command: {exc}") from None
        if cmd.temporary:
            raise NotImplementedError("temporary tables are not supported")
        if cmd.transaction_id:
            raise NotImplementedError("transactions are not supported")
        try:
            dataset = dataset_from_path(cmd.path)
        except ValueError as exc:
            raise flight.FlightServerError(f"table {'.'.join(cmd.path)!r}: {exc}") from None
        authorize(context, f"write dataset {dataset!r}", lambda who: who.may_write(dataset))
        if cmd.if_exists == "replace":
            authorize(context, "replace data (Flight SQL ingest mode replace)", lambda who: who.replace)
        self._ingestor.flush(dataset)  # buffered data of this dataset counts as existing
        existing = self._datasets.objects(dataset)
        if existing and cmd.if_exists == "fail":
            raise flight.FlightServerError(f"ALREADY_EXISTS: table {dataset!r} already has data")
        if not existing and cmd.if_not_exist == "fail":
            raise flight.FlightServerError(f"NOT_FOUND: table {dataset!r} does not exist")
        replace = bool(existing) and cmd.if_exists == "replace"
        if existing and not replace and not self.settings.allow_schema_change:
            current = self._datasets.parquet_schema(dataset)
            stored = self._admission.stored_schema(dataset, reader.schema)
            if current is not None and not current.equals(parquet_schema_of(stored)):
                raise flight.FlightServerError(
                    f"table {dataset!r} has schema ({_short(current.to_arrow_schema())}); the data has "
                    f"({_short(reader.schema)}). Set flight_sql.allow_schema_change = true to allow it"
                )
        level = ack_header or self.settings.ack
        table = replace and self._table_of(dataset) != "none"
        if table:
            if self._tables is None:
                raise flight.FlightServerError(
                    f"table {dataset!r} is a lake table: a replace is one overwrite commit, which only a process "
                    "that also writes (serve --role all) can make"
                )
            self._tables.begin_replace(dataset)
        replacing = table  # a marker keeps every process from adopting the dataset's files until end_replace
        seqs: list[int] = []
        try:
            seqs, rows = self._ingestor.ingest(dataset, reader, None, keep_seqs=True, fresh=replace)
            if level != "queued" or replace:  # a replace removes the old data only once the new data is safe
                result = self._ingestor.make_durable(dataset, seqs, "durable" if table else level)
                if result.get("failed"):
                    if replace:  # none of it: the old data stays as it was, and so does the dataset's schema
                        for path in result.get("files", ()):
                            self._storage.delete(path)
                        self._admission.forget(dataset)
                    raise flight.FlightServerError(
                        f"{len(result['failed'])} batches could not be stored in Parquet: "
                        f"{result['failed'][0]['error']}"
                    )
                if table:
                    assert self._tables is not None
                    table = False  # from here the committer settles the replace, whatever happens
                    new_files = result.get("files", [])
                    try:
                        done = self._tables.finish_replace(dataset, new_files, seqs, True)
                        why = "its files were not all stored in time"
                    except Exception as exc:  # the commit failed: the table stays as it was
                        done, why = False, f"the commit failed: {exc}"
                    if not done:
                        for path in new_files:
                            self._storage.delete(path)
                        self._admission.forget(dataset)
                        raise flight.FlightServerError(f"table {dataset!r} not replaced, {why}; it stays as it was")
                for path in existing if replace else ():
                    self._storage.delete(path)
        finally:
            if table:  # the replace did not get as far as its commit: the table stays as it was
                assert self._tables is not None
                self._tables.finish_replace(dataset, [], seqs, False)
            if replacing:  # after the deletions above: files of a failed replace are never adopted
                assert self._tables is not None
                self._tables.end_replace(dataset)
        writer.write(pa.py_buffer(flightsql.update_result(rows)))

    def get_flight_info(
        self, context: flight.ServerCallContext, descriptor: flight.FlightDescriptor
    ) -> flight.FlightInfo:
        command = descriptor.command if descriptor.descriptor_type == flight.DescriptorType.CMD else b""
        name, value = self._command(command)
        if name == flightsql.GET_SQL_INFO:
            schema = flightsql.SQL_INFO_SCHEMA
        elif name in flightsql.CATALOG_COMMANDS:
            schema = _parsed(name, lambda: flightsql.parse_catalog(name, value)).schema
        else:
            raise NotImplementedError(
                f"get_flight_info: Flight SQL command {name or '(none)'} is not supported; "
                "this server ingests (do_put) and describes its datasets, it runs no queries"
            )
        return flight.FlightInfo(schema, descriptor, [flight.FlightEndpoint(command, [])], -1, -1)

    def do_get(self, context: flight.ServerCallContext, ticket: flight.Ticket) -> flight.RecordBatchStream:
        name, value = self._command(ticket.ticket)
        if name == flightsql.GET_SQL_INFO:
            request = _parsed(name, lambda: flightsql.parse_sql_info_request(value))
            return flight.RecordBatchStream(flightsql.sql_info_table(request))
        if name in flightsql.CATALOG_COMMANDS:
            request = _parsed(name, lambda: flightsql.parse_catalog(name, value))
            names = self._names() if request.lists_datasets else []
            if (who := principal_of(context)) is not None:  # only the datasets it may write
                names = [n for n in names if who.may_write(n)]

            def schema_of(dataset: str) -> pa.Schema | None:
                if context.is_cancelled():  # the client gave up: read no more footers for it
                    raise flight.FlightCancelledError(f"Flight SQL {name}: cancelled by the client")
                return self._datasets.schema(dataset)

            rows = _parsed(name, lambda: flightsql.catalog_rows(request, names, schema_of))
            return flight.RecordBatchStream(rows)
        raise NotImplementedError(
            "do_get: this server stores data, it does not serve reads; read the Parquet files from storage"
        )

    def _names(self) -> list[str]:
        try:
            return self._admission.names()
        except Exception as exc:  # storage never listed, and failing now
            raise flight.FlightServerError(
                f"cannot list the datasets in storage ({type(exc).__name__}: {exc}); try again later"
            ) from None

    @staticmethod
    def _command(data: bytes) -> tuple[str, bytes]:
        try:
            return flightsql.unpack_any(data) if data else ("", b"")
        except flightsql.LimitError as exc:
            raise flight.FlightServerError(f"Flight SQL command refused: {exc}") from None
        except flightsql.ProtobufError as exc:
            raise flight.FlightServerError(f"not a Flight SQL command: {exc}") from None


def _parsed(name: str, parse: Callable[[], Any]) -> Any:
    """``parse()``, with a malformed Flight SQL message, or one over a limit, as a clear error (not a Python
    traceback)."""
    try:
        return parse()
    except flightsql.LimitError as exc:
        raise flight.FlightServerError(f"Flight SQL {name}: {exc}") from None
    except flightsql.ProtobufError as exc:
        raise flight.FlightServerError(f"Flight SQL {name}: malformed message: {exc}") from None


def _short(schema: pa.Schema) -> str:
    return ", ".join(f"{f.name}: {f.type}" for f in schema)
