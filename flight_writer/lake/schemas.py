"""A dataset's schema over time: modes, declared columns, safe casts (``datasets.schema``, ``datasets.columns``).

- ``separate`` (today's behaviour): a stream's schema is taken as sent; batches of different schemas go to
  different files.
- ``evolve``: the dataset has one schema that grows. A stream may add columns (stored as nullable), leave
  columns out (stored as nulls) and widen a column's type safely (int32 -> int64, float32 -> float64,
  string -> large_string, ...); its batches are stored under the dataset's unified schema, so streams whose
  schemas differ share files instead of starting one per change. A stream that changes a column's type in
  any other way is refused at its start, naming the column. Older files keep their narrower schema: read
  with ``union_by_name`` (DuckDB), ``mergeSchema`` (Spark), a unified schema (pyarrow), see docs/guides/readers.md.
- ``strict``: the dataset's schema is fixed: the declared ``columns``, else the first schema the server
  sees (in storage, or the first stream). A stream whose columns differ is refused at its start, naming them;
  types that cast safely to the dataset's are cast.

Declared columns (``columns = {id = "int64 not null", name = "string"}``) work in every mode: each must be
in every stream (a missing one is refused), its type cast safely to the declared one or refused, and a
``not null`` column's batches with nulls are refused (the stream ends after its earlier batches are
answered: nothing of the bad batch is stored). Types are written as pyarrow names: ``int64``, ``string``,
``large_string``, ``bool``, ``float64``, ``date32``, ``timestamp[us]``, ``timestamp[us, tz=UTC]``,
``decimal128(10, 2)``, ``list<string>``.

The unified schema of a dataset is kept in memory and taken from its newest file in storage at its first
stream after a start (the other processes' changes reach this one through storage).

Names the lake's readers cannot read back (``readers_problem``, at every level of nesting): a name twice, two
names that differ only in case, an empty name, a name with a NUL character. Under ``evolve`` a stream may not
add a column whose name differs only in case from one of the dataset's (the files would hold both).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import pyarrow as pa
import pyarrow.compute as pc

from flight_writer.config.columns import declared_columns


class SchemaError(ValueError):
    """A stream or declared schema that the dataset's mode does not allow (the message names the column)."""


def declared_schema(columns: Iterable[tuple[str, str]]) -> pa.Schema | None:
    """``(name, "type [not null]")`` pairs as a schema; None when there are none (checked at load time)."""
    return declared_columns(columns)


def readers_problem(schema: pa.Schema) -> str | None:
    """Why the lake's readers could not read a file of this schema back as sent, naming the column (nested
    fields included: structs, list elements, map keys and values); None if they can. Measured with
    pyarrow, Polars and DuckDB by tests/lake/test_reader_schemas.py, Spark by hand:

    - a name twice: ``pyarrow.parquet.read_table`` fails ("Multiple matches for FieldRef.Name"), so does
      ``pa.unify_schemas``; Polars fails on a struct's ("duplicate struct field", or panics); DuckDB renames
      the second ``a_1``;
    - names that differ only in case: Spark refuses the files ([COLUMN_ALREADY_EXISTS]), DuckDB renames the
      second ``A_1`` (ASCII letters);
    - an empty name: DuckDB reads it as ``C0`` (a struct field: as another name, or the struct unnamed),
      the Polars scan of docs/guides/readers.md fails ("extra column in file outside of expected schema");
    - a NUL character in a name: Polars panics or cuts the name there, DuckDB cuts it there.
    """
    return _names_problem([*schema], ())


def _names_problem(fields: list[pa.Field], path: tuple[str, ...]) -> str | None:
    """The first problem of one level's names (``path``: the column and fields that hold them), then of the
    levels inside them."""
    at = "" if not path else f" of column {'.'.join(path)!r}"
    names: set[str] = set()
    folded: dict[str, str] = {}  # lower case, as Spark compares (String.equalsIgnoreCase): 'ß' is not 'SS'
    for f in fields:
        where = f"column {f.name!r}" if not path else f"field {f.name!r}{at}"
        if f.name == "":
            polars = "" if path else " and the Polars scan the docs show cannot read it"
            return f"{where} has an empty name: DuckDB reads it under another name ('C0'){polars}; name it"
        if "\x00" in f.name:
            return f"{where} has a NUL character in its name: Polars and DuckDB cut the name there; rename it"
        if f.name in names:
            fail = "Polars cannot" if path else 'pyarrow ("Multiple matches for FieldRef.Name") and Polars cannot'
            return f"{where} appears twice: {fail} read the file, DuckDB renames one {f.name + '_1'!r}; rename one"
        if (other := folded.get(f.name.lower())) is not None:
            return (
                f"{'fields' if path else 'columns'} {other!r} and {f.name!r}{at} differ only in case: Spark reads "
                "them as one column and refuses the files, DuckDB renames one (ASCII letters); rename one"
            )
        names.add(f.name)
        folded[f.name.lower()] = f.name
    for f in fields:
        if (problem := _type_problem(f.type, (*path, f.name))) is not None:
            return problem
    return None


