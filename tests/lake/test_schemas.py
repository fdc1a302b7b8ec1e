"""Schema modes (separate, evolve, strict) and declared columns: what joins a file, what is cast, what is
refused with a message naming the column; read back with DuckDB's union_by_name and pyarrow."""

from __future__ import annotations

import duckdb
import pyarrow as pa
import pyarrow.flight as flight
import pyarrow.parquet as pq
import pytest

from helpers import action, answered_then_refused, parquet_files, put, read_dataset, running, send


def batch(**columns) -> pa.RecordBatch:
    return pa.record_batch(columns)


A = batch(n=pa.array([1, 2], pa.int64()), name=pa.array(["a", "b"]))
B = batch(n=pa.array([3], pa.int32()), name=pa.array(["c"]), extra=pa.array([1.5]))  # adds a column, narrower n


def test_evolve_joins_streams_of_changing_shapes_in_one_file(data_root):
    """A first file for A, then one for everything after the dataset's schema took B's column in (with
    schema = separate: a file per flip)."""
    with running(data_root, datasets={"schema": "evolve"}) as svc, flight.connect(svc.location) as c:
        put(c, "ev", [A])
        put(c, "ev", [B])  # n int32 -> the dataset's int64; extra is new
        put(c, "ev", [A])  # flips back: stored under the unified schema, no new file
        put(c, "ev", [B])
        put(c, "ev", [batch(n=pa.array([9], pa.int64()))])  # name and extra left out: nulls
        action(c, "flush")
    first, unified = sorted(parquet_files(data_root, "ev"))  # part names start with their first seq
    assert pq.read_schema(first).names == ["n", "name"]
    table = pq.read_table(unified)
    assert table.schema.names == ["n", "name", "extra"] and table.schema.field("n").type == pa.int64()
    assert table.column("n").to_pylist() == [3, 1, 2, 3, 9]
    assert table.column("extra").to_pylist() == [1.5, None, None, 1.5, None]


def test_evolve_refuses_a_type_change_naming_the_column_and_goes_on(data_root):
    with running(data_root, datasets={"schema": "evolve"}) as svc, flight.connect(svc.location) as c:
        put(c, "ev", [A])
        with pytest.raises(
            flight.FlightServerError, match=r"column 'n' is int64 in the dataset; the stream sends string"
        ):
            send(c, flight.FlightDescriptor.for_path("ev"), batch(n=pa.array(["x"])))
        put(c, "ev", [A])
        action(c, "flush")
    assert read_dataset(data_root, "ev").num_rows == 4


def test_evolve_continues_from_the_schema_in_storage_after_a_restart(data_root):
    with running(data_root, datasets={"schema": "evolve"}) as svc, flight.connect(svc.location) as c:
        put(c, "ev", [A])
        action(c, "flush")
    with running(data_root, datasets={"schema": "evolve"}) as svc, flight.connect(svc.location) as c:
        with pytest.raises(flight.FlightServerError, match="column 'name' is string in the dataset"):
            send(c, flight.FlightDescriptor.for_path("ev"), batch(name=pa.array([1])))
        put(c, "ev", [B])
        action(c, "flush")
    rows = duckdb.sql(
        f"SELECT n, extra FROM read_parquet('{data_root}/ev/**/*.parquet', union_by_name = true) ORDER BY n"
    ).fetchall()
    assert rows == [(1, None), (2, None), (3, 1.5)]


def test_strict_takes_the_first_schema_and_refuses_others_naming_columns(data_root):
    with running(data_root, datasets={"schema": "strict"}) as svc, flight.connect(svc.location) as c:
        put(c, "st", [A])
        put(c, "st", [batch(n=pa.array([5], pa.int32()), name=pa.array(["e"]))])  # a safe cast: taken
        message = r"column 'extra' is not in the dataset's schema"
        with pytest.raises(flight.FlightServerError, match=message):
            send(c, flight.FlightDescriptor.for_path("st"), B)
        with pytest.raises(
            flight.FlightServerError, match=r"column 'name' \(string\) of the dataset's schema is missing"
        ):
            send(c, flight.FlightDescriptor.for_path("st"), batch(n=pa.array([1])))
        action(c, "flush")
    table = read_dataset(data_root, "st")
    assert table.column("n").to_pylist() == [1, 2, 5] and table.schema.field("n").type == pa.int64()


