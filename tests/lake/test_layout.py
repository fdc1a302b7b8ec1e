"""Datasets every lake reader reads right: the type policy, partition folders (received time, event time,
fields), refused collisions and nesting; read back with pyarrow.dataset, DuckDB and Polars."""

from __future__ import annotations

import datetime

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.flight as flight
import pytest

from helpers import action, answered_then_refused, parquet_files, put, read_dataset, running, send

UTC = datetime.UTC


def at(*args: int) -> datetime.datetime:
    return datetime.datetime(*args, tzinfo=UTC)


def hive(root, dataset: str) -> pa.Table:
    """What pyarrow.dataset reads, partition columns included."""
    return ds.dataset(root / dataset, format="parquet", partitioning="hive").to_table()


def test_compatible_types_by_default_exact_on_request(data_root):
    batch = pa.record_batch(
        {
            "ts": pa.array([1_700_000_000_123_456_789], pa.timestamp("ns", "UTC")),
            "t": pa.array([3_600_000], pa.time32("ms")),
            "h": pa.array([1.5], pa.float16()),
            "spans": pa.array([[{"at": 5}]], pa.list_(pa.struct([("at", pa.timestamp("ns"))]))),
        }
    )
    rules = {"rules": [{"match": "exact", "types": "exact"}]}
    with running(data_root, datasets=rules) as svc, flight.connect(svc.location) as c:
        put(c, "compat", [batch])
        put(c, "exact", [batch])
        action(c, "flush")
    compat = read_dataset(data_root, "compat")
    assert compat.schema.field("ts").type == pa.timestamp("us", "UTC")
    assert compat.column("ts")[0].value == 1_700_000_000_123_456  # nanoseconds truncated
    assert compat.schema.field("t").type == pa.time64("us") and compat.column("t")[0].as_py() == datetime.time(1)
    assert compat.schema.field("h").type == pa.float32() and compat.column("h")[0].as_py() == 1.5
    assert compat.schema.field("spans").type == pa.list_(pa.struct([("at", pa.timestamp("us"))]))
    assert read_dataset(data_root, "exact").equals(pa.Table.from_batches([batch]))


def test_event_time_partitions_hour_without_zero_and_late_events_in_their_own(data_root):
    times = [at(2026, 11, 27, 9, 5), at(2026, 11, 27, 10, 59), at(2026, 11, 26, 23, 0), at(2026, 11, 27, 9, 30)]
    batch = pa.record_batch({"ts": pa.array(times, pa.timestamp("us", "UTC")), "n": pa.array(range(4))})
    rule = {"partition": "event", "time_column": "ts"}
    with running(data_root, datasets=rule) as svc, flight.connect(svc.location) as c:
        [reply] = put(c, "events", [batch])
        assert len(reply["seqs"]) == 3 and reply["seq"] == max(reply["seqs"])  # one seq per partition
        acks = action(c, "ack", {"seqs": reply["seqs"], "wait_ms": 0})["acks"]
        assert {a["state"] for a in acks} == {"queued"}
        action(c, "flush")
    folders = sorted(str(p.parent.relative_to(data_root / "events")) for p in parquet_files(data_root, "events"))
    assert folders == ["date=2026-11-26/hour=23", "date=2026-11-27/hour=10", "date=2026-11-27/hour=9"]
    table = hive(data_root, "events").sort_by("n")
    assert table.column("n").to_pylist() == [0, 1, 2, 3] and table.column("hour").to_pylist() == [9, 10, 23, 9]
    # DuckDB types hour as an integer (a zero-padded folder made it VARCHAR): hour < 10 works
    rows = duckdb.sql(
        f"SELECT n FROM read_parquet('{data_root}/events/**/*.parquet', hive_partitioning = true) "
        "WHERE hour < 10 ORDER BY n"
    ).fetchall()
    assert rows == [(0,), (3,)]
    polars = pl.read_parquet(f"{data_root}/events/**/*.parquet", hive_partitioning=True).sort("n")
    assert polars["hour"].to_list() == [9, 10, 23, 9] and polars["date"].cast(pl.String).to_list()[2] == "2026-11-26"


def test_field_partitions_leave_the_column_to_the_folder_names(data_root):
    batch = pa.record_batch(
        {"service": pa.array(["api", "db", None, "api", "a b/c"]), "n": pa.array(range(5), pa.int64())}
    )
    rule = {"granularity": "day", "fields": ["service"]}
    with running(data_root, datasets=rule) as svc, flight.connect(svc.location) as c:
        [reply] = put(c, "svc", [batch], ids=["b1"])
        assert len(reply["seqs"]) == 4 and reply["id"] == "b1"
        [again] = put(c, "svc", [batch], ids=["b1"])  # re-sent: splits the same way, every piece known
        assert again["duplicate"] and again["seqs"] == reply["seqs"]
        # a producer's own id that looks like a piece's is a batch of its own, and so is "#" in any id
        others = [batch.slice(0, 1), batch.slice(1, 1), batch.slice(0, 1)]
        replies = put(c, "svc", others, ids=["b1#1", "b1##1", "b1#1"])
        assert [r.get("duplicate", False) for r in replies] == [False, False, True]
        assert replies[2]["seq"] == replies[0]["seq"] and replies[0]["seq"] > max(reply["seqs"])
        action(c, "flush")
    assert hive(data_root, "svc").num_rows == 7
    files = parquet_files(data_root, "svc")
    names = sorted(p.parent.name for p in files)
    assert names == ["service=__HIVE_DEFAULT_PARTITION__", "service=a b%2Fc", "service=api", "service=db"]
    assert read_dataset(data_root, "svc").column_names == ["n"]  # service is in the folder names only
    table = hive(data_root, "svc").sort_by("n")
    assert table.column("n").to_pylist() == [0, 0, 1, 1, 2, 3, 4]
    services = duckdb.sql(
        f"SELECT service FROM read_parquet('{data_root}/svc/**/*.parquet', hive_partitioning = true) ORDER BY n"
    ).fetchall()
    assert [s for (s,) in services] == ["api", "api", "db", "db", None, "api", "a b/c"]


