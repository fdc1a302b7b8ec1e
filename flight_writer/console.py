"""Commands for people at a terminal, drawn with rich:

- ``flight-writer status``: the server's ``status`` action as a table (``--json``: as JSON, for scripts);
- ``flight-writer top``: a live view of ``status`` polled every ``--interval`` seconds, with rates derived
  from the counters between two polls (``q`` or Ctrl-C quits; ``--once`` prints one frame);
- ``flight-writer send``: Parquet, Arrow IPC, CSV or JSON-lines files (or stdin) streamed to a dataset in
  batches with idempotent ids; a dropped connection is re-opened and every batch without a reply is sent
  again (the server drops the ones it already has); ``--durable`` returns once all of it is in Parquet.

All three connect alike: ``--location``, ``--tls-ca``, a bearer secret (``--token`` or
``FLIGHT_WRITER_TOKEN``) or a Basic login (``FLIGHT_WRITER_USER`` and ``FLIGHT_WRITER_PASSWORD``).
Expected failures (no server, a refused call, a file that cannot be read) end in one line and exit 1."""

from __future__ import annotations

import argparse
import collections
import contextlib
import hashlib
import json
import os
import queue
import select
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.flight as flight
from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from flight_writer.seqs import seq_ranges
from flight_writer.server import ACK_HEADER

