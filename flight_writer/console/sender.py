"""The sending session of ``flight-writer send``: batches streamed to one dataset with their ids, each kept
until its reply; a dropped connection is re-opened and every batch without a reply is sent again (the server
drops the ones it already has); for ``--durable``, the wait until every seq sent is stored. send.py is the
command around it: arguments, files, progress and summary."""

from __future__ import annotations

import collections
import contextlib
import json
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.flight as flight

from flight_writer.console.common import CALL_ERRORS, RETRYABLE, CommandError, Connection, one_line
from flight_writer.console.sources import Source
from flight_writer.ingest.server import ACK_HEADER

WINDOW_BATCHES = 16  # batches sent without a reply yet, kept for a re-send; the sender waits beyond this
MAX_ACK_SEQS = 10_000  # the server's limit per ack call
_END = object()  # the reply stream ended


class Sender:
    """Streams sources to one dataset. Every batch sent stays in ``_pending`` until its reply (PutResult)
    arrives; when the connection breaks, a new stream re-sends them all in order, with the same ids, so
    the server stores each batch once. Replies are read by a thread per stream, so that the producer
    sends on while earlier batches are acknowledged (at most ``WINDOW_BATCHES`` outstanding)."""

    def __init__(self, conn: Connection, dataset: str, retry_for: float, say: Callable[[str], None]) -> None:
        self.conn = conn
        self.dataset = dataset
        self.retry_for = retry_for
        self.say = say
        self.seqs: list[int] = []  # every seq the server gave: a batch split by partition has several
        self.batches = 0  # batches the server answered
        self.rows = 0
        self.nbytes = 0
        self.duplicates = 0
        self.reconnects = 0
        self._client: flight.FlightClient | None = None
        self._writer: flight.FlightStreamWriter | None = None
        self._pending: collections.deque[tuple[pa.RecordBatch, pa.Buffer]] = collections.deque()
        self._replies: queue.Queue[tuple[int, Any]] = queue.Queue()
        self._stream = 0  # replies of older (broken) streams are ignored
        self._lost_since: float | None = None
        self._durable = False
        self._lock = threading.Lock()  # the reply thread and the sending thread share _pending and counts
        self.read_bytes = 0  # of the source, as far as its batches were taken

    def send(self, source: Source, durable: bool, acked: Callable[[int, int], None]) -> None:
        """All of ``source``; returns once every batch has a reply. ``acked(rows, bytes)`` per reply.
        ``durable``: the stream asks for ``durable`` acks, so its end writes out the dataset's buffers."""
        self._durable, self._acked = durable, acked
        schema = source.schema
        try:
            self._start(schema)
        except CALL_ERRORS as exc:
            self._recover(schema, exc)
        for index, batch in enumerate(source.batches):
            meta = pa.py_buffer(json.dumps({"id": f"{source.ids}-{index}"}).encode())
            self.read_bytes = source.read_bytes() if source.read_bytes else 0
            with self._lock:
                self._pending.append((batch, meta))
            try:
                self._writer.write_with_metadata(batch, meta)  # type: ignore[union-attr]
            except CALL_ERRORS as exc:
                self._recover(schema, exc)  # re-sends this batch too
            while self._pending and (len(self._pending) > WINDOW_BATCHES or not self._replies.empty()):
                self._take_reply(schema)
        while True:
            try:
                self._writer.done_writing()  # type: ignore[union-attr]
            except CALL_ERRORS as exc:
                self._recover(schema, exc)
                continue
            if self._drain(schema):
                break
        writer, self._writer = self._writer, None
        try:
            writer.close()  # type: ignore[union-attr]
        except CALL_ERRORS as exc:
            if not isinstance(exc, RETRYABLE):  # every batch has its reply: a lost connection now costs nothing
                raise CommandError(f"{self.dataset}: {one_line(exc)}") from None

    def _start(self, schema: pa.Schema) -> None:
        """A new stream, and every batch still without a reply sent on it."""
        if self._client is None:
            self._client = self.conn.open()
        headers = [(ACK_HEADER.encode(), b"durable")] if self._durable else []
        descriptor = flight.FlightDescriptor.for_path(*self.dataset.split("/"))
        self._writer, reader = self._client.do_put(descriptor, schema, self.conn.options(headers=headers))
        with self._lock:
            self._stream += 1
            stream = self._stream
        threading.Thread(target=self._read_replies, args=(stream, reader), daemon=True).start()
        with self._lock:
            resend = list(self._pending)
        for batch, meta in resend:
            self._writer.write_with_metadata(batch, meta)

    def _read_replies(self, stream: int, reader: flight.FlightMetadataReader) -> None:
        """The replies of one stream, each counted here at once (a slow source must not hold the progress
        back); the sending thread hears of each (to wake it), of the end and of an error via ``_replies``."""
        try:
            while (buf := reader.read()) is not None:
                reply = json.loads(buf.to_pybytes())
                with self._lock:
                    if stream != self._stream:
                        return  # a stream given up on: its batches are being sent again
                    if "id" in reply:
                        batch, _ = self._pending.popleft()
                        self._lost_since = None  # progress: a later loss gets the whole --retry-for again
                        self.seqs.extend(reply.get("seqs") or (reply["seq"],))
                        self.batches += 1
                        self.duplicates += bool(reply.get("duplicate"))
                        self.rows += batch.num_rows
                        self.nbytes += batch.nbytes
                        self._acked(batch.num_rows, batch.nbytes)
                    elif reply.get("failed"):  # a durable stream's last reply
                        failed = reply["failed"]
                        raise CommandError(f"{self.dataset}: the server could not store some batches: {failed}")
                self._replies.put((stream, reply))
            self._replies.put((stream, _END))
        except Exception as exc:  # handed to the sending thread, which decides
            self._replies.put((stream, exc))

    def _next_reply(self) -> Any:
        while True:
            try:
                stream, item = self._replies.get(timeout=0.5)  # a timeout keeps Ctrl-C prompt
            except queue.Empty:
                continue
            if stream == self._stream:
                return item

    def _take_reply(self, schema: pa.Schema) -> bool:
        """Wait for news of the current stream; True when it has ended with every batch answered."""
        item = self._next_reply()
        if item is _END:
            if self._pending:  # the call ended early: closing it says why (a refusal), else start anew
                self._recover(schema, ConnectionError("the server ended the stream early"))
                return False
            return True
        if isinstance(item, CommandError):
            raise item
        if isinstance(item, BaseException):
            self._recover(schema, item)
        return False

    def _drain(self, schema: pa.Schema) -> bool:
        """Replies until the stream ends; False if it broke (and was started anew) on the way."""
        stream = self._stream
        while True:
            if self._take_reply(schema):
                return True
            if self._stream != stream:
                return False

    def _recover(self, schema: pa.Schema, exc: BaseException) -> None:
        """The stream broke: a retryable cause reconnects (until ``retry_for`` seconds pass without a reply)
        and re-sends what has no reply yet; any other cause is the command's error."""
        delay = 0.1
        while True:
            exc = self._cause(exc)
            message = one_line(exc)
            if not isinstance(exc, RETRYABLE):
                raise CommandError(f"{self.dataset}: {message}") from None
            now = time.monotonic()
            if self._lost_since is None:
                self._lost_since = now
                self.say(f"connection lost ({message}); reconnecting to re-send {len(self._pending)} batches")
            if now - self._lost_since > self.retry_for:
                raise CommandError(f"no answer from {self.conn.location} for {self.retry_for:g} s: {message}")
            time.sleep(delay)
            delay = min(2 * delay, 1.0)
            try:
                self._start(schema)
                self.reconnects += 1
                return
            except (*CALL_ERRORS, CommandError) as again:
                exc = again if not isinstance(again, CommandError) else flight.FlightUnavailableError(str(again))

    def _cause(self, exc: BaseException) -> BaseException:
        """Why the stream broke: a write after a failure only says "Destination already closed", while
        closing the stream gives the server's status. Drops the stream and, if unreachable, the client."""
        writer, self._writer = self._writer, None
        if writer is not None:
            try:
                writer.close()
            except CALL_ERRORS as closing:
                if not isinstance(exc, flight.FlightError) and isinstance(closing, flight.FlightError):
                    exc = closing
        if not isinstance(exc, flight.FlightError) and isinstance(exc, pa.ArrowException | OSError):
            exc = flight.FlightUnavailableError(str(exc))  # a broken pipe without a status
        if isinstance(exc, RETRYABLE):
            self.close()  # a new channel (and login) for the next stream
        return exc

    def close(self) -> None:
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()
            self._client = None

    def wait_durable(self, say: Callable[[str], None]) -> dict[str, Any]:
        """Ask ``ack`` (waiting on the server) until every seq sent is durable or failed. Returns this send's
        own: ``durable`` (how many of its seqs are), ``files`` (those that hold them, as far as the server still
        names them), ``unnamed`` (durable seqs without a file named: zero-row batches, or seqs older than the
        server's last ``server.ack_history``), ``failed`` (their acks); and ``durable_through``, the server's
        position over every client's seqs (not this send's own)."""
        todo = sorted(set(self.seqs))
        failed: list[dict[str, Any]] = []
        files: set[str] = set()
        durable = unnamed = 0
        through = 0
        started = time.monotonic()
        told = False
        while todo:
            chunk = todo[:MAX_ACK_SEQS]
            try:
                self._client = self._client or self.conn.open()
                reply = self.conn.action(self._client, "ack", {"seqs": chunk, "wait_ms": 5000}, timeout=30)
            except CALL_ERRORS as exc:
                exc = self._cause(exc)
                if not isinstance(exc, RETRYABLE) or time.monotonic() - started > self.retry_for:
                    raise CommandError(f"waiting for durability: {one_line(exc)}") from None
                time.sleep(0.5)
                continue
            through = reply["durable_through"]
            resolved = set()
            for ack in reply["acks"]:
                if ack["state"] == "failed":
                    failed.append(ack)
                elif ack["state"] == "unknown":
                    raise CommandError(f"seq {ack['seq']} is unknown to the server (lost in a restart without WAL?)")
                elif ack["state"] != "durable" and ack["seq"] > through:
                    continue
                resolved.add(ack["seq"])
                if ack["state"] != "failed":
                    durable += 1
                    if ack.get("file"):
                        files.add(ack["file"])
                    else:
                        unnamed += 1
            todo = [s for s in todo if s not in resolved]
            started = time.monotonic()  # the server answers: wait as long as storage takes
            if todo and not told:
                say(f"waiting until {len(todo)} batches are stored...")
                told = True
        return {
            "durable": durable,
            "files": sorted(files),
            "unnamed": unnamed,
            "failed": failed,
            "durable_through": through,
        }
