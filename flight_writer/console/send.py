"""``flight-writer send``: files (or stdin) streamed to a dataset in batches with idempotent ids; a dropped
connection is re-opened and every batch without a reply is sent again (the server drops the ones it
already has); ``--durable`` returns once all of it is in Parquet. This module is the command: its
arguments, the files in turn with a progress bar each, and the summary. The inputs are read in sources.py;
the sending, re-sending and durable wait are the ``Sender`` in sender.py."""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import pyarrow as pa
import pyarrow.flight as flight
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

from flight_writer.console.common import CommandError, Connection, new_command, one_line, size
from flight_writer.console.sender import Sender
from flight_writer.console.sources import FORMATS, Source, format_of, open_source
from flight_writer.queue.seqs import seq_ranges


def add_command(sub: argparse._SubParsersAction) -> None:
    summary = "stream Parquet, Arrow IPC, CSV or JSON-lines files (or stdin) to a dataset"
    parser = new_command(sub, "send", summary, run_send)
    parser.add_argument("dataset", help="the dataset, e.g. demo/spans")
    parser.add_argument("files", nargs="+", metavar="FILE", help="files to send; - reads stdin (needs --format)")
    parser.add_argument("--format", choices=sorted(set(FORMATS.values())), help="default: from the file's extension")
    parser.add_argument("--batch-rows", type=int, default=65_536, help="rows per batch sent (default 65536)")
    parser.add_argument("--durable", action="store_true", help="return only once everything sent is in Parquet")
    parser.add_argument("--retry-for", type=float, default=60.0, help="seconds to keep reconnecting (default 60)")
    parser.add_argument("--source-id", help="identity of the data for its batch ids (default: path, size, mtime)")


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
    batches = sender.batches
    summary = (
        f"sent {sender.rows:,} row{'' if sender.rows == 1 else 's'} ({size(sender.nbytes)} of Arrow) in "
        f"{batches:,} batch{'' if batches == 1 else 'es'} to {dataset}"
    )
    ranges = seq_ranges(sorted(set(sender.seqs)))
    summary += f": seqs {ranges if len(ranges) <= 60 else ranges[:57] + '...'}" if ranges else ""
    if sender.duplicates:
        summary += f"; {sender.duplicates:,} batch{'' if sender.duplicates == 1 else 'es'} the server already had"
    if sender.reconnects:
        summary += f"; reconnected {sender.reconnects} times"
    if durable is not None and sender.seqs:
        summary += "; " + durable_summary(durable)
    print(summary)
    if durable and durable["failed"]:
        for ack in durable["failed"]:
            print(f"flight-writer: seq {ack['seq']} failed: {ack.get('error')}", file=sys.stderr)
        return 1
    return 0


def durable_summary(durable: dict[str, Any]) -> str:
    """What ``--durable`` found of this send's own seqs (``Sender.wait_durable``): durable, in how many files,
    or how many failed. Not the server's ``durable_through``, which counts every client's seqs."""
    stored, failed, files = durable["durable"], len(durable["failed"]), len(durable["files"])
    text = "all durable" if not failed else f"{stored:,} of {stored + failed:,} seqs durable"
    if files:  # "at least": the server names the file of its last server.ack_history seqs only
        text += f", in {'at least ' if durable['unnamed'] else ''}{plural(files, 'file')}"
    return text + (f"; {plural(failed, 'seq')} failed" if failed else "")


def plural(n: int, word: str) -> str:
    return f"{n:,} {word}" if n == 1 else f"{n:,} {word}s"


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
