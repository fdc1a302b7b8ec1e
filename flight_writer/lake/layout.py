"""How a dataset is laid out in storage: its partitions and the types its files hold.

Partitions (``datasets.partition``, per dataset through ``[[datasets.rules]]``):

- ``received`` (the default): ``date=YYYY-MM-DD/hour=H`` of the time the server received the batch.
- ``event``: the same folders from a timestamp column of the data (``datasets.time_column``), UTC, so late
  and early events land in their own partitions. ``granularity = "day"`` leaves out ``hour=``.
- ``fields``, with either: one more folder per listed column (``service=api``), after the time folders.
  These columns are taken out of the files, as Hive, Spark and Kafka Connect do: readers put them back from
  the folder names (and type them from those: a string field whose values look like numbers reads back as a
  number). Nulls go to ``__HIVE_DEFAULT_PARTITION__``, which Spark and DuckDB read as null.

``hour`` is written without a leading zero (``hour=9``): DuckDB types the column VARCHAR as soon as one
folder is zero-padded, the other readers read either as 9. A data column named like a partition column
(``date``, ``hour``, case-insensitively: Spark ignores case) would be silently replaced by the folder value
in DuckDB, Polars and Spark, so such a stream is refused at its start.

A batch whose rows fall in several partitions is split with Arrow compute (group-by, then one filter per
partition, never per row in Python); each piece is queued as a batch of its own, with its own seq. A batch
that falls in more than ``datasets.max_partitions`` partitions is refused: that is a field of too high a
cardinality, not telemetry.

Types (``datasets.types``): ``compatible`` (the default) stores what every lake reader reads: timestamps in
microseconds (Spark refuses nanoseconds; nanoseconds are truncated), times of day as ``time64[us]`` (Spark
reads TIME(MICROS) with ``spark.sql.timeType.enabled``, nothing narrower), ``float16`` as ``float32``
(Spark and DuckDB refuse half floats). ``exact`` stores the Arrow types as sent, as far as Parquet can
(``timestamp[s]`` comes back as ms there).
"""

from __future__ import annotations

import time
import urllib.parse
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from flight_writer.config import DatasetRule

NULL_PARTITION = "__HIVE_DEFAULT_PARTITION__"
TIME_FOLDERS = ("date", "hour")
PARTITION_TYPES = "strings, integers, booleans and dates"
UNITS = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}  # timestamp values per second
FIRST_SECOND, LAST_SECOND = -62_135_596_800, 253_402_300_799  # 0001-01-01 and 9999-12-31T23:59:59, UTC


def _cast_options(target: pa.DataType) -> pc.CastOptions:
    """Nanoseconds may become microseconds; a value out of range still fails (and the batch is set aside)."""
    return pc.CastOptions(target, allow_time_truncate=True)


class LayoutError(ValueError):
    """A stream that cannot be laid out as its dataset's rule says (the message names the column)."""


def stored_type(kind: pa.DataType, types: str) -> pa.DataType:
    """The type a column of ``kind`` is stored as under the ``types`` policy."""
    if types == "exact":
        return kind
    if pa.types.is_timestamp(kind):
        return kind if kind.unit == "us" else pa.timestamp("us", kind.tz)
    if pa.types.is_time(kind):
        return pa.time64("us")
    if pa.types.is_float16(kind):
        return pa.float32()
    if pa.types.is_struct(kind):
        return pa.struct([f.with_type(stored_type(f.type, types)) for f in kind])
    if pa.types.is_large_list(kind):
        return pa.large_list(kind.value_field.with_type(stored_type(kind.value_type, types)))
    if pa.types.is_list(kind):
        return pa.list_(kind.value_field.with_type(stored_type(kind.value_type, types)))
    if pa.types.is_fixed_size_list(kind):
        return pa.list_(kind.value_field.with_type(stored_type(kind.value_type, types)), kind.list_size)
    if pa.types.is_map(kind):
        return pa.map_(
            kind.key_field.with_type(stored_type(kind.key_type, types)),
            kind.item_field.with_type(stored_type(kind.item_type, types)),
        )
    if pa.types.is_dictionary(kind):
        return pa.dictionary(kind.index_type, stored_type(kind.value_type, types))
    return kind