def _type_problem(kind: pa.DataType, path: tuple[str, ...]) -> str | None:
    """The first problem of the names inside a column's type (struct fields, also in list elements, map
    keys and values, dictionary values)."""
    if pa.types.is_dictionary(kind):
        return _type_problem(kind.value_type, path)
    if pa.types.is_struct(kind):
        return _names_problem([*kind], path)
    if pa.types.is_map(kind):
        return _type_problem(kind.key_type, path) or _type_problem(kind.item_type, path)
    if isinstance(kind, pa.ListType | pa.LargeListType | pa.FixedSizeListType | pa.ListViewType | pa.LargeListViewType):
        return _type_problem(kind.value_type, path)
    return None


def safe_cast(source: pa.DataType, target: pa.DataType) -> bool:
    """Whether every value of ``source`` keeps its meaning as ``target`` (a timestamp may lose digits
    below the target's unit; out-of-range values fail at the cast)."""
    if source == target or pa.types.is_null(source):
        return True
    if pa.types.is_dictionary(source):
        return safe_cast(source.value_type, target)
    if pa.types.is_integer(source) and pa.types.is_integer(target):
        signed = pa.types.is_signed_integer(source), pa.types.is_signed_integer(target)
        if signed == (True, False):
            return False  # negative values
        if signed == (False, True):
            return target.bit_width > source.bit_width
        return target.bit_width >= source.bit_width
    if pa.types.is_floating(target) and (pa.types.is_floating(source) or pa.types.is_integer(source)):
        mantissa = {16: 11, 32: 24, 64: 53}[target.bit_width]
        bits = source.bit_width if pa.types.is_integer(source) else {16: 11, 32: 24, 64: 53}[source.bit_width]
        return bits <= mantissa
    strings = (pa.string(), pa.large_string(), pa.string_view())
    if source in strings and target in strings:
        return True
    binaries = (pa.binary(), pa.large_binary(), pa.binary_view())
    if source in binaries and target in binaries:
        return True
    if pa.types.is_timestamp(source) and pa.types.is_timestamp(target):
        return source.tz == target.tz
    if pa.types.is_decimal(source) and pa.types.is_decimal(target):
        return target.scale >= source.scale and target.precision - target.scale >= source.precision - source.scale
    if _is_list(source) and _is_list(target):
        return safe_cast(source.value_type, target.value_type)
    return False


def _is_list(kind: pa.DataType) -> bool:
    return pa.types.is_list(kind) or pa.types.is_large_list(kind)


def plan(mode: str, current: pa.Schema | None, stream: pa.Schema, declared: pa.Schema | None) -> pa.Schema:
    """The schema a stream's batches are stored under, given the dataset's mode and its schema so far
    (``stream``: the stream's data columns in stored types). ``SchemaError`` naming what is not allowed."""
    problems: list[str] = []
    given = {f.name: f for f in stream}
    if declared is not None:
        for f in declared:
            if f.name not in given:
                problems.append(f"column {f.name!r} is declared ({f.type}) and the stream does not have it")
            elif not safe_cast(given[f.name].type, f.type):
                problems.append(f"column {f.name!r} is {given[f.name].type}; declared {f.type}, no safe cast")
    # declared columns rule over the dataset's schema so far; other columns are nullable whatever a producer
    # said (a first stream's non-null field is not a constraint on the next ones)
    base = _declared_over(current, declared) if current is not None else declared
    if mode == "strict" and declared is not None:
        base = declared  # the declared columns are the schema
    if mode == "separate":
        target = _overlay(stream, declared)
    elif mode == "strict":
        base = base if base is not None else _nullable(stream, declared)
        target = base
        names = {f.name for f in base}
        problems += [f"column {n!r} is not in the dataset's schema" for n in given if n not in names]
        for f in base:
            if f.name not in given:
                if declared is None:  # declared columns were named above
                    problems.append(f"column {f.name!r} ({f.type}) of the dataset's schema is missing")
            elif not safe_cast(given[f.name].type, f.type) and (declared is None or f.name not in declared.names):
                problems.append(f"column {f.name!r} is {given[f.name].type}; the dataset has {f.type}, no safe cast")
    else:  # evolve
        target = _evolve(base, stream, problems) if base is not None else _nullable(stream, declared)
    if problems:
        raise SchemaError("; ".join(problems))
    return target


