"""The one ingest path of both front doors (the path door in server.py, Flight SQL's in flightsql/door.py).

A stream is admitted to its dataset once (admission.py: rule, schema mode, nesting names; the schema within
``server.max_columns``/``max_nesting`` and storable in Parquet), then each batch is checked against the
per-batch limits, conformed to the dataset (declared columns, safe casts, partition split), put in the
queue, and answered with a PutResult once the queue says it is settled. Errors a client can cause are
``FlightServerError`` naming the problem; a full or closing queue is ``FlightUnavailableError``; either way
the batches before the bad one are answered first.
"""

from __future__ import annotations

import contextlib
import json
from concurrent.futures import Future
from concurrent.futures import wait as wait_futures
from typing import Any, NoReturn

import pyarrow as pa
import pyarrow.flight as flight
import pyarrow.parquet as pq

from flight_writer.config import ServerSettings
from flight_writer.ingest.admission import Admission, AdmissionError, Admitted
from flight_writer.ingest.refusals import Refusals
from flight_writer.ingest.replies import Replies
from flight_writer.lake.layout import LayoutError
from flight_writer.lake.schemas import SchemaError, readers_problem
from flight_writer.queue import Accepted, Ingest, QueueClosed, QueueFull, QueueWriteError

# a PutResult's body for a batch without an id in one partition (the common case: one bytes format)
PLAIN_REPLY = b'{"seq": %d, "rows": %d, "state": "%s"}'
MAX_ID_CHARS = 256  # a batch id's length: ids are kept (queue.dedupe_window of them), so each is bounded