@dataclass(frozen=True)
class Shape:
    """What a file of a stream holds: the stream's columns but the partition fields, in stored types."""

    schema: pa.Schema  # of the file
    drop: tuple[str, ...]  # partition fields, kept in folder names
    # the partition fields' types as the stream has them (dictionaries decoded)
    fields: pa.Schema = field(default_factory=lambda: pa.schema([]))

    @classmethod
    def of(cls, schema: pa.Schema, rule: DatasetRule) -> Shape:
        kept = pa.schema(
            [f.with_type(stored_type(f.type, rule.types)) for f in schema if f.name not in rule.fields],
            schema.metadata,
        )
        drop = tuple(f for f in rule.fields if f in schema.names)
        fields = pa.schema([_decoded(schema.field(f)) for f in drop])
        return cls(kept, drop, fields)

    def apply(self, table: pa.Table) -> pa.Table:
        """``table`` as the file stores it (a no-op when nothing changes; truncates nanoseconds)."""
        if self.drop:
            table = table.drop_columns(list(self.drop))
        if table.schema.equals(self.schema):
            return table
        return pa.Table.from_arrays(
            [
                column if column.type == f.type else pc.cast(column, options=_cast_options(f.type))
                for column, f in zip(table.columns, self.schema, strict=True)
            ],
            schema=self.schema,
        )


def _decoded(f: pa.Field) -> pa.Field:
    return f.with_type(f.type.value_type) if pa.types.is_dictionary(f.type) else f


class Partitioner:
    """The partitions of one stream's batches, for one dataset's rule. Built at stream start, where it
    checks the rule against the stream's schema (``LayoutError`` naming the column)."""

    def __init__(self, rule: DatasetRule, schema: pa.Schema) -> None:
        self.rule = rule
        names = {n.lower(): n for n in schema.names}
        folders = TIME_FOLDERS if rule.granularity == "hour" else TIME_FOLDERS[:1]
        for folder in folders:
            if folder in names:
                raise LayoutError(
                    f"column {names[folder]!r} has the name of the partition column {folder!r} "
                    f"({'/'.join(f'{f}=...' for f in folders)} folders): readers would replace its values with "
                    "the folder's; rename the column"
                )
        self._time: str | None = None  # columns by name: a conformed batch may order them otherwise
        if rule.partition == "event":
            if rule.time_column not in schema.names:
                raise LayoutError(
                    f"the dataset is partitioned by event time from column {rule.time_column!r}, which the "
                    f"stream does not have (it has {', '.join(schema.names)})"
                )
            kind = schema.field(rule.time_column).type
            if not pa.types.is_timestamp(kind):
                raise LayoutError(
                    f"column {rule.time_column!r} is {kind}: partitioning by event time needs a timestamp column"
                )
            self._time = rule.time_column
        self._fields: list[str] = []
        for name in rule.fields:
            if name not in schema.names:
                raise LayoutError(f"the dataset is partitioned by column {name!r}, which the stream does not have")
            kind = schema.field(name).type
            if pa.types.is_dictionary(kind):
                kind = kind.value_type
            if not (
                pa.types.is_string(kind)
                or pa.types.is_large_string(kind)
                or pa.types.is_integer(kind)
                or pa.types.is_boolean(kind)
                or pa.types.is_date32(kind)
            ):
                raise LayoutError(f"partition column {name!r} is {kind}; partition columns are {PARTITION_TYPES}")
            self._fields.append(name)
        self.splits = self._time is not None or bool(self._fields)

    def split(self, batch: pa.RecordBatch) -> list[pa.RecordBatch]:
        """The batch's rows, one batch per partition (the batch itself when all rows share one)."""
        if not self.splits or batch.num_rows == 0:
            return [batch]
        if self._time is not None:
            self._check_times(batch.column(self._time))
        keys = self._keys(batch)
        if all(pc.count_distinct(k, mode="all").as_py() == 1 for k in keys):
            return [batch]
        names = [f"k{i}" for i in range(len(keys))]
        table = pa.table(keys, names=names)
        groups = table.group_by(names, use_threads=False).aggregate([])
        if groups.num_rows > self.rule.max_partitions:
            raise LayoutError(
                f"a batch of {batch.num_rows} rows falls in {groups.num_rows} partitions, more than "
                f"datasets.max_partitions ({self.rule.max_partitions}): {self._describe()} has too many values"
            )
        pieces = []
        for g in range(groups.num_rows):
            mask = None
            for name, key in zip(names, keys, strict=True):
                value = groups.column(name)[g]
                same = pc.is_null(key) if not value.is_valid else pc.fill_null(pc.equal(key, value), False)
                mask = same if mask is None else pc.and_(mask, same)
            pieces.append(batch.filter(mask))
        return pieces

    def _check_times(self, column: pa.Array) -> None:
        """Event times must name a folder: years 1 to 9999 (gmtime and the readers' dates)."""
        low, high = pc.min_max(column).values()
        per_second = UNITS[column.type.unit]
        for value in (low, high):
            if value.is_valid and not FIRST_SECOND <= value.value // per_second <= LAST_SECOND:
                raise LayoutError(
                    f"column {self._time!r} has an event time outside the years 1-9999 ({value.value} "
                    f"{column.type.unit} since 1970): it cannot name a partition"
                )

    def _keys(self, batch: pa.RecordBatch) -> list[pa.Array]:
        keys = []
        if self._time is not None:
            column = batch.column(self._time)
            if column.type.tz is not None:  # floored in UTC, not in the column's zone
                column = column.cast(pa.timestamp(column.type.unit))
            keys.append(pc.floor_temporal(column, unit="hour" if self.rule.granularity == "hour" else "day"))
        for name in self._fields:
            column = batch.column(name)
            keys.append(column.dictionary_decode() if pa.types.is_dictionary(column.type) else column)
        return keys

    def _describe(self) -> str:
        parts = [f"column {self.rule.time_column!r} ({self.rule.granularity}s)"] if self._time is not None else []
        return " and ".join(parts + [f"column {self.rule.fields[k]!r}" for k in range(len(self._fields))])