def _nullable(schema: pa.Schema, declared: pa.Schema | None) -> pa.Schema:
    """Every field nullable but the declared ``not null`` ones."""
    required = {f.name for f in declared if not f.nullable} if declared is not None else set()
    return pa.schema([f if f.name in required else f.with_nullable(True) for f in schema], schema.metadata)


def _declared_over(current: pa.Schema, declared: pa.Schema | None) -> pa.Schema:
    """The dataset's schema so far with the declared columns' types and nullability, and the declared
    columns it lacks added."""
    if declared is None:
        return _nullable(current, None)
    fields = {f.name: f for f in declared}
    merged = [fields.get(f.name, f.with_nullable(True)) for f in current]
    merged += [f for f in declared if f.name not in current.names]
    return pa.schema(merged, current.metadata)


def _overlay(stream: pa.Schema, declared: pa.Schema | None) -> pa.Schema:
    """The stream's schema with the declared columns' types and nullability."""
    if declared is None:
        return stream
    fields = {f.name: f for f in declared}
    return pa.schema([fields.get(f.name, f) for f in stream], stream.metadata)


def _evolve(base: pa.Schema, stream: pa.Schema, problems: list[str]) -> pa.Schema:
    given = {f.name: f for f in stream}
    fields = []
    for f in base:
        g = given.get(f.name)
        if g is None or safe_cast(g.type, f.type):
            if g is None and not f.nullable:
                problems.append(f"column {f.name!r} may not be null and the stream does not have it")
            fields.append(f)
        elif safe_cast(f.type, g.type):  # the stream widens it: the dataset's type from now on
            fields.append(f.with_type(g.type))
        else:
            problems.append(
                f"column {f.name!r} is {f.type} in the dataset; the stream sends {g.type}: schema = evolve takes "
                "added columns and safe widenings only"
            )
    names = {f.name for f in base}
    folded = {f.name.lower(): f.name for f in base}
    for f in stream:
        if f.name not in names and (other := folded.get(f.name.lower())) is not None:
            problems.append(
                f"column {f.name!r} differs only in case from the dataset's column {other!r}: Spark reads them as "
                "one column and refuses the files, DuckDB renames one (ASCII letters); send it as "
                f"{other!r} or rename it"
            )
    fields += [f.with_nullable(True) for f in stream if f.name not in names]
    return pa.schema(fields, base.metadata)


def union(schemas: list[pa.Schema]) -> pa.Schema | None:
    """The schema that ``evolve`` would have made of these, oldest first (a conflict keeps the older type)."""
    if not schemas:
        return None
    base = _nullable(schemas[0], None)
    for schema in schemas[1:]:
        base = _evolve(base, schema, [])
    return base


class Conformer:
    """Brings one stream's batches to the schema they are stored under: casts, null columns for those the
    stream leaves out, the ``not null`` check; the stream's other columns (partition fields) follow as they
    are."""

    def __init__(
        self, target: pa.Schema, stream: pa.Schema, keep: tuple[str, ...], stored: Callable[[pa.DataType], pa.DataType]
    ) -> None:
        # a column whose stored type is the target's keeps the stream's type here: the file's encoder casts
        # it (types = compatible) on the writer's threads, so a stream like the dataset costs nothing here
        given = {f.name: f for f in stream}
        target = pa.schema(
            [
                f.with_type(given[f.name].type) if f.name in given and stored(given[f.name].type) == f.type else f
                for f in target
            ],
            target.metadata,
        )
        self._target = target
        self._keep = [name for name in keep if name in stream.names]
        self.schema = pa.schema([*target, *(stream.field(n) for n in self._keep)], stream.metadata)
        self.identity = self.schema.equals(stream) and all(f.nullable for f in target)

    def apply(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        if self.identity:
            return batch
        columns = []
        for f in self._target:
            index = batch.schema.get_field_index(f.name)
            if index < 0:
                columns.append(pa.nulls(batch.num_rows, f.type))
                continue
            column = batch.column(index)
            if not f.nullable and column.null_count:
                raise SchemaError(
                    f"column {f.name!r} may not be null (declared not null); a batch of {batch.num_rows} rows "
                    f"has {column.null_count} nulls"
                )
            if column.type != f.type:
                try:
                    column = pc.cast(column, options=pc.CastOptions(f.type, allow_time_truncate=True))
                except pa.ArrowInvalid as exc:
                    raise SchemaError(f"column {f.name!r} cannot be cast to {f.type}: {exc}") from None
            columns.append(column)
        columns += [batch.column(name) for name in self._keep]
        return pa.RecordBatch.from_arrays(columns, schema=self.schema)