DEFAULT_LOCATION = "grpc://127.0.0.1:8815"
ACTION_TIMEOUT = 10.0  # seconds for one status/ack call (an ack that waits asks for less than this)
FORMATS = {".parquet": "parquet", ".pq": "parquet", ".arrow": "arrow", ".arrows": "arrow", ".ipc": "arrow",
           ".feather": "arrow", ".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}  # fmt: skip
WINDOW_BATCHES = 16  # batches sent without a reply yet, kept for a re-send; the sender waits beyond this
MAX_ACK_SEQS = 10_000  # the server's limit per ack call


class CommandError(Exception):
    """An expected failure, told in one line."""


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add this module's subcommands; each sets ``run`` (a function of the parsed args returning the exit code)."""
    status = sub.add_parser("status", help="the server's status as a table (--json for scripts)")
    _connection_arguments(status)
    status.add_argument("--json", action="store_true", help="print the status action's JSON as it came")
    status.set_defaults(run=_guarded(run_status))

    top = sub.add_parser("top", help="a live view of throughput, durability lag, pending data and errors")
    _connection_arguments(top)
    top.add_argument("--interval", type=float, default=1.0, help="seconds between polls (default 1)")
    top.add_argument("--once", action="store_true", help="poll twice, --interval apart, print one view and exit")
    top.set_defaults(run=_guarded(run_top))

    send = sub.add_parser("send", help="stream Parquet, Arrow IPC, CSV or JSON-lines files (or stdin) to a dataset")
    _connection_arguments(send)
    send.add_argument("dataset", help="the dataset, e.g. demo/spans")
    send.add_argument("files", nargs="+", metavar="FILE", help="files to send; - reads stdin (needs --format)")
    send.add_argument("--format", choices=sorted(set(FORMATS.values())), help="default: from the file's extension")
    send.add_argument("--batch-rows", type=int, default=65_536, help="rows per batch sent (default 65536)")
    send.add_argument("--durable", action="store_true", help="return only once everything sent is in Parquet")
    send.add_argument("--retry-for", type=float, default=60.0, help="seconds to keep reconnecting (default 60)")
    send.add_argument("--source-id", help="identity of the data for its batch ids (default: path, size, mtime)")
    send.set_defaults(run=_guarded(run_send))


def _connection_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--location", default=os.environ.get("FLIGHT_WRITER_URL", DEFAULT_LOCATION))
    parser.add_argument("--tls-ca", help="PEM file of the CA that signed a grpc+tls:// server's certificate")
    parser.add_argument(
        "--token",
        default=os.environ.get("FLIGHT_WRITER_TOKEN"),
        help="bearer secret (default: $FLIGHT_WRITER_TOKEN; the environment keeps it out of `ps`). "
        "A Basic login: $FLIGHT_WRITER_USER and $FLIGHT_WRITER_PASSWORD",
    )


def _guarded(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except CommandError as exc:
            print(f"flight-writer: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("flight-writer: interrupted", file=sys.stderr)
            return 130

    return run


def one_line(exc: BaseException) -> str:
    """A Flight error's message without gRPC's prefix and debug context."""
    text = str(exc).strip()
    _, found, rest = text.partition("error, with message: ")
    if found and text.startswith("Flight returned"):
        text = rest
    text = text.split(". gRPC client debug context")[0].split(". Detail:")[0]
    return (text.splitlines() or [type(exc).__name__])[0]


# -- connecting --------------------------------------------------------------------------------------------
class Connection:
    """How to reach the server: location, TLS and credentials, turned into a client and call options."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.location: str = args.location
        self._tls_ca: bytes | None = None
        if args.tls_ca:
            try:
                with open(args.tls_ca, "rb") as ca:
                    self._tls_ca = ca.read()
            except OSError as exc:
                raise CommandError(f"cannot read --tls-ca {args.tls_ca}: {exc.strerror}") from None
        self._token: str | None = args.token
        self._user = os.environ.get("FLIGHT_WRITER_USER")
        self._password = os.environ.get("FLIGHT_WRITER_PASSWORD", "")
        self._headers: list[tuple[bytes, bytes]] = []

    def open(self) -> flight.FlightClient:
        """A client, logged in if a user is set (a Basic handshake gives a session token)."""
        try:
            client = flight.connect(self.location, **({"tls_root_certs": self._tls_ca} if self._tls_ca else {}))
        except (flight.FlightError, pa.ArrowException) as exc:
            raise CommandError(f"cannot connect to {self.location}: {one_line(exc)}") from None
        if self._user:
            options = flight.FlightCallOptions(timeout=ACTION_TIMEOUT)
            self._headers = [client.authenticate_basic_token(self._user, self._password, options)]
        elif self._token:
            self._headers = [(b"authorization", f"Bearer {self._token}".encode())]
        return client

    def options(self, timeout: float | None = None, headers: list[tuple[bytes, bytes]] | None = None):
        return flight.FlightCallOptions(timeout=timeout, headers=self._headers + (headers or []))

    def action(self, client: flight.FlightClient, name: str, body: Any = None, timeout: float = ACTION_TIMEOUT):
        raw = json.dumps(body).encode() if body is not None else b""
        [result] = client.do_action(flight.Action(name, raw), self.options(timeout))
        return json.loads(result.body.to_pybytes())


def fetch_status(conn: Connection, client: flight.FlightClient | None = None) -> dict[str, Any]:
    try:
        own = client is None
        client = client or conn.open()
        try:
            return conn.action(client, "status")
        finally:
            if own:
                client.close()
    except (flight.FlightError, pa.ArrowException, OSError) as exc:
        if isinstance(exc, flight.FlightError) and not isinstance(exc, RETRYABLE):  # it answered: no
            raise CommandError(f"{conn.location}: {one_line(exc)}") from None
        raise CommandError(f"no answer from {conn.location}: {one_line(exc)}") from None


# -- status ------------------------------------------------------------------------------------------------
def run_status(args: argparse.Namespace) -> int:
    status = fetch_status(Connection(args))
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    Console().print(status_table(status, args.location))
    return 0


def size(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    raise AssertionError


def count(n: Any) -> str:
    return f"{n:,}" if isinstance(n, int) else "-" if n is None else str(n)


def seconds(s: float | None) -> str:
    if s is None:
        return "-"
    s = float(s)
    if s < 120:
        return f"{s:.1f} s"
    minutes, secs = divmod(int(s), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    return f"{days}d {hours}h {minutes}m" if days else f"{hours}h {minutes}m {secs}s"


# status fields shown in sections, with how to show each; the rest go under "other"
SECTIONS: list[tuple[str, list[tuple[str, str, Callable[[Any], str]]]]] = [
    ("server", [("version", "version", str), ("uptime_s", "uptime", seconds), ("queue", "queue", str),
                ("active_streams", "active streams", count)]),
    ("received", [("received_seq", "received seq", count), ("received_batches", "batches", count),
                  ("received_rows", "rows", count), ("received_bytes", "Arrow bytes", size)]),
    ("durability", [("durable_through", "durable through seq", count),
                    ("pending_batches", "pending batches", count), ("pending_bytes", "pending bytes", size),
                    ("queue_max_bytes", "queue bound", size), ("oldest_pending_seq", "oldest pending seq", count),
                    ("open_buffers", "open buffers", count)]),
    ("written", [("files_written", "files", count), ("rows_written", "rows", count),
                 ("bytes_written", "Parquet bytes", size)]),
    ("errors", [("batches_failed", "batches failed", count), ("retries", "storage retries", count),
                ("error_for_s", "current error for", seconds)]),
]  # fmt: skip


def status_table(status: dict[str, Any], location: str) -> Table:
    title = f"flight-writer {status.get('version', '?')} at {location}"
    table = Table(title=title, show_header=False, box=box.SIMPLE_HEAD, title_justify="left")
    table.add_column("section", style="dim")
    table.add_column("field", style="bold")
    table.add_column("value")
    shown = {"last_error", "storage"}
    for section, fields in SECTIONS:
        for i, (key, label, fmt) in enumerate(fields):
            shown.add(key)
            if key in status:
                table.add_row(section if i == 0 else "", label, fmt(status[key]))
        if section == "durability":
            table.add_row("", "lag (seqs)", count(_lag(status)))
        if section == "server" and isinstance(status.get("storage"), dict):
            storage = status["storage"]
            table.add_row("", "storage", f"{storage.get('service', '?')}: {storage.get('root', '')}")
        if section == "errors":
            error = status.get("last_error")
            table.add_row("", "last error", Text(error, style="red") if error else Text("none", style="green"))
        table.add_section()
    first = True
    for key, value in status.items():
        if key not in shown and not isinstance(value, dict | list):
            table.add_row("other" if first else "", key, count(value) if isinstance(value, int) else str(value))
            first = False
    return table


def _lag(status: dict[str, Any]) -> int | None:
    received, durable = status.get("received_seq"), status.get("durable_through")
    return received - durable if isinstance(received, int) and isinstance(durable, int) else None


# -- top ---------------------------------------------------------------------------------------------------
RATES = [
    ("received_batches", "batches in"),
    ("received_rows", "rows in"),
    ("received_bytes", "Arrow bytes in"),
    ("files_written", "files out"),
    ("rows_written", "rows out"),
    ("bytes_written", "Parquet bytes out"),
]


@dataclass
class TopState:
    """The last two answers of ``status`` (rates come from their difference), or why there is none."""

    location: str
    interval: float
    current: dict[str, Any] | None = None
    previous: dict[str, Any] | None = None
    error: str | None = None
    error_since: float | None = None
    polls: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def update(self, status: dict[str, Any]) -> None:
        self.previous, self.current, self.error, self.error_since = self.current, status, None, None
        self.polls += 1

    def failed(self, message: str) -> None:
        self.error = message
        self.error_since = self.error_since or time.time()

    def rate(self, key: str) -> float | None:
        now, before = self.current, self.previous
        if not now or not before or key not in now or key not in before:
            return None
        elapsed = now.get("uptime_s", 0) - before.get("uptime_s", 0)
        delta = now[key] - before[key]
        if elapsed <= 0 or delta < 0:  # the server restarted between the polls
            return None
        return delta / elapsed


def top_view(state: TopState) -> Group:
    s = state.current or {}
    header = Text()
    header.append("flight-writer top", style="bold")
    header.append(f"  {state.location}  version {s.get('version', '?')}  up {seconds(s.get('uptime_s'))}")
    if state.error:
        since = time.strftime("%H:%M:%S", time.localtime(state.error_since))
        header.append(f"\nno answer since {since}: {state.error}", style="bold red")
    throughput = Table(title="throughput", title_justify="left", box=box.SIMPLE_HEAD)
    throughput.add_column("counter")
    throughput.add_column("per second", justify="right")
    throughput.add_column("total", justify="right")
    for key, label in RATES:
        rate, total = state.rate(key), s.get(key)
        if "bytes" not in key:
            throughput.add_row(label, "-" if rate is None else f"{rate:,.1f}", count(total))
        else:
            throughput.add_row(label, "-" if rate is None else f"{size(rate)}/s", size(total))
    health = Table(title="durability", title_justify="left", box=box.SIMPLE_HEAD, show_header=False)
    health.add_column("field")
    health.add_column("value", justify="right")
    lag = _lag(s)
    health.add_row("lag (received - durable seq)", Text(count(lag), style="yellow" if lag else "green"))
    health.add_row("received seq", count(s.get("received_seq")))
    health.add_row("durable through", count(s.get("durable_through")))
    bound = s.get("queue_max_bytes")
    pending = s.get("pending_bytes")
    share = f" ({100 * pending / bound:.0f}% of {size(bound)})" if bound and isinstance(pending, int) else ""
    health.add_row("pending bytes", size(pending) + share)
    health.add_row("pending batches", count(s.get("pending_batches")))
    health.add_row("active streams", count(s.get("active_streams")))
    health.add_row("open buffers", count(s.get("open_buffers")))
    health.add_row("batches failed", count(s.get("batches_failed")))
    health.add_row("storage retries", count(s.get("retries")))
    error = s.get("last_error")
    errors = Text("last error: ", style="bold")
    if error:
        errors.append(f"{error} (for {seconds(s.get('error_for_s'))})", style="red")
    else:
        errors.append("none", style="green")
    parts: list[Any] = [header, throughput, health, errors]
    if isinstance(s.get("datasets"), dict) and s["datasets"]:  # when the server reports per dataset
        parts.append(_datasets_table(s["datasets"]))
    footer = Text(f"polling status every {state.interval:g} s; q or Ctrl-C quits", style="dim")
    return Group(*parts, footer)


def _datasets_table(datasets: dict[str, Any]) -> Table:
    keys = list(dict.fromkeys(k for v in datasets.values() if isinstance(v, dict) for k in v))
    table = Table(title="datasets", title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("dataset")
    for key in keys:
        table.add_column(key.replace("_", " "), justify="right")
    for name, values in sorted(datasets.items()):
        values = values if isinstance(values, dict) else {}
        table.add_row(name, *[size(values.get(k)) if "bytes" in k else count(values.get(k)) for k in keys])
    return table


def run_top(args: argparse.Namespace) -> int:
    if args.interval <= 0:
        raise CommandError("--interval must be more than 0 seconds")
    conn = Connection(args)
    state = TopState(args.location, args.interval)
    client = conn.open()
    state.update(fetch_status(conn, client))  # a server that does not answer at all: one line, exit 1
    console = Console()
    if args.once:
        time.sleep(args.interval)
        state.update(fetch_status(conn, client))
        console.print(top_view(state))
        return 0
    with _keys() as pressed, Live(top_view(state), console=console, screen=True, auto_refresh=False) as live:
        try:
            next_poll = time.monotonic() + args.interval
            while True:
                if pressed(max(0.0, next_poll - time.monotonic())) in ("q", "Q"):
                    return 0
                if time.monotonic() < next_poll:
                    continue
                next_poll = time.monotonic() + args.interval
                try:
                    client = client or conn.open()
                    state.update(conn.action(client, "status", timeout=max(args.interval, 2.0)))
                except (flight.FlightError, pa.ArrowException, OSError, CommandError) as exc:
                    state.failed(one_line(exc))
                    with contextlib.suppress(Exception):
                        client.close()  # type: ignore[union-attr]
                    client = None  # a new one (and a new login) once the server answers again
                live.update(top_view(state), refresh=True)
        except KeyboardInterrupt:
            return 0


@contextlib.contextmanager
def _keys() -> Iterator[Callable[[float], str | None]]:
    """``pressed(timeout)``: the key typed within ``timeout`` seconds, or None. The terminal is in cbreak
    mode meanwhile (keys arrive unbuffered, Ctrl-C still interrupts); without a terminal it only waits."""
    if not sys.stdin.isatty():
        yield lambda timeout: time.sleep(timeout)  # type: ignore[func-returns-value]
        return
    import termios
    import tty

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)

    def pressed(timeout: float) -> str | None:
        ready, _, _ = select.select([fd], [], [], timeout)
        return os.read(fd, 1).decode(errors="replace") if ready else None

    try:
        yield pressed
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


# -- send --------------------------------------------------------------------------------------------------
@dataclass
class Source:
    """One input, opened: its batches (``--batch-rows`` each, the last one shorter) and how far it is read."""

    name: str
    schema: pa.Schema
    batches: Iterator[pa.RecordBatch]
    ids: str  # the batch ids' prefix: the same file, dataset and batching give the same ids
    total: int | None  # progress total: rows (parquet, Arrow IPC file), else input bytes; None for stdin
    read_bytes: Callable[[], int] | None  # input bytes read so far, when total counts bytes
    close: Callable[[], None]


def format_of(path: str, given: str | None) -> str:
    if given:
        return given
    if path == "-":
        raise CommandError("reading stdin (-) needs --format")
    ext = os.path.splitext(path)[1].lower()
    if ext not in FORMATS:
        raise CommandError(f"cannot tell the format of {path} from its extension; say --format parquet|arrow|csv|jsonl")
    return FORMATS[ext]


def open_source(path: str, fmt: str, dataset: str, batch_rows: int, source_id: str | None) -> Source:
    import pyarrow.csv as pa_csv
    import pyarrow.json as pa_json
    import pyarrow.parquet as pq

    stdin = path == "-"
    name = "stdin" if stdin else os.path.basename(path)  # the bar keeps its room
    if source_id:
        identity = f"{source_id}\0{path}"
    elif stdin:
        identity = f"stdin\0{uuid.uuid4().hex}"  # nothing to recognise it by again; --source-id gives one
    else:
        st = os.stat(path)
        identity = f"{os.path.realpath(path)}\0{st.st_size}\0{st.st_mtime_ns}"
    digest = hashlib.sha256(f"{dataset}\0{fmt}\0{batch_rows}\0{identity}".encode()).hexdigest()[:24]
    ids = f"send-{digest}"
    total: int | None = None
    read_bytes: Callable[[], int] | None = None
    closers: list[Callable[[], None]] = []

    def input_file() -> Any:
        nonlocal total, read_bytes
        if stdin:
            return sys.stdin.buffer
        f = pa.OSFile(path)
        closers.append(f.close)
        total, read_bytes = f.size(), f.tell
        return f

    if fmt == "parquet":
        # Parquet is read from its footer first: stdin is buffered in memory, a file is read by row group.
        # pre_buffer (the default) would cache every row group's compressed bytes until the end: with it a
        # 197 MB file kept 187 MiB allocated through the whole send
        pf = pq.ParquetFile(pa.BufferReader(sys.stdin.buffer.read()) if stdin else path, pre_buffer=False)
        closers.append(pf.close)
        schema, batches, total = pf.schema_arrow, pf.iter_batches(batch_size=batch_rows), pf.metadata.num_rows
    elif fmt == "arrow":
        if not stdin and _is_ipc_file(path):  # the random-access format: batches from a memory map
            source = pa.memory_map(path)
            closers.append(source.close)
            reader = pa.ipc.open_file(source)
            schema = reader.schema
            batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
            total = sum(reader.get_batch(i).num_rows for i in range(reader.num_record_batches))
        else:
            stream = pa.ipc.open_stream(input_file())
            schema, batches = stream.schema, iter(stream)
    elif fmt == "csv":
        csv_reader = pa_csv.open_csv(input_file())
        schema, batches = csv_reader.schema, iter(csv_reader)
    else:
        json_reader = pa_json.open_json(input_file())
        schema, batches = json_reader.schema, iter(json_reader)

    def close() -> None:
        for c in reversed(closers):
            with contextlib.suppress(Exception):
                c()

    return Source(name, schema, _rechunk(batches, batch_rows), ids, total, read_bytes, close)


def _is_ipc_file(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(6) == b"ARROW1"


def _rechunk(batches: Iterator[pa.RecordBatch], rows: int) -> Iterator[pa.RecordBatch]:
    """Batches of exactly ``rows`` rows (the last may be shorter), so that batch boundaries, and with them
    the ids, depend on the data and ``--batch-rows`` only. Slices are zero-copy; only batches made of
    several pieces are concatenated. Yields as soon as a batch is complete (stdin is not read ahead)."""
    parts: list[pa.RecordBatch] = []
    have = 0
    for batch in batches:
        while batch.num_rows:
            take = min(rows - have, batch.num_rows)
            parts.append(batch.slice(0, take))
            batch = batch.slice(take)
            have += take
            if have == rows:
                yield parts[0] if len(parts) == 1 else pa.concat_batches(parts)
                parts, have = [], 0
    if have:
        yield parts[0] if len(parts) == 1 else pa.concat_batches(parts)


RETRYABLE = (flight.FlightUnavailableError, flight.FlightTimedOutError, flight.FlightCancelledError)
STREAM_ERRORS = (flight.FlightError, pa.ArrowException, OSError)
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
        self.seqs: list[int] = []
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
        except STREAM_ERRORS as exc:
            self._recover(schema, exc)
        for index, batch in enumerate(source.batches):
            meta = pa.py_buffer(json.dumps({"id": f"{source.ids}-{index}"}).encode())
            self.read_bytes = source.read_bytes() if source.read_bytes else 0
            with self._lock:
                self._pending.append((batch, meta))
            try:
                self._writer.write_with_metadata(batch, meta)  # type: ignore[union-attr]
            except STREAM_ERRORS as exc:
                self._recover(schema, exc)  # re-sends this batch too
            while self._pending and (len(self._pending) > WINDOW_BATCHES or not self._replies.empty()):
                self._take_reply(schema)
        while True:
            try:
                self._writer.done_writing()  # type: ignore[union-attr]
            except STREAM_ERRORS as exc:
                self._recover(schema, exc)
                continue
            if self._drain(schema):
                break
        writer, self._writer = self._writer, None
        try:
            writer.close()  # type: ignore[union-attr]
        except STREAM_ERRORS as exc:
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
                        self.seqs.append(reply["seq"])
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
            if self._pending:  # the server ended the call early without an error: start anew
                self._recover(schema, flight.FlightUnavailableError("the server ended the stream early"))
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
            except (*STREAM_ERRORS, CommandError) as again:
                exc = again if not isinstance(again, CommandError) else flight.FlightUnavailableError(str(again))

    def _cause(self, exc: BaseException) -> BaseException:
        """Why the stream broke: a write after a failure only says "Destination already closed", while
        closing the stream gives the server's status. Drops the stream and, if unreachable, the client."""
        writer, self._writer = self._writer, None
        if writer is not None:
            try:
                writer.close()
            except STREAM_ERRORS as closing:
                if not isinstance(exc, flight.FlightError) and isinstance(closing, flight.FlightError):
                    exc = closing
        if not isinstance(exc, flight.FlightError) and isinstance(exc, pa.ArrowException | OSError):
            exc = flight.FlightUnavailableError(str(exc))  # a broken pipe without a status
        if isinstance(exc, RETRYABLE) and self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()
            self._client = None  # a new channel (and login) for the next stream
        return exc

    def close(self) -> None:
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()
            self._client = None

    def wait_durable(self, say: Callable[[str], None]) -> dict[str, Any]:
        """Ask ``ack`` (waiting on the server) until every seq sent is durable or failed."""
        todo = sorted(set(self.seqs))
        failed: list[dict[str, Any]] = []
        files: set[str] = set()
        through = 0
        started = time.monotonic()
        told = False
        while todo:
            chunk = todo[:MAX_ACK_SEQS]
            try:
                self._client = self._client or self.conn.open()
                reply = self.conn.action(self._client, "ack", {"seqs": chunk, "wait_ms": 5000}, timeout=30)
            except STREAM_ERRORS as exc:
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
                if ack.get("file"):
                    files.add(ack["file"])
            todo = [s for s in todo if s not in resolved]
            started = time.monotonic()  # the server answers: wait as long as storage takes
            if todo and not told:
                say(f"waiting until {len(todo)} batches are stored...")
                told = True
        return {"durable_through": through, "files": sorted(files), "failed": failed}


def run_send(args: argparse.Namespace) -> int:
    if args.batch_rows < 1:
        raise CommandError("--batch-rows must be 1 or more")
    if args.files.count("-") > 1:
        raise CommandError("stdin (-) can be read once")
    formats = [format_of(path, args.format) for path in args.files]  # every file checked before any is sent
    for path in args.files:
        if path != "-" and not os.path.isfile(path):
            raise CommandError(f"no such file: {path}")
    dataset = args.dataset.strip("/")
    conn = Connection(args)
    err = Console(stderr=True)
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rows]:>12,} rows  {task.fields[sent]:>10}  {task.fields[rate]}"),
        TimeElapsedColumn(),
        console=err,
    )
    sender = Sender(conn, dataset, args.retry_for, lambda line: progress.console.print(line, style="yellow"))
    with progress:
        try:
            durable = _send_all(args, formats, dataset, sender, progress)
        finally:
            sender.close()
    summary = f"sent {sender.rows:,} rows ({size(sender.nbytes)} of Arrow) in {len(sender.seqs):,} batches to {dataset}"
    ranges = seq_ranges(sorted(set(sender.seqs)))
    summary += f": seqs {ranges if len(ranges) <= 60 else ranges[:57] + '...'}" if ranges else ""
    if sender.duplicates:
        summary += f"; {sender.duplicates:,} batches the server already had"
    if sender.reconnects:
        summary += f"; reconnected {sender.reconnects} times"
    if durable is not None:
        summary += f"; durable through seq {durable['durable_through']:,} in {len(durable['files'])} files"
    print(summary)
    if durable and durable["failed"]:
        for ack in durable["failed"]:
            print(f"flight-writer: seq {ack['seq']} failed: {ack.get('error')}", file=sys.stderr)
        return 1
    return 0


