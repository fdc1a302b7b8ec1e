"""How a dataset's layout maps onto a table: its partition columns, and the types a format cannot hold.

Partitions (layout.py's folders) become table partitions without touching the files:

- ``received`` time: ``date`` (a date) and ``hour`` (an int) are identity partition columns that live only
  in the table, never in the files (the rule Iceberg's spec gives for migrated Hive tables; Delta keeps
  partition values in its log anyway). Readers of the table get them back from the table's metadata.
- ``event`` time: Iceberg partitions by ``day(ts)`` / ``hour(ts)`` of the time column itself; Delta has no
  transforms, so there ``date`` and ``hour`` are partition columns of the table, as the folders say.
- ``fields``: identity partition columns with the stream's type, also only in the table.

Types (checked at stream start, so a stream a table cannot hold is refused naming the column): neither
format has unsigned integers (refused rather than wrapped: cast them to a signed type one size up), nor
durations, nor timestamps in a zone other than UTC (the instants are kept: cast them to tz "UTC"); Delta has
no time of day and no half floats; Iceberg v2 timestamps are microseconds (with ``types = "compatible"``,
the default, nanoseconds and half floats are converted before they are stored).
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from flight_writer.config import DatasetRule


@dataclass(frozen=True, slots=True)
class PartitionColumn:
    """One partition column of a table: ``name`` is its folder key; ``source`` the data column an Iceberg
    transform reads (event time), else None: the column lives only in the table."""

    name: str
    type: pa.DataType
    transform: str = "identity"  # identity, day or hour
    source: str | None = None


def partition_columns(rule: DatasetRule, fields: pa.Schema | None, fmt: str) -> list[PartitionColumn]:
    """The table's partition columns for a dataset of this rule (``fields``: the partition fields' types)."""
    columns: list[PartitionColumn] = []
    if rule.partition == "event" and fmt == "iceberg":
        columns.append(PartitionColumn(rule.time_column, pa.int32(), rule.granularity, rule.time_column))
    else:
        columns.append(PartitionColumn("date", pa.date32()))
        if rule.granularity == "hour":
            columns.append(PartitionColumn("hour", pa.int32()))
    kinds = {f.name: f.type for f in fields} if fields is not None else {}
    for name in rule.fields:
        columns.append(PartitionColumn(name, kinds.get(name, pa.string())))
    return columns


def table_schema(stored: pa.Schema, partitions: list[PartitionColumn]) -> pa.Schema:
    """The table's columns: the file's, then the partition columns that live only in the table."""
    extra = [pa.field(p.name, p.type) for p in partitions if p.source is None and p.name not in stored.names]
    return pa.schema([*(_plain(f) for f in stored), *extra])


def _plain(f: pa.Field) -> pa.Field:
    """A dictionary column is its values to a table; large strings/binaries are strings/binaries."""
    kind = f.type
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    if pa.types.is_large_string(kind) or pa.types.is_string_view(kind):
        kind = pa.string()
    elif pa.types.is_large_binary(kind) or pa.types.is_binary_view(kind):
        kind = pa.binary()
    return f.with_type(kind)


def types_problem(fmt: str, schema: pa.Schema) -> str | None:
    """Why a table of format ``fmt`` cannot hold a column of ``schema`` (the stored schema), naming it;
    None if it can."""
    for f in schema:
        if (why := _type_problem(fmt, f.type)) is not None:
            return (
                f"column {f.name!r} is {f.type}: a {_NAMES[fmt]} table cannot hold {why} (datasets.table = "
                f"{fmt!r}); cast it before sending"
            )
    return None


_NAMES = {"iceberg": "Iceberg", "delta": "Delta"}
UTC_ZONES = ("UTC", "+00:00", "Etc/UTC", "Z")


def _type_problem(fmt: str, kind: pa.DataType) -> str | None:
    if pa.types.is_unsigned_integer(kind):
        return "unsigned integers (a signed type one size up holds every value)"
    if pa.types.is_duration(kind) or pa.types.is_interval(kind):
        return "durations"
    if pa.types.is_null(kind):
        return "a column of type null"
    if pa.types.is_timestamp(kind) and kind.tz is not None and kind.tz not in UTC_ZONES:
        return "timestamps in a time zone other than UTC (the same instants: cast to tz='UTC')"
    if fmt == "delta":
        if pa.types.is_time(kind):
            return "times of day"
        if pa.types.is_float16(kind):
            return "half floats"
    if fmt == "iceberg":
        if pa.types.is_timestamp(kind) and kind.unit != "us":
            return "timestamps other than microseconds (format version 2)"
        if pa.types.is_time(kind) and kind != pa.time64("us"):
            return "times of day other than microseconds"
        if pa.types.is_float16(kind):
            return "half floats"
        if pa.types.is_date64(kind):
            return "date64 (use date32)"
    if pa.types.is_struct(kind):
        return next((w for f in kind if (w := _type_problem(fmt, f.type)) is not None), None)
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        return _type_problem(fmt, kind.value_type)
    if pa.types.is_map(kind):
        return _type_problem(fmt, kind.key_type) or _type_problem(fmt, kind.item_type)
    if pa.types.is_dictionary(kind):
        return _type_problem(fmt, kind.value_type)
    return None
