"""What the three commands share: how to reach the server (``--location``, ``--tls-ca``, a bearer secret
or a Basic login), the ``status`` call, expected failures told in one line, and numbers shown to people."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.flight as flight
from rich.console import Console, RenderableType
from rich.measure import Measurement

DEFAULT_LOCATION = "grpc://127.0.0.1:8815"
ACTION_TIMEOUT = 10.0  # seconds for one status/ack call (an ack that waits asks for less than this)
RETRYABLE = (flight.FlightUnavailableError, flight.FlightTimedOutError, flight.FlightCancelledError)
CALL_ERRORS = (flight.FlightError, pa.ArrowException, OSError)  # a call refused, or its connection broke
MAX_WIDTH = 1000  # columns at most for output that is not a terminal's


class CommandError(Exception):
    """An expected failure, told in one line."""


def new_command(
    sub: argparse._SubParsersAction, name: str, summary: str, command: Callable[[argparse.Namespace], int]
) -> argparse.ArgumentParser:
    """A subcommand with the connection options, whose ``run`` is ``command`` with its failures told in one line."""
    parser = sub.add_parser(name, help=summary)
    connection_arguments(parser)
    parser.set_defaults(run=_guarded(command))
    return parser


def connection_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--location", default=os.environ.get("FLIGHT_WRITER_URL", DEFAULT_LOCATION))
    parser.add_argument("--tls-ca", help="PEM file of the CA that signed a grpc+tls:// server's certificate")
    parser.add_argument(
        "--token",
        default=os.environ.get("FLIGHT_WRITER_TOKEN"),
        help="machine token, fw_... (default: $FLIGHT_WRITER_TOKEN; the environment keeps it out of `ps`). "
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
    except CALL_ERRORS as exc:
        if isinstance(exc, flight.FlightError) and not isinstance(exc, RETRYABLE):  # it answered: no
            raise CommandError(f"{conn.location}: {one_line(exc)}") from None
        raise CommandError(f"no answer from {conn.location}: {one_line(exc)}") from None


# -- output ------------------------------------------------------------------------------------------------
def print_view(view: RenderableType) -> None:
    """Print a table or view to stdout. On a terminal rich fits it to the terminal's width; elsewhere (a pipe,
    a file) at the width it needs, so that nothing is cut for lack of room: ``$COLUMNS``, when set, still
    decides."""
    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        needed = Measurement.get(console, console.options.update_width(MAX_WIDTH), view).maximum
        console = Console(width=max(needed, console.width))
    console.print(view)


# -- numbers for people ------------------------------------------------------------------------------------
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


def lag(status: dict[str, Any]) -> int | None:
    """Received seq - durable seq: batches not yet durable, where seqs are one dense series. Not with a seq
    stride (NATS with queue.streams or stream_slots > 1: seqs of several streams interleave): None."""
    if (status.get("nats_stream_slots") or 1) > 1:
        return None
    received, durable = status.get("received_seq"), status.get("durable_through")
    return received - durable if isinstance(received, int) and isinstance(durable, int) else None
