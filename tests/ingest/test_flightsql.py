"""Flight SQL bulk ingestion with the real ADBC driver (adbc-driver-flightsql), Polars and pandas."""

from __future__ import annotations

import os
import warnings

import adbc_driver_flightsql.dbapi as dbapi
import adbc_driver_manager
import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flight_writer.ingest.flightsql import messages as flightsql

from helpers import parquet_files, read_dataset, running

TABLE = pa.table({"a": pa.array([1, 2, 3], pa.int64()), "b": ["x", "y", "z"]})


@pytest.fixture
def conn(service):
    # autocommit=True: the server has no transactions, and says so when asked (GetSqlInfo)
    with dbapi.connect(service.location, autocommit=True) as c:
        yield c


def ingest(conn, table: str, data, mode: str, **kw) -> int:
    with conn.cursor() as cur:
        return cur.adbc_ingest(table, data, mode=mode, **kw)


def test_connects_and_describes_itself(conn):
    info = conn.adbc_get_info()
    assert info["vendor_name"] == "flight-writer" and info["vendor_arrow_version"] == pa.__version__


def test_create_then_append_returns_row_counts_and_data_is_durable(conn, data_root):
    assert ingest(conn, "events", TABLE, "create") == 3
    assert len(parquet_files(data_root, "events")) == 1  # durable when adbc_ingest returns
    assert ingest(conn, "events", TABLE.slice(1), "append") == 2
    assert read_dataset(data_root, "events", sort_by="a").to_pylist() == [
        {"a": 1, "b": "x"},
        {"a": 2, "b": "y"},
        {"a": 2, "b": "y"},
        {"a": 3, "b": "z"},
        {"a": 3, "b": "z"},
    ]


def test_create_on_existing_fails_and_changes_nothing(conn, data_root):
    ingest(conn, "once", TABLE, "create")
    with pytest.raises(adbc_driver_manager.OperationalError, match="ALREADY_EXISTS: table 'once' already has data"):
        ingest(conn, "once", TABLE, "create")
    assert read_dataset(data_root, "once").num_rows == 3


def test_append_on_missing_fails(conn, data_root):
    with pytest.raises(adbc_driver_manager.OperationalError, match="NOT_FOUND: table 'ghost' does not exist"):
        ingest(conn, "ghost", TABLE, "append")
    assert parquet_files(data_root) == []


def test_append_with_another_schema_fails_unless_allowed(conn, data_root):
    ingest(conn, "typed", TABLE, "create")
    other = pa.table({"a": pa.array([1.5]), "c": ["q"]})
    with pytest.raises(
        adbc_driver_manager.OperationalError,
        match=r"table 'typed' has schema \(a: int64, b: string\); the data has \(a: double, c: string\)",
    ):
        ingest(conn, "typed", other, "append")
    assert read_dataset(data_root, "typed").num_rows == 3


def test_schema_change_allowed_by_setting(data_root):
    with (
        running(data_root, flight_sql={"allow_schema_change": True}) as svc,
        dbapi.connect(svc.location, autocommit=True) as c,
    ):
        ingest(c, "loose", TABLE, "create")
        assert ingest(c, "loose", pa.table({"z": [1.5]}), "append") == 1
    assert len(parquet_files(data_root, "loose")) == 2  # a file never mixes schemas


def test_create_append_and_catalog_schema_segments(conn, data_root):
    assert ingest(conn, "spans", TABLE, "create_append", catalog_name="org", db_schema_name="team") == 3
    assert ingest(conn, "spans", TABLE, "create_append", catalog_name="org", db_schema_name="team") == 3
    assert read_dataset(data_root, "org/team/spans").num_rows == 6


def test_replace_swaps_the_content_once_durable(conn, data_root):
    ingest(conn, "snap", TABLE, "create")
    ingest(conn, "snap", TABLE, "append")
    assert ingest(conn, "snap", TABLE.slice(0, 1), "replace") == 1
    assert read_dataset(data_root, "snap").to_pylist() == [{"a": 1, "b": "x"}]
    assert ingest(conn, "fresh", TABLE, "replace") == 3  # replace of nothing creates


