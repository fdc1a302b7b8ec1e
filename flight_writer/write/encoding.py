"""Parquet encoding: an ``Encoder`` writes row groups into one file (on a local disk or in memory),
``Joined`` is a file assembled from parts encoded apart (footer.py), and ``dictionary_columns`` decides
which columns of a file get a dictionary. parquet_file.py decides what to encode when."""

from __future__ import annotations

import contextlib
import functools
import os
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from flight_writer.config import WriterSettings
from flight_writer.lake.layout import Shape
from flight_writer.lake.storage import Storage

PARQUET_TYPE = "application/vnd.apache.parquet"
LOCAL_BUFFER = 1 << 20  # the encoder writes pages of a few KiB: gather them before the write(2)
SAMPLE_ROWS = 16_384  # values per column that decide whether a file's column gets a dictionary
UNIQUE = 0.95  # ... it does not when this share of them is distinct
# small batches are concatenated into runs of up to this many rows (and COALESCE_BYTES) before encoding: the
# Parquet writer (and a cast) pays per chunk and column, so a 32 MiB row group of 1,780 100-row span batches
# took 86 ms of CPU to encode, concatenated 72 ms plus 5 ms for the copy; the copy is bounded by the run
COALESCE_ROWS = 65_536
COALESCE_BYTES = 64 << 20
SMALL_ROWS = 4096  # ... when the batches hold fewer rows than this on average


class Encoder:
    """Writes row groups into one Parquet file, on a local disk (``local``: its storage path and disk path)
    or in memory. Parquet encoding and the local writes release the GIL."""

    def __init__(
        self,
        shape: Shape,
        settings: WriterSettings,
        local: tuple[str, str] | None,
        use_dictionary: bool | list[str] = True,
    ) -> None:
        self._settings = settings
        self._shape = shape
        self.tmp, self._disk = local if local is not None else (None, None)
        self._sink: Any = (
            pa.output_stream(self._disk, compression=None, buffer_size=LOCAL_BUFFER)
            if self._disk is not None
            else pa.BufferOutputStream()
        )
        self.data: pa.Buffer | None = None
        self.footer: pq.FileMetaData | None = None  # once closed
        self._bytes: bytes | None = None
        try:
            self._writer = pq.ParquetWriter(
                self._sink,
                shape.schema,
                compression=settings.compression,
                compression_level=settings.compression_level or None,
                use_dictionary=use_dictionary,
            )
        except BaseException:
            self.discard()
            raise

    def write(self, batches: list[pa.RecordBatch]) -> None:
        """One row group (several if the batches hold more than ``row_group_rows`` rows)."""
        table = self._shape.apply(pa.Table.from_batches(coalesced(batches)))  # never one row group per batch
        self._writer.write_table(table, row_group_size=self._settings.row_group_rows)

    def close(self, metadata: dict[bytes, bytes] | None) -> int:
        """Write the footer, with ``metadata`` added; returns the file's size. In memory, the file is
        ``data`` then."""
        if metadata:
            self._writer.add_key_value_metadata(metadata)
        self._writer.close()
        self.footer = self._writer.writer.metadata
        size = self._sink.tell()
        if self._disk is not None:
            self._sink.close()
        else:
            self.data = self._sink.getvalue()
        self._sink = None
        return size

    def store(self, storage: Storage, path: str, replace: bool = True) -> None:
        """Put the closed file at ``path``; may be called again after a failure. With ``replace=False``
        FileExistsError if an object is there already."""
        if self.tmp is not None:
            storage.commit(self.tmp, path, replace)
            return
        if self._bytes is None:  # once: OpenDAL takes bytes; retries reuse them
            self._bytes, self.data = self.data.to_pybytes(), None  # type: ignore[union-attr]
        storage.write(path, self._bytes, PARQUET_TYPE, replace)

    def discard(self) -> None:
        """Give the file up (its encoding failed): close what is open and remove the local file."""
        with contextlib.suppress(Exception):
            self._writer.close()
        if self._sink is not None:
            with contextlib.suppress(Exception):
                self._sink.close()
        if self._disk is not None:
            with contextlib.suppress(OSError):
                os.remove(self._disk)