class Ingestor:
    """Streams into the queue: ``ingest`` a stream, ``make_durable`` what it sent. ``limits`` and
    ``put_timeout`` may be replaced while running (a live reload); a stream keeps what it read."""

    def __init__(
        self,
        queue: Ingest,
        admission: Admission,
        limits: ServerSettings,
        put_timeout: float,
        refusals: Refusals | None = None,
    ) -> None:
        self.refusals = refusals or Refusals()  # refused streams by reason (the server's)
        self._queue = queue
        self._position = queue.position
        self._admission = admission
        self.limits = limits
        self.put_timeout = put_timeout

    def ingest(
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

        Each batch goes through four steps (:class:`_Stream`): ``check`` (the per-batch limits), ``conform``
        (to the dataset: declared columns, safe casts, partition split), ``put`` (into the queue, as pieces
        where it must) and ``answer``. A reply goes out only once its batch is ``logged`` (fsynced, for a WAL
        that says so), but the stream does not wait for that: it reads on while earlier batches are
        fsynced, so one producer's batches share fsyncs, and a thread of the stream (``Replies``) sends the
        replies in seq order as each batch is logged."""
        try:
            admitted = self._admission.admit(
                dataset,
                reader.schema,
                lambda schema, stored: self._over_limits(schema) or parquet_problem(stored) or readers_problem(schema),
                fresh,
            )
        except AdmissionError as exc:
            self.refusals.count("limits" if "server.max_" in str(exc) else "schema", f"dataset {dataset!r}: {exc}")
            raise flight.FlightServerError(str(exc)) from None
        stream = _Stream(self, dataset, reader.schema, admitted, writer, keep_seqs)
        try:
            for chunk in reader:
                batch = chunk.data
                if batch is None:  # a metadata-only message carries no rows
                    continue
                meta = chunk.app_metadata
                nbytes = stream.check(batch, meta)
                batch, pieces = stream.conform(batch, nbytes)
                client_id = _client_id(meta) if meta is not None and meta.size else None
                if client_id is not None and (len(client_id) > MAX_ID_CHARS or _surrogate(client_id) is not None):
                    stream.refuse_id(client_id)
                stream.answer(batch, client_id, *stream.put(batch, pieces, client_id))
            stream.finish()
        except QueueWriteError as exc:
            raise flight.FlightServerError(f"batch not accepted: {exc}") from None
        except (QueueFull, QueueClosed) as exc:  # a packed batch's record was not kept (from its reply)
            stream.refused(exc)
        finally:
            stream.stop()
        return stream.seqs, stream.rows

    def _over_limits(self, schema: pa.Schema) -> str | None:
        """A schema over the limits (columns, nesting), which a producer cannot mean and which would cost
        the encoder dearly; None if within them."""
        columns, depth = _count_fields(schema)
        if columns > self.limits.max_columns:
            limit = self.limits.max_columns
            return f"the schema has {columns} fields (nested ones included); server.max_columns is {limit}"
        if depth > self.limits.max_nesting:
            return f"the schema nests {depth} levels deep; server.max_nesting is {self.limits.max_nesting}"
        return None

    def flush(self, dataset: str) -> bool:
        """Write out what was put to ``dataset`` and wait for it (False if the queue closed first)."""
        return self._queue.flush(dataset, None)

    def make_durable(self, dataset: str, seqs: list[int], until: str = "durable") -> dict[str, Any]:
        """Write out the dataset and wait until these seqs are resolved (``until = "committed"``: and in
        their table); what a durable (committed) reply says."""
        position = self._position
        if not self._queue.flush(dataset, None) and not position.wait(seqs, 0):
            raise flight.FlightUnavailableError(  # the queue closed: a stop whose deadline passed
                "server is shutting down: the batches were received and are being written; ack them once it is back"
            )
        if until == "committed" and not position.wait_committed(seqs, None):
            raise flight.FlightUnavailableError(
                "server is shutting down: the batches are durable, their table commit is not confirmed yet; "
                "ack them once it is back"
            )
        result: dict[str, Any] = {
            "durable_through": position.durable_through,
            "committed_through": position.committed_through,
            "files": position.files_of(seqs),
        }
        failed = [d for s in seqs if (d := position.describe(s))["state"] == "failed"]
        if failed:
            result["failed"] = failed
        return result


class _Stream:
    """One stream's way through the ingest path: its admission (followed when another stream widens the
    dataset's schema), its replies, and what it took. Each step is a method; the loop is ``Ingestor.ingest``."""

    __slots__ = (
        "_admission",
        "_admitted",
        "_conform",
        "_dataset",
        "_keep_seqs",
        "_last",
        "_max_batch",
        "_max_message",
        "_max_metadata",
        "_packed",
        "_packs",
        "_position",
        "_put",
        "_put_many",
        "_put_packed",
        "_refusals",
        "_replies",
        "_reply",
        "_schema",
        "_schema_key",
        "_settle",
        "_split",
        "_state",
        "_timeout",
        "_versions",
        "rows",
        "seqs",
    )

    def __init__(
        self,
        ingestor: Ingestor,
        dataset: str,
        schema: pa.Schema,
        admitted: Admitted,
        writer: flight.FlightMetadataWriter | None,
        keep_seqs: bool,
    ) -> None:
        queue, limits = ingestor._queue, ingestor.limits
        self._dataset, self._schema, self._admission = dataset, schema, ingestor._admission
        self._refusals = ingestor.refusals
        self._follow(admitted)
        self._versions = self._admission.versions  # evolve: the dataset's schema changed since the stream began?
        self._max_metadata, self._max_batch = limits.max_metadata_bytes, limits.max_batch_bytes
        self._max_message = queue.max_message_bytes  # None, or batches over it go as pieces (NATS)
        self._put, self._put_many, self._settle = queue.put, queue.put_many, queue.settle
        # batches without an id may share a queue record when their replies can wait for it (NATS)
        self._packs, self._put_packed = queue.packs and writer is not None and not keep_seqs, queue.put_packed
        self._packed: tuple[bytes, Future[Accepted]] | None = None  # the last packed put: (schema key, receipt)
        self._timeout, self._position = ingestor.put_timeout, ingestor._position
        self._reply = writer.write if writer is not None else None
        self._state = queue.ack_state.encode()
        self._replies: Replies | None = None  # started at the first batch not settled at once
        self._keep_seqs = keep_seqs
        self.seqs: list[int] = []
        self.rows = 0
        self._last = 0  # without replies: the newest seq, to wait for before the stream ends

    def _follow(self, admitted: Admitted) -> None:
        self._admitted = admitted
        self._conform, self._split = admitted.conform, admitted.split
        self._schema_key = admitted.schema.serialize().to_pybytes()

    def _refuse(self, problem: str, reason: str = "schema") -> NoReturn:
        """End the stream with ``problem``, after answering the batches it took (counted by ``reason``)."""
        _answer_taken(self._replies)
        self._refusals.count(reason, f"dataset {self._dataset!r}: {problem}")
        raise flight.FlightServerError(problem)

    def refuse_id(self, client_id: str) -> NoReturn:
        if (at := _surrogate(client_id)) is not None:  # JSON's "\ud800" escapes: no UTF-8 holds it
            self._refuse(
                f"the batch id holds a lone surrogate (U+{ord(client_id[at]):04X}) at character {at}: "
                "an id must be a valid Unicode string",
                "limits",
            )
        self._refuse(
            f"a batch id of {len(client_id)} characters is over the limit of {MAX_ID_CHARS}: the server keeps "
            "the last queue.dedupe_window ids, so their length is bounded (use a UUID or a counter)",
            "limits",
        )

    # -- the steps ----------------------------------------------------------------------------------
    def check(self, batch: pa.RecordBatch, meta: pa.Buffer | None) -> int:
        """The per-batch limits; the batch's Arrow bytes."""
        if meta is not None and meta.size > self._max_metadata:
            self._refuse(
                f"app_metadata of {meta.size} bytes is over server.max_metadata_bytes ({self._max_metadata})", "limits"
            )
        nbytes: int = batch.get_total_buffer_size()  # .nbytes: 18 us per batch
        if nbytes > self._max_batch:
            self._refuse(
                f"a record batch of {nbytes} Arrow bytes ({batch.num_rows} rows) is over "
                f"server.max_batch_bytes ({self._max_batch}): send smaller batches",
                "limits",
            )
        return nbytes

    def conform(self, batch: pa.RecordBatch, nbytes: int) -> tuple[pa.RecordBatch, list[pa.RecordBatch] | None]:
        """The batch as the dataset stores it, and its pieces (partitions; slices that fit the queue's
        messages), or None when it goes whole."""
        admitted = self._admitted
        if admitted.version is not None and self._versions.get(self._dataset) != admitted.version:
            # another stream widened the dataset's schema: this one's batches follow it from now on
            try:
                self._follow(self._admission.admit(self._dataset, self._schema, lambda schema, stored: None))
            except AdmissionError as exc:
                self._refuse(str(exc))
        conform, split, pieces = self._conform, self._split, None
        if conform is not None or split is not None:
            try:
                batch = conform.apply(batch) if conform is not None else batch
                pieces = split(batch) if split is not None else None
            except (LayoutError, SchemaError) as exc:
                self._refuse(str(exc))
            except (pa.ArrowException, KeyError, ValueError) as exc:  # not foreseen: said, not a traceback
                self._refuse(f"batch cannot be stored as dataset {self._dataset!r} says: {type(exc).__name__}: {exc}")
        max_message = self._max_message
        if max_message is not None and (pieces is not None or nbytes > max_message):
            pieces = _fitting(pieces or [batch], max_message)
        return batch, pieces

    def put(
        self, batch: pa.RecordBatch, pieces: list[pa.RecordBatch] | None, client_id: str | None
    ) -> tuple[int | Future[Accepted], bool, list[int] | None]:
        """Into the queue: ``(seq, duplicate, the pieces' seqs or None)``; a packed batch's seq is a future
        (its reply waits for it)."""
        try:
            packed = pieces is None and client_id is None and self._packs
            last = self._packed
            if last is not None and (not packed or last[0] != self._schema_key):
                # a put that does not follow in the same packs (an id, pieces, another schema) waits for the
                # last packed one to be kept: the stream's seqs never go down
                wait_futures([last[1]])
                if (failed := last[1].exception()) is not None:
                    raise failed
                last = self._packed = None
            if packed:
                after = None if last is None else last[1]
                receipt = self._put_packed(self._dataset, self._schema_key, batch, self._timeout, after)
                self._packed = (self._schema_key, receipt)
                self.rows += batch.num_rows
                return receipt, False, None
            if pieces is None or len(pieces) == 1:
                key = _queue_id(client_id, 0)
                seq, duplicate = self._put(self._dataset, self._schema_key, batch, self._timeout, key, wait=False)
                split_seqs = None
            else:  # a seq per partition, each piece with an id of its own, all taken or none
                ids = [_queue_id(client_id, k) for k in range(len(pieces))]
                accepted = self._put_many(self._dataset, self._schema_key, pieces, self._timeout, ids, wait=False)
                split_seqs = [a.seq for a in accepted]
                seq, duplicate = max(split_seqs), all(a.duplicate for a in accepted)
        except QueueWriteError:
            _answer_taken(self._replies)
            raise  # worded by the caller, with a failed fsync
        except (QueueFull, QueueClosed) as exc:
            _answer_taken(self._replies)
            self.refused(exc)
        if self._keep_seqs:
            self.seqs.extend(split_seqs or (seq,))
        self.rows += batch.num_rows
        return seq, duplicate, split_seqs

    def refused(self, exc: QueueFull | QueueClosed) -> NoReturn:
        """The queue did not take a batch: the stream ends, saying why (the batches before it were answered)."""
        if isinstance(exc, QueueFull):
            self._refusals.count("queue_full", f"dataset {self._dataset!r}: {exc}")
            raise flight.FlightUnavailableError(str(exc)) from None
        raise flight.FlightUnavailableError(
            "server is shutting down: the batches before this one were answered; send the rest again once it is back"
        ) from None

    def answer(
        self,
        batch: pa.RecordBatch,
        client_id: str | None,
        seq: int | Future[Accepted],
        duplicate: bool,
        split_seqs: list[int] | None,
    ) -> None:
        """The batch's PutResult, now if the queue settled it already, else from the stream's replies."""
        reply = self._reply
        if isinstance(seq, Future):  # packed: answered once its record is kept, when its seq is known
            if self._replies is None:
                self._replies = Replies(self._settle, reply)  # type: ignore[arg-type]
            rows, state = batch.num_rows, self._state
            self._replies.add(seq, lambda s: PLAIN_REPLY % (s, rows, state))
            return
        if reply is None:
            self._last = max(self._last, seq)  # a duplicate's seq can be older
            return
        if client_id is None and split_seqs is None:
            answer = PLAIN_REPLY % (seq, batch.num_rows, self._state)
        else:
            fields: dict[str, Any] = {"seq": seq, "rows": batch.num_rows, "state": self._state.decode()}
            if client_id is not None:
                fields["id"] = client_id
            if split_seqs is not None:  # in several partitions: durable once every seq is
                fields["seqs"] = split_seqs
            if duplicate:  # accepted before: nothing stored again; say where the original stands
                fields["state"] = self._position.describe(seq)["state"]
                fields["duplicate"] = True
            answer = json.dumps(fields).encode()
        replies = self._replies
        if replies is None:
            if self._settle(seq, False):
                reply(pa.py_buffer(answer))
                return
            replies = self._replies = Replies(self._settle, reply)
        replies.add(seq, answer)

    # -- the end ------------------------------------------------------------------------------------
    def finish(self) -> None:
        """Every reply sent; a stream without replies is still settled before it ends."""
        if self._replies is not None:
            self._replies.finish()
        elif self._last:
            self._settle(self._last, True)

    def stop(self) -> None:
        if self._replies is not None:
            self._replies.stop()


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


def _answer_taken(replies: Replies | None) -> None:
    """Before a stream ends with an error: send the replies of the batches it took."""
    if replies is not None:
        with contextlib.suppress(QueueWriteError, QueueFull, QueueClosed):
            replies.finish()


def _fitting(batches: list[pa.RecordBatch], limit: int) -> list[pa.RecordBatch]:
    """Each batch as row slices of at most ``limit`` Arrow bytes, halved until each fits (rows differ in
    size); a single row larger than that stays whole (the queue then says it is too large)."""
    out = []
    todo = list(reversed(batches))
    while todo:
        batch = todo.pop()
        # a slice's buffers are its parent's: nbytes (18 us) counts only its rows; checked on oversize only
        if batch.num_rows <= 1 or batch.nbytes <= limit:
            out.append(batch)
            continue
        half = batch.num_rows // 2
        todo.extend([batch.slice(half), batch.slice(0, half)])
    return out


def _queue_id(client_id: str | None, k: int) -> str | None:
    """The id the queue keeps a batch's k-th piece by (a partition, or a slice that fits a NATS message; a
    batch that goes whole is piece 0): a re-sent batch splits the same way, so each piece is recognised
    again. The producer's id with every "#" doubled, and "#k" after it for k >= 1: an odd run of "#" marks
    a piece, so no id a producer sends is ever another batch's piece ("a#1" was piece 1 of "a", and a batch
    sent with the id "a#1" was answered as its duplicate, never stored). An id without "#" is kept as sent."""
    if client_id is None:
        return None
    key = client_id.replace("#", "##") if "#" in client_id else client_id
    return key if k == 0 else f"{key}#{k}"


def _surrogate(client_id: str) -> int | None:
    """Where an id holds a lone surrogate (JSON lets ``"\\ud800"`` through; UTF-8 cannot hold it, so a
    queue could not keep the id), or None."""
    if client_id.isascii():
        return None
    try:
        client_id.encode()
    except UnicodeEncodeError as exc:
        return exc.start
    return None


def _client_id(metadata: pa.Buffer) -> str | None:
    try:
        value = json.loads(metadata.to_pybytes())
    except (ValueError, UnicodeDecodeError, RecursionError):  # not a batch id: the batch has none
        return None
    if isinstance(value, dict) and isinstance(value.get("id"), str):
        return value["id"]
    return None