def test_a_batch_in_too_many_partitions_is_refused_after_answering_the_others(data_root):
    rule = {"fields": ["service"], "max_partitions": "3"}
    few = pa.record_batch({"service": ["a", "b"], "n": [1, 2]})
    many = pa.record_batch({"service": ["a", "b", "c", "d"], "n": [1, 2, 3, 4]})
    with running(data_root, datasets=rule) as svc, flight.connect(svc.location) as c:
        answered_then_refused(c, "many", few, many, r"falls in 4 partitions, more than datasets\.max_partitions")
        action(c, "flush")
    assert sorted(read_dataset(data_root, "many").column("n").to_pylist()) == [1, 2]


@pytest.mark.parametrize("column", ["date", "Hour"])
def test_a_column_named_like_a_partition_column_is_refused(client, column):
    batch = pa.record_batch({column: [1], "n": [2]})
    with pytest.raises(flight.FlightServerError, match=f"column '{column}' has the name of the partition column"):
        send(client, flight.FlightDescriptor.for_path("collide"), batch)


def test_event_partitioning_needs_its_timestamp_column(data_root):
    rule = {"partition": "event", "time_column": "ts"}
    with running(data_root, datasets=rule) as svc, flight.connect(svc.location) as c:
        with pytest.raises(flight.FlightServerError, match="partitioned by event time from column 'ts'"):
            send(c, flight.FlightDescriptor.for_path("no-ts"), pa.record_batch({"n": [1]}))
        with pytest.raises(flight.FlightServerError, match=r"column 'ts' is string: .* needs a timestamp"):
            send(c, flight.FlightDescriptor.for_path("str-ts"), pa.record_batch({"ts": ["x"]}))


def test_datasets_that_would_nest_are_refused_also_after_a_restart(data_root):
    batch = pa.record_batch({"n": [1]})
    with running(data_root) as svc, flight.connect(svc.location) as c:
        put(c, "org/team", [batch])
        with pytest.raises(flight.FlightServerError, match="'org/team/spans' would nest inside dataset 'org/team'"):
            send(c, flight.FlightDescriptor.for_path("org", "team", "spans"), batch)
        put(c, "org/team-spans", [batch])  # beside it is fine
        action(c, "flush")
    with (
        running(data_root) as svc,  # known from storage now
        flight.connect(svc.location) as c,
        pytest.raises(flight.FlightServerError, match="'org' would nest around dataset"),
    ):
        send(c, flight.FlightDescriptor.for_path("org"), batch)
    assert read_dataset(data_root, "org/team").num_rows == 1


def test_an_event_time_no_folder_can_name_is_refused_and_the_writer_goes_on(data_root):
    rule = {"partition": "event", "time_column": "t"}
    far = pa.record_batch({"t": pa.array([10**17], pa.timestamp("s"))})
    with running(data_root, datasets=rule) as svc, flight.connect(svc.location) as c:
        with pytest.raises(flight.FlightServerError, match=r"column 't' has an event time outside the years 1-9999"):
            send(c, flight.FlightDescriptor.for_path("far"), far)
        put(c, "near", [pa.record_batch({"t": pa.array([at(2026, 1, 2, 3)], pa.timestamp("s"))})])
        action(c, "flush")
    assert [p.parent.name for p in parquet_files(data_root, "near")] == ["hour=3"]


def test_wal_batches_from_before_a_rule_change_go_to_received_time_folders(tmp_path):
    from flight_writer.queue import WalQueue

    wal = tmp_path / "wal"
    queue = WalQueue(str(wal), 1 << 30)
    old = pa.record_batch({"v": [1, 2]})
    queue.put("old", old.schema.serialize().to_pybytes(), old, 5.0)
    queue.close()
    settings = {"queue": {"type": "wal", "path": str(wal)}, "datasets": {"partition": "event", "time_column": "t"}}
    with running(tmp_path / "data", **settings) as svc, flight.connect(svc.location) as c:
        assert action(c, "flush")["durable_through"] == 1  # the writer is alive and stored it
    [file] = parquet_files(tmp_path / "data", "old")
    assert file.parent.name.startswith("hour=") and read_dataset(tmp_path / "data", "old").num_rows == 2


def test_a_dataset_with_more_open_partitions_than_max_partitions_writes_out_its_oldest(data_root):
    rule = {"rules": [{"match": "hours", "partition": "event", "time_column": "t", "max_partitions": 2}]}
    with running(data_root, datasets=rule) as svc, flight.connect(svc.location) as c:
        for hour in (1, 2, 3):  # three partitions, a batch each: the third seals the first
            put(c, "hours", [pa.record_batch({"t": pa.array([at(2026, 1, 2, hour)], pa.timestamp("s"))})])
        put(c, "other", [pa.record_batch({"n": [1]})])  # another dataset is not counted with it
        [first] = action(c, "ack", {"seq": 1, "wait_ms": 30_000})["acks"]
        assert first["state"] == "durable" and first["file"].startswith("hours/date=2026-01-02/hour=1/")
        assert [a["state"] for a in action(c, "ack", {"seqs": [2, 3, 4]})["acks"]] == ["queued"] * 3
        assert action(c, "status")["buffers_sealed_early"] == 1