def test_replace_may_change_column_types_under_evolve(conn, data_root):
    ingest(conn, "retype", TABLE, "create")
    retyped = pa.table({"a": ["one"], "b": [1.5]})  # evolve would refuse this as an append
    assert ingest(conn, "retype", retyped, "replace") == 1
    assert read_dataset(data_root, "retype").to_pylist() == [{"a": "one", "b": 1.5}]


def test_failed_replace_loses_nothing(conn, data_root):
    schema = pa.schema([("t", pa.timestamp("s"))])
    good = pa.table({"t": pa.array([0, 1], pa.timestamp("s"))})
    ingest(conn, "keep", good, "create")
    bad = pa.Table.from_arrays([pa.array([2**62], pa.timestamp("s"))], schema=schema)  # Parquet cannot hold it
    with pytest.raises(adbc_driver_manager.OperationalError, match="could not be stored in Parquet"):
        ingest(conn, "keep", bad, "replace")
    assert read_dataset(data_root, "keep").num_rows == 2  # the old content is still there


def test_a_failed_retyping_replace_leaves_the_old_data_and_schema(conn, data_root):
    old = pa.table({"a": pa.array([1, 2], pa.int64()), "t": pa.array([0, 1], pa.timestamp("s"))})
    ingest(conn, "retry", old, "create")
    good = pa.table({"a": ["x"], "t": pa.array([5], pa.timestamp("s"))})
    bad = pa.table({"a": ["y"], "t": pa.array([2**62], pa.timestamp("s"))})  # beyond microseconds: rejected
    with pytest.raises(adbc_driver_manager.OperationalError, match="could not be stored in Parquet"):
        ingest(conn, "retry", pa.concat_tables([good, bad]), "replace")  # two batches: one stored
    assert read_dataset(data_root, "retry").column("a").to_pylist() == [1, 2]  # the replace's rows are gone
    assert ingest(conn, "retry", old.slice(0, 1), "append") == 1  # the old schema still holds


def test_temporary_tables_and_queries_are_refused_clearly(conn):
    with pytest.raises(adbc_driver_manager.NotSupportedError, match="temporary tables are not supported"):
        ingest(conn, "tmp", TABLE, "create", temporary=True)
    # the driver tries a prepared statement, then a plain query: both are answered UNIMPLEMENTED
    with (
        conn.cursor() as cur,
        pytest.raises(
            adbc_driver_manager.NotSupportedError, match="Flight SQL command CommandStatementQuery is not supported"
        ),
    ):
        cur.execute("SELECT 1")


def test_many_batches_and_a_chunk_above_16_mib(service, data_root):
    many = pa.Table.from_batches([pa.record_batch({"i": pa.array(range(k * 50, k * 50 + 50))}) for k in range(300)])
    big = pa.table({"s": [os.urandom(1000).hex() for _ in range(10_000)]})  # one 20 MB chunk
    with dbapi.connect(service.location, autocommit=True) as c:
        assert ingest(c, "many", many, "create") == 15_000
        with pytest.raises(adbc_driver_manager.InternalError, match="larger than max"):
            ingest(c, "big", big, "create")  # the Go driver's own 16 MiB limit, before anything is sent
    options = {"adbc.flight.sql.client_option.with_max_msg_size": str(64 << 20)}
    with dbapi.connect(service.location, autocommit=True, db_kwargs=options) as c:
        assert ingest(c, "big", big, "create") == 10_000
    assert sorted(read_dataset(data_root, "many").column("i").to_pylist()) == list(range(15_000))
    assert read_dataset(data_root, "big").column("s").to_pylist() == big.column("s").to_pylist()


def test_ack_level_header_reaches_the_sql_door(service, data_root):
    options = {"adbc.flight.sql.rpc.call_header.x-flight-writer-ack": "queued"}
    with dbapi.connect(service.location, autocommit=True, db_kwargs=options) as c:
        assert ingest(c, "quick", TABLE, "create") == 3
    assert parquet_files(data_root, "quick") == []  # queued: returned before it was written
    bad = {"adbc.flight.sql.rpc.call_header.x-flight-writer-ack": "later"}
    with (
        dbapi.connect(service.location, autocommit=True, db_kwargs=bad) as c,
        pytest.raises(adbc_driver_manager.Error, match="x-flight-writer-ack must be one of"),
    ):
        ingest(c, "quick2", TABLE, "create")