def partition_path(rule: DatasetRule, batch: pa.RecordBatch, received_at: float) -> str:
    """The partition folders of a batch whose rows all share one partition (``Partitioner.split``)."""
    if rule.partition == "event" and batch.num_rows:
        value = batch.column(rule.time_column)[0]
        seconds = value.value // UNITS[value.type.unit] if value.is_valid else None
    else:
        seconds = received_at
    if seconds is None:  # a null event time
        folders = [f"date={NULL_PARTITION}"] + ([f"hour={NULL_PARTITION}"] if rule.granularity == "hour" else [])
    else:
        moment = time.gmtime(seconds)
        folders = [f"date={time.strftime('%Y-%m-%d', moment)}"]
        if rule.granularity == "hour":
            folders.append(f"hour={moment.tm_hour}")
    for name in rule.fields:
        value = batch.column(name)[0] if batch.num_rows else None
        folders.append(f"{name}={folder_value(value)}")
    return "/".join(folders)


def partition_values(folders: str) -> dict[str, str | None]:
    """``date=2026-01-01/hour=9/service=a%2Fb`` as ``{"date": "2026-01-01", "hour": "9", "service": "a/b"}``;
    the null partition's folder value as None."""
    values: dict[str, str | None] = {}
    for folder in folders.split("/") if folders else ():
        name, _, text = folder.partition("=")
        values[name] = None if text == NULL_PARTITION else urllib.parse.unquote(text)
    return values


def folder_value(value: pa.Scalar | None) -> str:
    """A partition value as a folder name: percent-encoded as Hive does (``/`` and ``=`` cannot appear)."""
    if value is None or not value.is_valid:
        return NULL_PARTITION
    if isinstance(value, pa.DictionaryScalar):
        value = value.value
    text = value.as_py()
    if isinstance(text, bool):
        text = "true" if text else "false"
    text = str(text)
    return urllib.parse.quote(text, safe=" -_.") if text else NULL_PARTITION  # Hive: empty is null too