class Joined:
    """A file joined from encoded parts (``footer.assemble``'s pieces): written at once to the local
    file ``local`` where there is one, else into one ``bytes`` for the upload."""

    def __init__(self, pieces: list[Any], local: tuple[str, str] | None) -> None:
        self.size = sum(len(p) for p in pieces)
        self.tmp: str | None = None
        if local is None:
            self._bytes: bytes | None = b"".join(pieces)
            return
        self._bytes = None
        tmp, disk = local
        try:
            with pa.OSFile(disk, "wb") as f:  # native writes: the GIL is released
                for piece in pieces:
                    f.write(piece)
        except BaseException:
            with contextlib.suppress(OSError):
                os.remove(disk)
            raise
        self.tmp = tmp

    def store(self, storage: Storage, path: str, replace: bool = True) -> None:
        if self.tmp is not None:
            storage.commit(self.tmp, path, replace)
        else:
            storage.write(path, self._bytes, PARQUET_TYPE, replace)


def coalesced(batches: list[pa.RecordBatch]) -> list[pa.RecordBatch]:
    """The batches with runs of small ones concatenated (up to ``COALESCE_ROWS`` rows, ``COALESCE_BYTES``
    Arrow bytes per run), when they hold fewer than ``SMALL_ROWS`` rows on average; else as they are. A run
    that cannot be concatenated stays as its batches (the encoder says what is wrong with them)."""
    if len(batches) < 2 or sum(b.num_rows for b in batches) >= SMALL_ROWS * len(batches):
        return batches
    out: list[pa.RecordBatch] = []
    run: list[pa.RecordBatch] = []
    rows = nbytes = 0
    for batch in batches:
        size = batch.get_total_buffer_size()  # a slice counts its parent's buffers: it may go alone
        if run and (rows + batch.num_rows > COALESCE_ROWS or nbytes + size > COALESCE_BYTES):
            out.extend(_concatenated(run))
            run, rows, nbytes = [], 0, 0
        run.append(batch)
        rows += batch.num_rows
        nbytes += size
    out.extend(_concatenated(run))
    return out


def _concatenated(run: list[pa.RecordBatch]) -> list[pa.RecordBatch]:
    if len(run) < 2:
        return run
    try:
        return [pa.concat_batches(run)]
    except pa.ArrowException as exc:
        if isinstance(exc, MemoryError):
            raise
        return run


def dictionary_columns(table: pa.Table) -> bool | list[str]:
    """Which Parquet columns get a dictionary (``use_dictionary``): all (True) but the top-level ones whose
    first ``SAMPLE_ROWS`` values here are ``UNIQUE`` distinct. A dictionary of (nearly) unique values only
    adds an index per value, and pyarrow builds one per column chunk until it holds 1 MiB before giving up:
    for ids and timestamps that hashing was most of the encoding (a 180,000-row span row group cost
    1.3-1.5 x the CPU of a 1,000,000-row one, and made files 12% larger)."""
    sample = table.slice(0, SAMPLE_ROWS)
    if sample.num_rows < 1000:  # too few to tell
        return True
    plain = set()
    for name, column in zip(sample.column_names, sample.columns, strict=True):
        kind = column.type
        flat = pa.types.is_primitive(kind) or pa.types.is_binary(kind) or pa.types.is_string(kind)
        flat = flat or pa.types.is_large_binary(kind) or pa.types.is_large_string(kind)
        flat = flat or pa.types.is_fixed_size_binary(kind) or pa.types.is_decimal(kind)
        if flat and pc.count_distinct(column).as_py() >= UNIQUE * sample.num_rows:
            plain.add(name)
    return [c for c in parquet_columns(sample.schema) if c not in plain] if plain else True


@functools.lru_cache(maxsize=256)
def parquet_columns(schema: pa.Schema) -> tuple[str, ...]:
    """The leaf column paths Parquet gives an Arrow schema (``attributes.key_value.key``, ...)."""
    sink = pa.BufferOutputStream()
    pq.ParquetWriter(sink, schema).close()
    parquet = pq.ParquetFile(pa.BufferReader(sink.getvalue())).schema
    return tuple(parquet.column(i).path for i in range(len(parquet)))
