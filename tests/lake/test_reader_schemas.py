"""Schemas the lake's readers cannot read back: generated schemas (names duplicated at any level, differing
only in case, empty, dotted, spaced, unicode, named like the partition columns; flat and nested types) go
through a real server and are read back with pyarrow (each file, and pyarrow.dataset), Polars and DuckDB,
each with its line under README's "Read it back". A stream is either refused at its start naming a column,
or every reader reads back exactly the rows sent (Hypothesis). Then each class found, refused."""

from __future__ import annotations

import contextlib
import datetime
import glob
import itertools
import re
from collections.abc import Iterator
from pathlib import Path

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.flight as flight
import pyarrow.parquet as pq
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from flight_writer.lake.schemas import SchemaError, plan, readers_problem

from helpers import action, parquet_files, put, read_dataset, running, send

NAMES = st.one_of(
    st.sampled_from(["a", "b", "date", "hour", "", "a.b", "a b", "é", "日本", "\x00", "a\nb"]),
    st.sampled_from(["element", "array", "item", "key", "value", "list", "bag", "l_tuple"]),  # Parquet's list names
    st.text(max_size=4),
)
LEAVES = [
    pa.int8(), pa.int32(), pa.int64(), pa.uint64(), pa.float32(), pa.float64(), pa.string(), pa.large_string(),
    pa.bool_(), pa.timestamp("us"), pa.timestamp("ns", "UTC"), pa.timestamp("ms", "Europe/Paris"), pa.date32(),
    pa.dictionary(pa.int32(), pa.string()),
]  # fmt: skip
PARTITIONS = ["date", "hour"]  # the folders of the default rule (received time), last in every reader's table
DAY = datetime.datetime(2026, 1, 1)


@st.composite
def fields(draw, names: st.SearchStrategy[str], kinds: st.SearchStrategy[pa.DataType]) -> list[pa.Field]:
    """One level's fields (a schema's, a struct's): a name twice at one level in four."""
    unique = draw(st.sampled_from([True, True, True, False]))
    pairs = st.tuples(names, kinds)
    drawn = draw(
        st.lists(pairs, min_size=1, max_size=3, unique_by=lambda f: f[0])
        if unique
        else st.lists(pairs, min_size=1, max_size=3)
    )
    return [pa.field(*f) for f in drawn]


def arrow_types(names: st.SearchStrategy[str], depth: int = 2) -> st.SearchStrategy[pa.DataType]:
    leaves = st.sampled_from(LEAVES)
    if depth == 0:
        return leaves
    inner = arrow_types(names, depth - 1)
    return st.one_of(
        leaves,
        inner.map(pa.list_),
        fields(names, inner).map(pa.struct),
        st.tuples(st.sampled_from([pa.string(), pa.int32()]), inner).map(lambda kv: pa.map_(*kv)),
    )