def test_declared_columns_cast_require_and_refuse_nulls(data_root):
    rule = {
        "rules": [{"match": "orders", "schema": "strict", "columns": {"Id": "int64 not null", "note": "large_string"}}]
    }
    good = batch(Id=pa.array([1, 2], pa.int32()), note=pa.array(["x", None]))
    nulls = batch(Id=pa.array([3, None], pa.int32()), note=pa.array(["y", "z"]))
    with running(data_root, datasets=rule) as svc, flight.connect(svc.location) as c:
        # the second batch is refused whole: nothing of it stored
        answered_then_refused(c, "orders", good, nulls, r"column 'Id' may not be null .* has 1 nulls")
        with pytest.raises(
            flight.FlightServerError, match=r"column 'Id' is declared \(int64\) and the stream does not"
        ):
            send(c, flight.FlightDescriptor.for_path("orders"), batch(note=pa.array(["q"])))
        with pytest.raises(flight.FlightServerError, match=r"column 'Id' is string; declared int64, no safe cast"):
            send(c, flight.FlightDescriptor.for_path("orders"), batch(Id=pa.array(["1"]), note=pa.array(["q"])))
        put(c, "other", [batch(Id=pa.array(["free"]))])  # the rule matches "orders" only
        action(c, "flush")
    table = read_dataset(data_root, "orders")
    assert table.schema.field("Id").type == pa.int64() and table.schema.field("note").type == pa.large_string()
    assert table.column("Id").to_pylist() == [1, 2]


def test_separate_keeps_each_schema_in_its_own_file(data_root):
    with running(data_root) as svc, flight.connect(svc.location) as c:
        put(c, "sep", [A])
        put(c, "sep", [B])
        action(c, "flush")
    assert len(parquet_files(data_root, "sep")) == 2


def test_separate_refuses_a_column_that_differs_only_in_case_from_the_datasets_also_after_a_restart(data_root):
    """Each stream keeps its schema, but readers read the files together: 'a' in one file and 'A' in another
    are one column to Spark (which refuses them) and a renamed one to DuckDB."""
    lower, upper = batch(a=pa.array([1])), batch(A=pa.array([2]))
    with running(data_root, datasets={"schema": "separate"}) as svc, flight.connect(svc.location) as c:
        put(c, "cases", [lower])
        with pytest.raises(flight.FlightServerError, match=r"column 'A' differs only in case .* column 'a'"):
            send(c, flight.FlightDescriptor.for_path("cases"), upper)
        put(c, "cases", [batch(a=pa.array([3]), b=pa.array(["x"]))])  # another schema, same names: taken
        action(c, "flush")
    with running(data_root, datasets={"schema": "separate"}) as svc, flight.connect(svc.location) as c:
        with pytest.raises(flight.FlightServerError, match=r"column 'B' differs only in case .* column 'b'"):
            send(c, flight.FlightDescriptor.for_path("cases"), batch(B=pa.array(["y"])))  # read from the files
        put(c, "other", [upper])  # another dataset: its own names
    assert len(parquet_files(data_root, "cases")) == 2


def test_separate_with_declared_columns_still_reads_the_names_in_storage(data_root):
    rules = {"schema": "separate", "columns": {"id": "int64"}}
    with running(data_root, datasets=rules) as svc, flight.connect(svc.location) as c:
        put(c, "declared", [batch(id=pa.array([1]), extra=pa.array(["x"]))])
        action(c, "flush")
    refused = pytest.raises(flight.FlightServerError, match=r"column 'Extra' differs only in case .* column 'extra'")
    with running(data_root, datasets=rules) as svc, flight.connect(svc.location) as c, refused:
        send(c, flight.FlightDescriptor.for_path("declared"), batch(id=pa.array([2]), Extra=pa.array(["y"])))


def test_declared_columns_rule_over_a_dataset_that_has_files(data_root):
    put_first = batch(id=pa.array([1], pa.int32()), note=pa.array(["a"]))
    with running(data_root) as svc, flight.connect(svc.location) as c:
        put(c, "later", [put_first])
        action(c, "flush")
    rule = {"rules": [{"match": "later", "columns": {"id": "int64 not null"}}]}
    with running(data_root, datasets=rule) as svc, flight.connect(svc.location) as c:
        with pytest.raises(flight.FlightServerError, match=r"column 'id' may not be null"):
            send(c, flight.FlightDescriptor.for_path("later"), batch(id=pa.array([None, 5], pa.int32())))
        put(c, "later", [batch(id=pa.array([7], pa.int32()))])  # note left out: a null
        action(c, "flush")
    newest = max(parquet_files(data_root, "later"), key=lambda p: p.stat().st_mtime_ns)  # seqs restart at 1
    assert pq.read_schema(newest).field("id").type == pa.int64()