def _send_all(
    args: argparse.Namespace, formats: list[str], dataset: str, sender: Sender, progress: Progress
) -> dict[str, Any] | None:
    """Each file in turn, a progress bar each; then, with ``--durable``, the wait until all is stored."""
    for i, (path, fmt) in enumerate(zip(args.files, formats, strict=True)):
        try:
            source = open_source(path, fmt, dataset, args.batch_rows, args.source_id)
        except (pa.ArrowException, OSError) as exc:
            raise CommandError(f"cannot read {path} as {fmt}: {one_line(exc)}") from None
        task = progress.add_task(source.name, total=source.total, rows=0, sent=size(0), rate="")
        started, rows_before, bytes_before = time.monotonic(), sender.rows, sender.nbytes

        def acked(n: int, b: int, task: Any = task, source: Source = source, started: float = started) -> None:
            rows, nbytes = sender.rows - rows_before, sender.nbytes - bytes_before  # noqa: B023 - used in this turn only
            rate = f"{rows / max(time.monotonic() - started, 1e-3):,.0f} rows/s"
            done = sender.read_bytes if source.read_bytes else rows
            progress.update(task, completed=done, rows=rows, sent=size(nbytes), rate=rate)

        try:
            sender.send(source, args.durable and i == len(args.files) - 1, acked)
        except (pa.ArrowException, OSError) as exc:  # the file, read as it is sent
            if isinstance(exc, flight.FlightError):  # not retried, e.g. refused
                raise CommandError(f"{dataset}: {one_line(exc)}") from None
            raise CommandError(f"cannot read {path} as {fmt}: {one_line(exc)}") from None
        finally:
            source.close()
        end = source.total or (sender.rows - rows_before) or 1
        progress.update(task, total=end, completed=end)
    return sender.wait_durable(progress.console.print) if args.durable else None
