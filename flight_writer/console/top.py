"""``flight-writer top``: a live view of ``status`` polled every ``--interval`` seconds, with rates derived
from the counters between two polls (``q`` or Ctrl-C quits; ``--once`` prints one frame)."""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from flight_writer.console.common import (
    CALL_ERRORS,
    CommandError,
    Connection,
    count,
    fetch_status,
    lag,
    new_command,
    one_line,
    print_view,
    seconds,
    size,
)


def add_command(sub: argparse._SubParsersAction) -> None:
    parser = new_command(sub, "top", "a live view of throughput, durability lag, pending data and errors", run_top)
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between polls (default 1)")
    parser.add_argument("--once", action="store_true", help="poll twice, --interval apart, print one view and exit")


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


def top_view(state: TopState, live: bool = True) -> Group:
    """One view of ``state``; ``live``: the one ``top`` keeps redrawing (says how to quit), else ``--once``'s."""
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
    behind = lag(s)
    health.add_row("lag (received - durable seq)", Text(count(behind), style="yellow" if behind else "green"))
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
    if live:
        parts.append(Text(f"polling status every {state.interval:g} s; q or Ctrl-C quits", style="dim"))
    else:
        parts.append(Text(f"rates over {state.interval:g} s between two polls of status", style="dim"))
    return Group(*parts)


def _datasets_table(datasets: dict[str, Any]) -> Table:
    keys = list(dict.fromkeys(k for v in datasets.values() if isinstance(v, dict) for k in v))
    table = Table(title="datasets", title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("dataset", overflow="fold")  # a name too wide for the terminal goes on, never cut
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
    try:
        client = conn.open()  # with a Basic login, this calls the server already
    except CALL_ERRORS as exc:
        raise CommandError(f"no answer from {conn.location}: {one_line(exc)}") from None
    state.update(fetch_status(conn, client))  # a server that does not answer at all: one line, exit 1
    if args.once:
        time.sleep(args.interval)
        state.update(fetch_status(conn, client))
        print_view(top_view(state, live=False))
        return 0
    console = Console()
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
                except (*CALL_ERRORS, CommandError) as exc:
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