def leaf_values(kind: pa.DataType) -> st.SearchStrategy:
    if pa.types.is_integer(kind):
        bits = kind.bit_width
        signed = pa.types.is_signed_integer(kind)
        return st.integers(-(2 ** (bits - 1)) if signed else 0, 2 ** (bits - 1) - 1 if signed else 2**bits - 1)
    if pa.types.is_floating(kind):
        return st.floats(width=kind.bit_width, allow_nan=False)
    if pa.types.is_boolean(kind):
        return st.booleans()
    if pa.types.is_timestamp(kind):  # whole milliseconds: what every unit sent holds exactly
        moments = st.datetimes(DAY.replace(year=1970), DAY.replace(year=2100))
        return moments.map(lambda d: d.replace(microsecond=d.microsecond // 1000 * 1000))
    if pa.types.is_date32(kind):
        return st.dates(datetime.date(1900, 1, 1), datetime.date(2200, 1, 1))
    return st.text(max_size=5)  # strings, dictionary-encoded ones


def column(draw, kind: pa.DataType, rows: int) -> pa.Array:
    """``rows`` values of ``kind``, some null, built from their parts (duplicate struct names included)."""
    valid = draw(st.lists(st.booleans(), min_size=rows, max_size=rows))
    mask = pa.array([not v for v in valid], pa.bool_())
    if pa.types.is_struct(kind):
        fields = [kind.field(i) for i in range(kind.num_fields)]
        return pa.StructArray.from_arrays([column(draw, f.type, rows) for f in fields], fields=fields, mask=mask)
    if pa.types.is_list(kind) or pa.types.is_map(kind):
        drawn = draw(st.lists(st.integers(0, 2), min_size=rows, max_size=rows))
        lengths = [n if v else 0 for n, v in zip(drawn, valid, strict=True)]
        offsets = pa.array(list(itertools.accumulate(lengths, initial=0)), pa.int32())
        if pa.types.is_list(kind):
            return pa.ListArray.from_arrays(offsets, column(draw, kind.value_type, sum(lengths)), kind, mask=mask)
        keys = [k if kind.key_type == pa.int32() else str(k) for n in lengths for k in range(n)]  # unique per row
        items = column(draw, kind.item_type, sum(lengths))
        return pa.MapArray.from_arrays(offsets, pa.array(keys, kind.key_type), items, kind, mask=mask)
    values = [draw(leaf_values(kind)) if v else None for v in valid]
    if pa.types.is_dictionary(kind):
        return pa.array(values, kind.value_type).dictionary_encode()
    return pa.array(values, kind)


@st.composite
def batches(draw) -> pa.RecordBatch:
    """A batch whose names (at every level) come from a few words, in one schema of three with their upper
    case too: repeats and names that differ only in case are common."""
    words = draw(st.lists(NAMES, min_size=2, max_size=6, unique=True))
    if draw(st.sampled_from([False, False, True])):
        words += [w.upper() for w in words if w.upper() not in words]
    names = st.sampled_from(words)
    schema = pa.schema(draw(fields(names, arrow_types(names))))
    rows = draw(st.integers(1, 3))
    return pa.RecordBatch.from_arrays([column(draw, f.type, rows) for f in schema], schema=schema)


def plain(array: pa.Array | pa.ChunkedArray, maps_as_lists: bool = False) -> list:
    """An array's values as Python values that every reader's output compares by: struct rows as (name,
    value) pairs (names may repeat), maps as (key, value) pairs (Polars: a list of key/value structs),
    timestamps in microseconds (what is stored), dictionaries decoded."""
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    kind = array.type
    nulls = array.is_null().to_pylist()
    if pa.types.is_dictionary(kind):
        return plain(array.dictionary_decode(), maps_as_lists)
    if pa.types.is_struct(kind):
        names = [kind.field(i).name for i in range(kind.num_fields)]
        children = [plain(child, maps_as_lists) for child in array.flatten()]
        return [
            None if null else tuple(zip(names, row, strict=True)) for null, *row in zip(nulls, *children, strict=True)
        ]
    if pa.types.is_map(kind):
        out = []
        for i, null in enumerate(nulls):
            entries = None if null else array[i].values
            pairs = (
                [] if entries is None else list(zip(*(plain(c, maps_as_lists) for c in entries.flatten()), strict=True))
            )
            out.append(None if null else [(("key", k), ("value", v)) if maps_as_lists else (k, v) for k, v in pairs])
        return out
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_list_view(kind):
        return [None if null else plain(array[i].values, maps_as_lists) for i, null in enumerate(nulls)]
    if pa.types.is_timestamp(kind):
        return array.cast(pa.timestamp("us", kind.tz)).to_pylist()
    return array.to_pylist()


def shape(kind: pa.DataType, maps_as_lists: bool = False) -> tuple | None:
    """The names inside a type (structs' fields, whatever holds them), which values alone do not show when
    there are none."""
    if pa.types.is_dictionary(kind):
        return shape(kind.value_type, maps_as_lists)
    if pa.types.is_struct(kind):
        return ("struct", *((f.name, shape(f.type, maps_as_lists)) for f in kind))
    if pa.types.is_map(kind):
        key, value = shape(kind.key_type, maps_as_lists), shape(kind.item_type, maps_as_lists)
        return ("list", ("struct", ("key", key), ("value", value))) if maps_as_lists else ("map", key, value)
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_list_view(kind):
        return ("list", shape(kind.value_type, maps_as_lists))
    return None


def rows_of(table: pa.Table, maps_as_lists: bool = False) -> list[tuple[str, tuple | None, list]]:
    """Each column's name, the names inside its type, and its values."""
    return [
        (name, shape(col.type, maps_as_lists), plain(col, maps_as_lists))
        for name, col in zip(table.column_names, table.columns, strict=True)
    ]


def read_pyarrow_files(path: Path) -> pa.Table:
    return pa.concat_tables([pq.read_table(f) for f in sorted(glob.glob(f"{path}/**/*.parquet", recursive=True))])


def unified(path: Path) -> pa.Schema:
    files = glob.glob(f"{path}/**/*.parquet", recursive=True)
    return pa.unify_schemas([pq.read_schema(f) for f in files], promote_options="permissive")


def read_pyarrow_dataset(path: Path) -> pa.Table:
    folders = ds.dataset(path, format="parquet", partitioning="hive").partitioning.schema
    return ds.dataset(
        path, format="parquet", partitioning="hive", schema=pa.unify_schemas([unified(path), folders])
    ).to_table()


def read_polars(path: Path) -> pa.Table:
    return (
        pl.scan_parquet(
            f"{path}/**/*.parquet",
            hive_partitioning=True,
            missing_columns="insert",
            schema=pl.from_arrow(unified(path).empty_table()).schema,
            cast_options=pl.ScanCastOptions(integer_cast="upcast", float_cast="upcast"),
        )
        .collect()
        .to_arrow()
    )


def read_duckdb(path: Path) -> pa.Table:
    with duckdb.connect() as db:
        return db.sql(
            "SELECT * FROM read_parquet($glob, hive_partitioning = true, union_by_name = true)",
            params={"glob": f"{path}/**/*.parquet"},
        ).to_arrow_table()


READERS = {  # reader -> (read, partition columns it adds, maps read as lists of key/value structs)
    "pyarrow.parquet.read_table": (read_pyarrow_files, [], False),
    "pyarrow.dataset": (read_pyarrow_dataset, PARTITIONS, False),
    "polars": (read_polars, PARTITIONS, True),
    "duckdb": (read_duckdb, PARTITIONS, False),
}


def misreads(path: Path, sent: pa.RecordBatch) -> dict[str, str]:
    """Each reader that fails on the dataset at ``path`` or reads back other than ``sent``: what it did."""
    out = {}
    for reader, (read, partitions, maps_as_lists) in READERS.items():
        expected = rows_of(pa.Table.from_batches([sent]), maps_as_lists)
        try:
            got = rows_of(read(path), maps_as_lists)
        except (Exception, pl.exceptions.PanicException) as exc:  # Polars panics are BaseExceptions
            out[reader] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            continue
        if [name for name, *_ in got[len(expected) :]] != partitions:
            out[reader] = f"columns {[name for name, *_ in got]}"
        elif got[: len(expected)] != expected:
            out[reader] = f"read {got[: len(expected)]!r}, sent {expected!r}"
    return out


def names_in(kind: pa.DataType | pa.Schema) -> set[str]:
    """The names of a schema's columns and their struct fields (not the names Arrow gives list and map parts)."""
    if isinstance(kind, pa.Schema | pa.StructType):
        return {name for f in kind for name in {f.name} | names_in(f.type)}
    if pa.types.is_map(kind):
        return names_in(kind.key_type) | names_in(kind.item_type)
    if pa.types.is_list(kind):
        return names_in(kind.value_type)
    return set()


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[tuple[Path, flight.FlightClient]]:
    root = tmp_path_factory.mktemp("readers") / "data"
    with running(root) as svc, flight.connect(svc.location) as c:
        yield root, c


NEXT = itertools.count()


def written_directly(root: Path, batch: pa.RecordBatch) -> Path:
    """The batch as pyarrow writes it, in a dataset folder as the server's: what readers make of the schema
    without the server (nothing if pyarrow cannot write it)."""
    folder = root / f"direct-{next(NEXT)}"
    (folder / "date=2026-01-01" / "hour=9").mkdir(parents=True)
    with contextlib.suppress(pa.ArrowException):
        pq.write_table(pa.Table.from_batches([batch]), folder / "date=2026-01-01" / "hour=9" / "part.parquet")
    return folder


@settings(max_examples=60, deadline=None)
@given(batch=batches())
def test_a_schema_is_refused_at_its_start_or_every_reader_reads_back_what_was_sent(server, batch):
    """Refused at its start, naming a column, and only if a reader could not read it back (Spark, which
    refuses names that differ only in case, is not run here: tests/lake/test_spark.py); else read back as
    sent by every reader."""
    root, c = server
    name = f"readers-{next(NEXT)}"
    try:
        send(c, flight.FlightDescriptor.for_path(name), batch)
    except flight.FlightServerError as exc:
        message = str(exc)
        assert any(repr(n) in message for n in names_in(batch.schema)), f"the refusal names no column: {message}"
        action(c, "flush", {"dataset": name})
        assert not parquet_files(root, name)
        if "differ only in case" not in message:
            assert misreads(written_directly(root.parent / "direct", batch), batch), f"readable, refused: {message}"
        event(f"refused: {message.split(': ')[1 if message.startswith('dataset ') else 0]}")
        return
    action(c, "flush", {"dataset": name})
    assert not (problems := misreads(root / name, batch)), f"{batch.schema}: {problems}"
    event("read back")


def struct_of(*names: str) -> pa.StructType:
    return pa.struct([(name, pa.int64()) for name in names])


def test_readers_problem_names_each_class_at_any_level():
    def problem(*fields) -> str | None:
        return readers_problem(pa.schema(fields))

    assert problem(("a", pa.int64()), ("a", pa.string())).startswith("column 'a' appears twice: pyarrow")
    assert problem(("s", struct_of("x", "x"))).startswith("field 'x' of column 's' appears twice: Polars")
    deep = pa.list_(pa.map_(pa.string(), pa.struct([("t", struct_of("y", "y"))])))
    assert problem(("l", deep)).startswith("field 'y' of column 'l.t' appears twice")
    assert problem(("a", pa.int64()), ("A", pa.int64())).startswith("columns 'a' and 'A' differ only in case")
    assert problem(("é", pa.int64()), ("É", pa.int64())).startswith("columns 'é' and 'É' differ only in case")
    assert problem(("s", struct_of("x", "X"))).startswith("fields 'x' and 'X' of column 's' differ only in case")
    keyed = pa.map_(struct_of("k", "K"), pa.int64())
    assert problem(("m", keyed)).startswith("fields 'k' and 'K' of column 'm' differ only in case")
    assert problem(("", pa.int64())).startswith("column '' has an empty name: DuckDB reads it under another")
    assert problem(("s", pa.list_(struct_of("")))).startswith("field '' of column 's' has an empty name")
    assert problem(("a\x00b", pa.int64())).startswith("column 'a\\x00b' has a NUL character in its name")
    assert problem(("d", pa.dictionary(pa.int32(), pa.string())), ("s", struct_of("\x00"))).startswith(
        "field '\\x00' of column 's' has a NUL character"
    )


def test_readers_problem_takes_names_every_reader_reads():
    fine = [
        ("a.b", pa.int64()),
        ("a b", pa.int64()),
        ("日本", pa.int64()),
        ("ß", pa.int64()),
        ("SS", pa.int64()),  # Spark compares one character at a time: 'ß' is not 'SS'
        ("s", struct_of("s", "date", "hour", "a.b")),  # a name again one level down, partition names inside
        ("t", struct_of("x")),
        ("u", struct_of("x")),  # the same field name in two structs
        ("m", pa.map_(struct_of("k"), struct_of("k"))),  # and in a map's key and value
        ("l", pa.list_(struct_of("element", "item"))),
    ]
    assert readers_problem(pa.schema(fine)) is None


def test_evolve_refuses_a_column_that_differs_only_in_case_from_the_datasets():
    dataset = pa.schema([("a", pa.int64())])
    with pytest.raises(SchemaError, match="column 'A' differs only in case from the dataset's column 'a'"):
        plan("evolve", dataset, pa.schema([("A", pa.int64())]), None)
    assert plan("evolve", dataset, pa.schema([("a", pa.int32()), ("b", pa.int64())]), None).names == ["a", "b"]


REFUSED = {
    "a name twice": (
        pa.record_batch([pa.array([1]), pa.array(["x"])], names=["a", "a"]),
        "column 'a' appears twice",
    ),
    "a field name twice": (
        pa.record_batch([pa.StructArray.from_arrays([pa.array([1]), pa.array([2])], names=["x", "x"])], names=["s"]),
        "field 'x' of column 's' appears twice",
    ),
    "names that differ only in case": (
        pa.record_batch([pa.array([1]), pa.array([2])], names=["a", "A"]),
        "columns 'a' and 'A' differ only in case",
    ),
    "field names that differ only in case": (
        pa.record_batch([pa.array([[{"x": 1, "X": 2}]], pa.list_(struct_of("x", "X")))], names=["l"]),
        "fields 'x' and 'X' of column 'l' differ only in case",
    ),
    "an empty name": (pa.record_batch([pa.array([1])], names=[""]), "column '' has an empty name"),
    "an empty field name": (
        pa.record_batch([pa.StructArray.from_arrays([pa.array([1])], names=[""])], names=["s"]),
        "field '' of column 's' has an empty name",
    ),
    "a NUL in a name": (pa.record_batch([pa.array([1])], names=["a\x00b"]), "column 'a\\x00b' has a NUL character"),
}


@pytest.mark.parametrize("case", REFUSED)
def test_a_schema_readers_cannot_read_is_refused_at_its_start_and_the_server_goes_on(client, data_root, case):
    batch, message = REFUSED[case]
    with pytest.raises(flight.FlightServerError, match=re.escape(message)):
        send(client, flight.FlightDescriptor.for_path("bad"), batch)
    put(client, "good", [pa.record_batch({"a": [1, 2]})])
    action(client, "flush")
    assert not parquet_files(data_root, "bad")
    assert read_dataset(data_root, "good").column("a").to_pylist() == [1, 2]


def test_a_column_that_differs_only_in_case_from_a_partition_field_is_refused(data_root):
    """The field comes back as a folder column beside the file's: DuckDB silently takes the folder's values
    for the file's column (and drops it), Spark refuses the files."""
    with running(data_root, datasets={"fields": ["service"]}) as svc, flight.connect(svc.location) as c:
        batch = pa.record_batch({"service": ["api"], "Service": [7]})
        with pytest.raises(flight.FlightServerError, match="columns 'service' and 'Service' differ only in case"):
            send(c, flight.FlightDescriptor.for_path("svc"), batch)
        put(c, "svc", [pa.record_batch({"service": ["api"], "n": [7]})])
        action(c, "flush")
    assert read_dataset(data_root, "svc").column("n").to_pylist() == [7]


def test_evolve_refuses_a_stream_that_adds_a_column_differing_only_in_case(data_root):
    """Each stream's schema alone is readable; the dataset's files would hold both names."""
    with running(data_root, datasets={"schema": "evolve"}) as svc, flight.connect(svc.location) as c:
        put(c, "ev", [pa.record_batch({"a": [1]})])
        with pytest.raises(flight.FlightServerError, match="column 'A' differs only in case from the dataset's column"):
            send(c, flight.FlightDescriptor.for_path("ev"), pa.record_batch({"A": [2]}))
        put(c, "ev", [pa.record_batch({"a": [3], "b": [4]})])
        action(c, "flush")
    assert {name for f in parquet_files(data_root, "ev") for name in pq.read_schema(f).names} == {"a", "b"}
    assert sorted(read_duckdb(data_root / "ev").column("a").to_pylist()) == [1, 3]
