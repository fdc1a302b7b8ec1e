"""The Flight surface: validate, enqueue, acknowledge. Everything slow happens in the writer.

Errors a client can cause are ``FlightServerError`` with a message naming the problem; a full queue is
``FlightUnavailableError``. Neither affects other calls or data already acknowledged.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.flight as flight
import pyarrow.parquet as pq

from flight_writer import flightsql
from flight_writer.admission import Admission, AdmissionError
from flight_writer.auth import Authenticator, AuthMiddlewareFactory, HandshakeAllowed, authorize, principal_of
from flight_writer.config import DatasetSettings, FlightSqlSettings, ServerSettings
from flight_writer.datasets import Datasets
from flight_writer.layout import LayoutError
from flight_writer.queue import Ingest, QueueClosed, QueueFull, QueueWriteError
from flight_writer.schemas import SchemaError
from flight_writer.sql_door import FlightSqlDoor
from flight_writer.storage import Storage

ACK_HEADER = "x-flight-writer-ack"
ACK_LEVELS = ("queued", "durable")
MAX_WAIT_MS = 3_600_000
MAX_ACTION_BODY = 1 << 20  # bytes; ack/flush/status bodies are a few hundred bytes
MAX_ACK_SEQS = 10_000  # one ack of ~5 million seqs built a >2 GB reply and aborted the process
_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def dataset_from_path(segments: list[str]) -> str:
    """Validate 1-3 path segments and join them into a dataset name (``ValueError`` saying why not)."""
    if not 1 <= len(segments) <= 3:
        raise ValueError(f"a dataset path has 1 to 3 segments, got {len(segments)}")
    for seg in segments:
        if seg in (".", "..") or not _SEGMENT.fullmatch(seg):
            raise ValueError(
                f"invalid dataset path segment {seg!r}: use 1-128 characters from [A-Za-z0-9_.-], "
                "starting with a letter or digit"
            )
    return "/".join(segments)


def parquet_problem(schema: pa.Schema) -> str | None:
    """Why Parquet cannot store this schema, naming the column; None if it can."""

    def refuses(s: pa.Schema) -> str | None:
        try:
            pq.ParquetWriter(pa.BufferOutputStream(), s).close()
        except (pa.ArrowNotImplementedError, pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            return str(exc)
        return None

    if refuses(schema) is None:
        return None
    for f in schema:
        if (reason := refuses(pa.schema([f]))) is not None:
            return f"column {f.name!r} of type {f.type} cannot be stored in Parquet: {reason}"
    return f"schema cannot be stored in Parquet: {refuses(schema)}"


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


class _Replies:
    """One stream's PutResults for batches not yet settled, sent in seq order by a thread of their own as
    each batch is logged, while the stream's handler goes on reading. gRPC lets one thread write a stream
    while another reads it; every reply of the stream goes through here once this exists."""

    MAX_WAITING = 4096  # replies held before the handler stops reading to wait for the log

    def __init__(self, settle: Callable[[int, bool], bool], reply: Callable[[pa.Buffer], None]) -> None:
        self._settle = settle
        self._reply = reply
        self._waiting: deque[tuple[int, bytes]] = deque()
        self._cond = threading.Condition()
        self._ending = False
        self._error: Exception | None = None
        self._thread = threading.Thread(target=self._run, name="flight-writer-replies", daemon=True)
        self._thread.start()

    def add(self, seq: int, answer: bytes) -> None:
        with self._cond:
            while len(self._waiting) >= self.MAX_WAITING and self._error is None:
                self._cond.wait()
            self._raise_error()
            self._waiting.append((seq, answer))
            self._cond.notify_all()

    def finish(self) -> None:
        """Wait until every reply is sent; raise what stopped them."""
        with self._cond:
            self._ending = True
            self._cond.notify_all()
        self._thread.join()
        self._raise_error()

    def stop(self) -> None:
        """Give up on what is not sent (the stream failed)."""
        with self._cond:
            self._ending = True
            self._waiting.clear()
            self._cond.notify_all()
        self._thread.join()

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._ending:
                    self._cond.wait()
                if not self._waiting:
                    return
                seq, answer = self._waiting[0]
            try:
                self._settle(seq, True)
                self._reply(pa.py_buffer(answer))
            except Exception as exc:  # raised again in the handler's thread
                with self._cond:
                    self._error = exc
                    self._waiting.clear()
                    self._cond.notify_all()
                return
            with self._cond:
                if self._waiting:
                    self._waiting.popleft()
                self._cond.notify_all()


class FlightWriterServer(flight.FlightServerBase):
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
        **kwargs: Any,
    ) -> None:
        middleware: dict[str, flight.ServerMiddlewareFactory] = {"ack": _AckLevelFactory()}
        if auth is not None:  # every call then needs credentials (auth.py)
            middleware["auth"] = AuthMiddlewareFactory(auth)
            kwargs["auth_handler"] = HandshakeAllowed()
        super().__init__(location, middleware=middleware, **kwargs)  # kwargs: TLS
        self._queue = queue
        self._position = queue.position
        self._status = status
        self._put_timeout = put_timeout
        self._storage = storage
        self._datasets = Datasets(storage)
        self._admission = Admission(self._datasets, layout or DatasetSettings())
        self._sql = FlightSqlDoor(
            self._datasets,
            self._admission,
            storage,
            lambda: self._flight_sql,
            lambda dataset, reader, fresh: self._ingest(dataset, reader, None, keep_seqs=True, fresh=fresh),
            self._make_durable,
            lambda dataset: queue.flush(dataset, None),
            dataset_from_path,
        )
        self._flight_sql = flight_sql or FlightSqlSettings()
        self._limits = limits or ServerSettings()
        self._auth = auth
        self._streams = 0  # do_put calls open now (metrics)
        self._streams_of: dict[str, int] = {}  # ... by principal, with auth
        self._streams_lock = threading.Lock()
        self._actions: dict[str, tuple[str, Callable[[bytes], dict[str, Any]]]] = {
            "ack": ('Durability of seqs: {"seqs": [..]} or {"seq": n}, optional "wait_ms"', self._ack),
            "status": (
                "Server counters: received and durable seqs, pending data, files written, errors",
                lambda body: self._status(),
            ),
            "flush": (
                'Write out everything received so far (optional {"dataset": name}); returns once durable',
                self._flush,
            ),
            "CloseSession": ("Flight SQL session close (sessions hold nothing here)", lambda body: None),
        }

    @property
    def authenticator(self) -> Authenticator | None:
        return self._auth

    def update(self, limits: ServerSettings, flight_sql: FlightSqlSettings, put_timeout: float) -> None:
        """New limits and Flight SQL settings (a live reload); calls already running keep what they read."""
        self._limits, self._flight_sql, self._put_timeout = limits, flight_sql, put_timeout

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
        with self._streams_lock:
            if self._streams >= self._limits.max_streams:
                raise flight.FlightUnavailableError(
                    f"{self._streams} streams are open, the most this server takes (server.max_streams); retry later"
                )
            if who is not None and self._streams_of.get(name, 0) >= limit:
                raise flight.FlightUnavailableError(
                    f"principal {name!r} has {limit} streams open, the most it may (its max_streams or "
                    "server.max_streams_per_principal); retry later"
                )
            self._streams += 1
            if who is not None:
                self._streams_of[name] = self._streams_of.get(name, 0) + 1
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
            raise flight.FlightServerError(
                f"do_put needs a PATH descriptor naming the dataset, got a {descriptor.descriptor_type.name} descriptor"
            )
        try:
            dataset = dataset_from_path([p.decode("utf-8", "replace") for p in descriptor.path])
        except ValueError as exc:
            raise flight.FlightServerError(str(exc)) from None
        authorize(context, f"write dataset {dataset!r}", lambda who: who.may_write(dataset))
        durable = level is not None and level.level == "durable"
        seqs, _ = self._ingest(dataset, reader, writer, keep_seqs=durable)
        if durable:
            final: dict[str, Any] = {"state": "durable", **self._make_durable(dataset, seqs)}
            writer.write(pa.py_buffer(json.dumps(final).encode()))

    def _ingest(
        self,
        dataset: str,
        reader: flight.MetadataRecordBatchReader,
        writer: flight.FlightMetadataWriter | None,
        keep_seqs: bool,
        fresh: bool = False,
    ) -> tuple[list[int], int]:
        """Enqueue the stream batch by batch; a PutResult per batch when ``writer`` is given.
        Returns the seqs (when ``keep_seqs``: a long-lived queued stream should not collect them) and the
        number of rows taken.

        A reply goes out only once its batch is ``logged`` (fsynced, for a WAL that says so), but the
        stream does not wait for that: it reads on while earlier batches are fsynced, so one producer's
        batches share fsyncs, and a thread of the stream (``_Replies``) sends the replies in seq order as
        each batch is logged."""
        try:
            admitted = self._admission.admit(
                dataset,
                reader.schema,
                lambda schema, stored: self._schema_problem(schema) or parquet_problem(stored),
                fresh,
            )
        except AdmissionError as exc:
            raise flight.FlightServerError(str(exc)) from None
        conform, split = admitted.conform, admitted.split
        schema_key = admitted.schema.serialize().to_pybytes()
        versions = self._admission.versions  # evolve: the dataset's schema changed since the stream began?
        max_metadata, max_batch = self._limits.max_metadata_bytes, self._limits.max_batch_bytes
        put, timeout, settle = self._queue.put, self._put_timeout, self._queue.settle
        reply = writer.write if writer is not None else None
        state = self._queue.ack_state.encode()
        replies: _Replies | None = None  # started at the first batch not settled at once
        seqs: list[int] = []
        rows = 0
        last = 0  # without replies: the newest seq, to wait for before the stream ends
        try:
            for chunk in reader:
                batch = chunk.data
                if batch is None:  # a metadata-only message carries no rows
                    continue
                meta = chunk.app_metadata
                client_id = None
                problem = None
                if meta is not None and meta.size > max_metadata:
                    problem = f"app_metadata of {meta.size} bytes is over server.max_metadata_bytes ({max_metadata})"
                elif (nbytes := batch.get_total_buffer_size()) > max_batch:  # .nbytes: 18 µs per batch
                    problem = (
                        f"a record batch of {nbytes} Arrow bytes ({batch.num_rows} rows) is over "
                        f"server.max_batch_bytes ({max_batch}): send smaller batches"
                    )
                if admitted.version is not None and versions.get(dataset) != admitted.version:
                    # another stream widened the dataset's schema: this one's batches follow it from now on
                    try:
                        admitted = self._admission.admit(dataset, reader.schema, lambda schema, stored: None)
                    except AdmissionError as exc:
                        problem = str(exc)
                    else:
                        conform, split = admitted.conform, admitted.split
                        schema_key = admitted.schema.serialize().to_pybytes()
                pieces = None
                if problem is None and (conform is not None or split is not None):
                    try:
                        batch = conform.apply(batch) if conform is not None else batch
                        pieces = split(batch) if split is not None else None
                    except (LayoutError, SchemaError) as exc:
                        problem = str(exc)
                    except (pa.ArrowException, KeyError, ValueError) as exc:  # not foreseen: said, not a traceback
                        problem = f"batch cannot be stored as dataset {dataset!r} says: {type(exc).__name__}: {exc}"
                if problem is not None:
                    _answer_taken(replies)
                    raise flight.FlightServerError(problem)
                if meta is not None and meta.size:
                    client_id = _client_id(meta)
                try:
                    if pieces is None or len(pieces) == 1:
                        seq, duplicate = put(dataset, schema_key, batch, timeout, client_id, wait=False)
                        split_seqs = None
                    else:  # a seq per partition, each piece with an id of its own, all taken or none
                        ids = [_piece_id(client_id, k) for k in range(len(pieces))]
                        accepted = self._queue.put_many(dataset, schema_key, pieces, timeout, ids, wait=False)
                        split_seqs = [a.seq for a in accepted]
                        seq, duplicate = max(split_seqs), all(a.duplicate for a in accepted)
                except (QueueFull, QueueClosed, QueueWriteError) as exc:
                    _answer_taken(replies)
                    if isinstance(exc, QueueWriteError):
                        raise  # worded below, with a failed fsync
                    message = (
                        str(exc)
                        if isinstance(exc, QueueFull)
                        else "server is shutting down: the batches before this one were answered; send the "
                        "rest again once it is back"
                    )
                    raise flight.FlightUnavailableError(message) from None
                if keep_seqs:
                    seqs.extend(split_seqs or (seq,))
                rows += batch.num_rows
                if reply is None:
                    last = max(last, seq)  # a duplicate's seq can be older
                    continue
                if client_id is None and split_seqs is None:
                    answer = b'{"seq": %d, "rows": %d, "state": "%s"}' % (seq, batch.num_rows, state)
                else:
                    fields = {"seq": seq, "rows": batch.num_rows, "state": state.decode()}
                    if client_id is not None:
                        fields["id"] = client_id
                    if split_seqs is not None:  # in several partitions: durable once every seq is
                        fields["seqs"] = split_seqs
                    if duplicate:  # accepted before: nothing stored again; say where the original stands
                        fields["state"] = self._position.describe(seq)["state"]
                        fields["duplicate"] = True
                    answer = json.dumps(fields).encode()
                if replies is None and settle(seq, False):
                    reply(pa.py_buffer(answer))
                    continue
                if replies is None:
                    replies = _Replies(settle, reply)
                replies.add(seq, answer)
            if replies is not None:
                replies.finish()
            elif last:
                settle(last, True)  # a stream without replies is still settled before it ends
        except QueueWriteError as exc:
            raise flight.FlightServerError(f"batch not accepted: {exc}") from None
        finally:
            if replies is not None:
                replies.stop()
        return seqs, rows

    def _schema_problem(self, schema: pa.Schema) -> str | None:
        """A schema over the limits (columns, nesting), which a producer cannot mean and which would cost
        the encoder dearly; None if within them."""
        columns, depth = _count_fields(schema)
        if columns > self._limits.max_columns:
            limit = self._limits.max_columns
            return f"the schema has {columns} fields (nested ones included); server.max_columns is {limit}"
        if depth > self._limits.max_nesting:
            return f"the schema nests {depth} levels deep; server.max_nesting is {self._limits.max_nesting}"
        return None

    def _make_durable(self, dataset: str, seqs: list[int]) -> dict[str, Any]:
        """Write out the dataset and wait until these seqs are resolved; what a durable reply says."""
        position = self._position
        if not self._queue.flush(dataset, None) and not position.wait(seqs, 0):
            raise flight.FlightUnavailableError(  # the queue closed: a stop whose deadline passed
                "server is shutting down: the batches were received and are being written; ack them once it is back"
            )
        result: dict[str, Any] = {"durable_through": position.durable_through, "files": position.files_of(seqs)}
        failed = [d for s in seqs if (d := position.describe(s))["state"] == "failed"]
        if failed:
            result["failed"] = failed
        return result

    # -- Flight SQL: bulk ingestion for ADBC clients, catalog answers (sql_door.py) --------------------
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

    # -- do_action -------------------------------------------------------------------------------------
    def list_actions(self, context: flight.ServerCallContext) -> list[tuple[str, str]]:
        return [(name, description) for name, (description, _) in self._actions.items()]

    def do_action(self, context: flight.ServerCallContext, action: flight.Action) -> list[bytes]:
        entry = self._actions.get(action.type)
        if entry is None and action.type in flightsql.SQL_ACTIONS:
            raise NotImplementedError(
                f"Flight SQL action {action.type} is not supported: this server only ingests "
                "(adbc_ingest / CommandStatementIngest)"
            )
        if entry is None:
            raise flight.FlightServerError(f"unknown action {action.type!r}; known: {', '.join(self._actions)}")
        if action.body is not None and action.body.size > MAX_ACTION_BODY:
            raise flight.FlightServerError(
                f"{action.type}: action body of {action.body.size} bytes is over the limit of {MAX_ACTION_BODY}"
            )
        if action.type != "CloseSession":
            authorize(context, f"call action {action.type!r}", lambda who: action.type in who.actions)
        body = action.body.to_pybytes() if action.body is not None else b""
        try:
            result = entry[1](body)
        except ValueError as exc:
            raise flight.FlightServerError(f"{action.type}: {exc}") from None
        if result is None:  # CloseSession answers in protobuf, as Flight SQL clients expect
            return [flightsql.close_session_result()]
        return [json.dumps(result).encode()]

    def _ack(self, body: bytes) -> dict[str, Any]:
        request = _json_object(body, required=True)
        if "seqs" in request:
            seqs = request["seqs"]
            if not isinstance(seqs, list) or not all(_is_int(s) for s in seqs):
                raise ValueError('"seqs" must be a list of integers')
        elif "seq" in request:
            if not _is_int(request["seq"]):
                raise ValueError('"seq" must be an integer')
            seqs = [request["seq"]]
        else:
            raise ValueError('body needs "seqs": [<int>, ...] or "seq": <int>')
        if len(seqs) > MAX_ACK_SEQS:
            raise ValueError(f'"seqs" lists {len(seqs)} seqs; one ack takes at most {MAX_ACK_SEQS}')
        wait_ms = request.get("wait_ms", 0)
        if not _is_int(wait_ms) or not 0 <= wait_ms <= MAX_WAIT_MS:
            raise ValueError(f'"wait_ms" must be an integer from 0 to {MAX_WAIT_MS}')
        last = self._queue.last_seq
        position = self._position
        if wait_ms:
            position.wait([s for s in seqs if 1 <= s <= last], wait_ms / 1000)
        return {"acks": [position.describe(s, last) for s in seqs], "durable_through": position.durable_through}

    def _flush(self, body: bytes) -> dict[str, Any]:
        request = _json_object(body, required=False)
        dataset = request.get("dataset")
        if dataset is not None:
            if not isinstance(dataset, str):
                raise ValueError('"dataset" must be a string')
            dataset = dataset_from_path(dataset.split("/"))
        if not self._queue.flush(dataset, None):
            raise flight.FlightUnavailableError("server is shutting down: flush again once it is back")
        return {"durable_through": self._position.durable_through}


def _count_fields(schema: pa.Schema) -> tuple[int, int]:
    """(fields, nested ones included; deepest nesting, 1 for a flat schema)."""
    fields, deepest = 0, 0
    todo = [(f.type, 1) for f in schema]
    while todo:
        kind, depth = todo.pop()
        fields += 1
        deepest = max(deepest, depth)
        todo.extend((kind.field(i).type, depth + 1) for i in range(kind.num_fields))
    return fields, deepest


def _answer_taken(replies: _Replies | None) -> None:
    """Before a stream ends with an error: send the replies of the batches it took."""
    if replies is not None:
        with contextlib.suppress(QueueWriteError):
            replies.finish()


def _piece_id(client_id: str | None, k: int) -> str | None:
    """The id of a batch's k-th partition piece: a re-sent batch splits the same way, so each piece is
    recognised again."""
    return client_id if client_id is None or k == 0 else f"{client_id}#{k}"


def _client_id(metadata: pa.Buffer) -> str | None:
    try:
        value = json.loads(metadata.to_pybytes())
    except (ValueError, UnicodeDecodeError):
        return None
    if isinstance(value, dict) and isinstance(value.get("id"), str):
        return value["id"]
    return None


def _json_object(body: bytes, required: bool) -> dict[str, Any]:
    if not body.strip():
        if required:
            raise ValueError("body must be a JSON object")
        return {}
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError(f"body must be a JSON object, got {type(value).__name__}")
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
