"""``send``'s inputs: Parquet, Arrow IPC (file or stream), CSV or JSON-lines files, or stdin, read as batches
of exactly ``--batch-rows`` rows, with batch ids that the same data sent again gets again."""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from flight_writer.console.common import CommandError

FORMATS = {".parquet": "parquet", ".pq": "parquet", ".arrow": "arrow", ".arrows": "arrow", ".ipc": "arrow",
           ".feather": "arrow", ".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}  # fmt: skip


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
                yield _joined(parts)
                parts, have = [], 0
    if have:
        yield _joined(parts)


def _joined(parts: list[pa.RecordBatch]) -> pa.RecordBatch:
    return parts[0] if len(parts) == 1 else pa.concat_batches(parts)
