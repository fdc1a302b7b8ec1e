"""``flight-writer status``: the server's ``status`` action as a table (``--json``: as JSON, for scripts)."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

from rich import box
from rich.table import Table
from rich.text import Text

from flight_writer.console.common import (
    Connection,
    count,
    fetch_status,
    lag,
    new_command,
    print_view,
    seconds,
    size,
)


def add_command(sub: argparse._SubParsersAction) -> None:
    parser = new_command(sub, "status", "the server's status as a table (--json for scripts)", run_status)
    parser.add_argument("--json", action="store_true", help="print the status action's JSON as it came")


def run_status(args: argparse.Namespace) -> int:
    status = fetch_status(Connection(args))
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    print_view(status_table(status, args.location))
    return 0


def moment(epoch: float | None) -> str:
    """A Unix time as UTC, to the second ("-" if none)."""
    if epoch is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))


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
                 ("bytes_written", "Parquet bytes", size), ("last_write_at", "last write", moment)]),
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
            table.add_row("", "lag (seqs)", count(lag(status)))
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
            shown_value = "-" if value is None else count(value) if isinstance(value, int) else str(value)
            table.add_row("other" if first else "", key, shown_value)
            first = False
    return table