def test_a_producers_non_null_field_is_no_constraint_under_evolve(data_root):
    strict_first = pa.record_batch([pa.array([1])], schema=pa.schema([pa.field("x", pa.int64(), nullable=False)]))
    with running(data_root) as svc, flight.connect(svc.location) as c:
        put(c, "nn", [strict_first])
        put(c, "nn", [batch(x=pa.array([None, 2], pa.int64()))])
        put(c, "nn", [batch(y=pa.array(["only y"]))])  # x left out: nulls
        action(c, "flush")
    rows = duckdb.sql(
        f"SELECT x, y FROM read_parquet('{data_root}/nn/**/*.parquet', union_by_name = true) ORDER BY x, y"
    ).fetchall()
    assert rows == [(1, None), (2, None), (None, "only y"), (None, None)]  # DuckDB sorts nulls last


def test_a_partition_field_added_to_a_dataset_with_files(data_root):
    kv = batch(k=pa.array(["a", "b"]), v=pa.array([1, 2]))
    with running(data_root) as svc, flight.connect(svc.location) as c:
        put(c, "kv", [kv])
        action(c, "flush")
    with running(data_root, datasets={"fields": ["k"]}) as svc, flight.connect(svc.location) as c:
        [reply] = put(c, "kv", [kv])
        assert len(reply["seqs"]) == 2
        action(c, "flush")
    assert sorted(p.parent.name for p in parquet_files(data_root, "kv") if p.parent.name.startswith("k=")) == [
        "k=a",
        "k=b",
    ]


def test_evolve_starts_from_the_newest_file_when_the_memory_queue_restarted_its_seqs(data_root):
    for columns in ({"a": pa.array([1])}, {"a": pa.array([2]), "b": pa.array(["new"])}):  # seq 1 both times
        with running(data_root) as svc, flight.connect(svc.location) as c:
            put(c, "re", [pa.record_batch(columns)])
            action(c, "flush")
    with (
        running(data_root) as svc,
        flight.connect(svc.location) as c,
        pytest.raises(flight.FlightServerError, match="column 'b' is string in the dataset"),
    ):
        send(c, flight.FlightDescriptor.for_path("re"), batch(b=pa.array([1])))


def test_an_open_stream_follows_a_schema_another_stream_widened(data_root):
    """A long-lived stream began on {n, name}; another added "extra": the first one's later batches are
    stored under the unified schema too, and after a restart the dataset's schema still has "extra"."""
    with running(data_root) as svc, flight.connect(svc.location) as c:
        writer, reader = c.do_put(flight.FlightDescriptor.for_path("long"), A.schema)
        writer.write_batch(A)
        assert reader.read() is not None
        put(c, "long", [B])  # adds extra (double)
        writer.write_batch(A)  # the open stream's next batch: now with extra = null
        assert reader.read() is not None
        writer.close()
        action(c, "flush")
    files = sorted(parquet_files(data_root, "long"))
    assert [pq.read_schema(f).names for f in files] == [["n", "name"], ["n", "name", "extra"]]
    assert pq.read_table(files[1]).column("n").to_pylist() == [3, 1, 2]  # B's batch and A's second one
    with (
        running(data_root) as svc,
        flight.connect(svc.location) as c,
        pytest.raises(flight.FlightServerError, match="column 'extra' is double in the dataset"),
    ):
        send(c, flight.FlightDescriptor.for_path("long"), batch(extra=pa.array(["text"])))


def test_the_readme_read_lines_for_polars_and_pyarrow_see_every_column(data_root):
    import glob

    import polars as pl
    import pyarrow.dataset as ds

    with running(data_root) as svc, flight.connect(svc.location) as c:
        put(c, "rd", [B])  # with extra
        action(c, "flush")
        put(c, "rd", [batch(n=pa.array([7]))])  # a newer file without it would hide it from one-file readers
        action(c, "flush")
    path = str(data_root / "rd")
    files = glob.glob(f"{path}/**/*.parquet", recursive=True)
    schema = pa.unify_schemas([pq.read_schema(f) for f in files], promote_options="permissive")
    polars = pl.scan_parquet(
        f"{path}/**/*.parquet",
        hive_partitioning=True,
        missing_columns="insert",
        schema=pl.from_arrow(schema.empty_table()).schema,
        cast_options=pl.ScanCastOptions(integer_cast="upcast", float_cast="upcast"),  # n: int32, then int64
    ).collect()
    assert sorted(polars["extra"].to_list(), key=str) == [1.5, None]
    folders = ds.dataset(path, format="parquet", partitioning="hive").partitioning.schema
    table = ds.dataset(path, format="parquet", partitioning="hive", schema=pa.unify_schemas([schema, folders]))
    assert sorted(table.to_table().column("extra").to_pylist(), key=str) == [1.5, None]