def test_polars_write_database(conn, data_root):
    import polars as pl

    frame = pl.DataFrame({"service": ["api", "db"], "latency_ms": [12.5, 3.0]})
    assert frame.write_database("polars_spans", connection=conn, engine="adbc", if_table_exists="fail") == 2
    assert read_dataset(data_root, "polars_spans").to_pylist() == frame.to_dicts()


def test_pandas_to_sql(conn, data_root):
    import pandas as pd

    frame = pd.DataFrame({"host": ["a", "b", "c"], "cpu": [0.5, 0.25, 0.75]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # pandas: "only supports SQLAlchemy ... or sqlite3"
        frame.to_sql("pandas_hosts", conn, index=False, if_exists="append")
    assert read_dataset(data_root, "pandas_hosts", sort_by="host").to_pylist() == frame.to_dict("records")


def test_duckdb_reads_what_adbc_wrote(conn, data_root):
    ingest(conn, "duck", TABLE, "create")
    glob = f"{data_root}/duck/**/*.parquet"
    rows = duckdb.connect().execute(f"select a, b from read_parquet('{glob}', hive_partitioning=true) order by a")
    assert rows.fetchall() == [(1, "x"), (2, "y"), (3, "z")]


def test_protobuf_round_trip():
    value = b"\n\x04\x08\x01\x10\x02\x12\x06events\x1a\x04team\xc2>\x08\n\x01k\x12\x03val"
    cmd = flightsql.parse_ingest(value)
    assert (cmd.table, cmd.schema, cmd.if_not_exist, cmd.if_exists, cmd.options) == (
        "events",
        "team",
        "create",
        "append",
        {"k": "val"},
    )
    name, inner = flightsql.unpack_any(flightsql.pack_any(flightsql.INGEST, value))
    assert (name, inner) == (flightsql.INGEST, value)
    assert flightsql.update_result(3) == b"\x08\x03"
    with pytest.raises(flightsql.ProtobufError):
        flightsql.decode(b"\x12\x09short")


def test_datasets_are_listed_as_tables(conn):
    ingest(conn, "spans", TABLE, "create", catalog_name="org", db_schema_name="team")
    ingest(conn, "logs", TABLE, "create", db_schema_name="team")
    objects = conn.adbc_get_objects(depth="tables").read_all().to_pylist()
    tables = {
        (c["catalog_name"], s["db_schema_name"], t["table_name"])
        for c in objects
        for s in c["catalog_db_schemas"] or []
        for t in s["db_schema_tables"] or []
    }
    assert ("org", "team", "spans") in tables
    schema = conn.adbc_get_table_schema("spans", catalog_filter="org", db_schema_filter="team")
    assert schema == TABLE.schema


def test_pandas_appends_to_an_existing_table(conn, data_root):
    import pandas as pd

    frame = pd.DataFrame({"a": [7], "b": ["w"]})
    ingest(conn, "mixed", TABLE, "create")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        frame.to_sql("mixed", conn, index=False, if_exists="append")  # finds the table, so appends
    # pandas sends large_string where pyarrow sent string: the same Parquet column type, so accepted
    assert sum(pq.ParquetFile(f).metadata.num_rows for f in parquet_files(data_root, "mixed")) == 4


def test_table_name_patterns_match_as_like_and_cannot_freeze_the_server(conn):
    """A dozen % and a ! took a regular expression exponential time: the whole server froze."""
    ingest(conn, "spans_2026", TABLE, "create", db_schema_name="team")

    def tables(pattern: str) -> set[str]:
        objects = conn.adbc_get_objects(depth="tables", table_name_filter=pattern).read_all().to_pylist()
        return {
            t["table_name"] for c in objects for s in c["catalog_db_schemas"] or [] for t in s["db_schema_tables"] or []
        }

    assert tables("spans%") == {"spans_2026"} and tables("%_2026") == {"spans_2026"}
    assert tables("spans_202_") == {"spans_2026"} and tables("span") == set() and tables("%x%") == set()
    assert tables("%" * 12 + "!") == set()  # answers at once
    assert flightsql.like("%a%a%a%a%a%a%a%a%a%a%a%b", "a" * 300) is False
