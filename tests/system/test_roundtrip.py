"""Data in equals data out: types, datasets, partitions, Parquet layout and metadata."""

from __future__ import annotations

import datetime as dt

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from helpers import action, parquet_files, put, read_dataset, running, without_metadata


def rich_batch(start: int, n: int) -> pa.RecordBatch:
    ids = list(range(start, start + n))
    tz_ts = pa.array(
        [dt.datetime(2026, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=i) for i in ids],
        pa.timestamp("us", tz="Europe/Paris"),
    )
    return pa.record_batch(
        {
            "id": pa.array(ids, pa.int64()),
            "name": pa.array([f"span-{i}" if i % 7 else None for i in ids]),
            "ts": tz_ts,
            "tags": pa.array([[f"t{i % 3}", "x"] if i % 5 else [] for i in ids], pa.list_(pa.string())),
            "attrs": pa.array(
                [{"k": i, "v": f"v{i}", "ok": i % 2 == 0} for i in ids],
                pa.struct([("k", pa.int32()), ("v", pa.string()), ("ok", pa.bool_())]),
            ),
            "labels": pa.array(
                [[("host", f"h{i % 4}"), ("zone", "z")] for i in ids], pa.map_(pa.string(), pa.string())
            ),
            "service": pa.array([f"svc-{i % 3}" for i in ids]).dictionary_encode(),
            "value": pa.array([i * 0.5 for i in ids], pa.float64()),
        }
    )


def test_rich_types_round_trip_value_for_value(client, data_root):
    batches = [rich_batch(i * 100, 100) for i in range(5)]
    replies = put(client, "traces", batches)
    assert [r["rows"] for r in replies] == [100] * 5
    assert all(r["state"] == "queued" for r in replies)
    seqs = [r["seq"] for r in replies]
    assert seqs == sorted(seqs) and len(set(seqs)) == 5

    assert action(client, "flush")["durable_through"] == seqs[-1]
    got = read_dataset(data_root, "traces", sort_by="id")
    expected = pa.Table.from_batches(batches)
    # equal types (dictionary, time zone, nested; Parquet's compliant layout renames only the inner
    # fields of lists and maps, which schema equality ignores), then equal values row by row
    assert got.schema == expected.schema
    assert got.schema.field("service").type == pa.dictionary(pa.int32(), pa.string())
    assert got.schema.field("ts").type == pa.timestamp("us", tz="Europe/Paris")
    assert got.to_pylist() == expected.to_pylist()


def test_several_datasets_and_hive_layout_readable_by_duckdb(client, data_root):
    a = pa.record_batch({"x": pa.array(range(10), pa.int64())})
    b = pa.record_batch({"y": pa.array([f"s{i}" for i in range(4)])})
    put(client, "metrics", [a, a])
    put(client, "team1/logs", [b])
    put(client, "org/team2/events", [b, b, b])
    action(client, "flush")

    today = dt.datetime.now(dt.UTC)
    for ds, rows in [("metrics", 20), ("team1/logs", 4), ("org/team2/events", 12)]:
        files = parquet_files(data_root, ds)
        assert len(files) == 1, files
        rel = files[0].relative_to(data_root / ds)
        assert rel.parts[0].startswith("date=") and rel.parts[1].startswith("hour=")
        assert rel.name.startswith("part-") and rel.suffix == ".parquet"
        assert rel.parts[0] in (f"date={today:%Y-%m-%d}", f"date={today - dt.timedelta(hours=1):%Y-%m-%d}")
        glob = str(data_root / ds / "**" / "*.parquet")
        [(count, n_dates, hour)] = (
            duckdb.connect()
            .execute(
                f"select count(*), count(distinct date), any_value(hour) "
                f"from read_parquet('{glob}', hive_partitioning = true)"
            )
            .fetchall()
        )
        assert count == rows and n_dates == 1 and 0 <= int(hour) < 24


def test_small_batches_share_row_groups_and_metadata_records_seqs(client, data_root):
    batches = [pa.record_batch({"i": pa.array([i] * 10, pa.int32())}) for i in range(50)]
    replies = put(client, "small", batches)
    action(client, "flush")
    [f] = parquet_files(data_root, "small")
    meta = pq.ParquetFile(f).metadata
    assert meta.num_rows == 500
    assert meta.num_row_groups == 1  # never one row group per small batch
    kv = meta.metadata
    assert kv[b"flight_writer.dataset"] == b"small"
    assert int(kv[b"flight_writer.seq_min"]) == replies[0]["seq"]
    assert int(kv[b"flight_writer.seq_max"]) == replies[-1]["seq"]
    assert kv[b"flight_writer.seqs"] == f"{replies[0]['seq']}-{replies[-1]['seq']}".encode()
    assert b"flight_writer.version" in kv


def test_row_group_size_and_compression_follow_settings(data_root):
    import pyarrow.flight as flight

    with (
        running(data_root, writer={"row_group_rows": 1000, "compression": "snappy"}) as svc,
        flight.connect(svc.location) as c,
    ):
        put(c, "rg", [pa.record_batch({"i": pa.array(range(2500), pa.int64())})])
        action(c, "flush")
    [f] = parquet_files(data_root, "rg")
    meta = pq.ParquetFile(f).metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [1000, 1000, 500]
    assert meta.row_group(0).column(0).compression == "SNAPPY"


def test_files_roll_by_rows_and_by_bytes(data_root):
    import pyarrow.flight as flight

    batch = pa.record_batch({"i": pa.array(range(1000), pa.int64())})  # 8,000 Arrow bytes
    with (
        running(data_root, writer={"max_file_rows": 3000, "max_file_bytes": 1 << 30}) as svc,
        flight.connect(svc.location) as c,
    ):
        put(c, "byrows", [batch] * 7)
        action(c, "flush")
    assert sorted(pq.ParquetFile(f).metadata.num_rows for f in parquet_files(data_root, "byrows")) == [
        1000,
        3000,
        3000,
    ]
    with running(data_root, writer={"max_file_bytes": 16_000}) as svc, flight.connect(svc.location) as c:
        put(c, "bybytes", [batch] * 5)
        action(c, "flush")
    assert sorted(pq.ParquetFile(f).metadata.num_rows for f in parquet_files(data_root, "bybytes")) == [
        1000,
        2000,
        2000,
    ]


def test_a_different_schema_starts_a_new_file_with_schema_separate(data_root):
    import pyarrow.flight as flight

    one = pa.record_batch({"a": pa.array([1, 2], pa.int64())})
    two = pa.record_batch({"a": pa.array(["x"]), "b": pa.array([1.5])})
    with running(data_root, datasets={"schema": "separate"}) as svc, flight.connect(svc.location) as client:
        put(client, "mixed", [one])
        put(client, "mixed", [two])
        put(client, "mixed", [one])
        action(client, "flush")
    schemas = sorted(str(pq.read_schema(f).remove_metadata()) for f in parquet_files(data_root, "mixed"))
    assert len(schemas) == 2
    assert sum(pq.ParquetFile(f).metadata.num_rows for f in parquet_files(data_root, "mixed")) == 5


def test_flush_interval_writes_without_a_flush_call(data_root):
    import pyarrow.flight as flight

    with running(data_root, writer={"flush_interval": 0.2}) as svc, flight.connect(svc.location) as c:
        [reply] = put(c, "aged", [pa.record_batch({"i": [1, 2, 3]})])
        ack = action(c, "ack", {"seq": reply["seq"], "wait_ms": 30_000})
        assert ack["acks"][0]["state"] == "durable"
    assert without_metadata(read_dataset(data_root, "aged")).column("i").to_pylist() == [1, 2, 3]


def test_empty_stream_and_zero_row_batches_store_nothing(client, data_root):
    schema = pa.schema([("i", pa.int64())])
    assert put(client, "empty", [], schema=schema) == []
    replies = put(client, "zero", [pa.RecordBatch.from_pylist([], schema=schema)])
    assert replies[0]["rows"] == 0 and replies[0]["state"] == "queued"
    action(client, "flush")
    ack = action(client, "ack", {"seq": replies[0]["seq"]})
    assert ack["acks"] == [{"seq": replies[0]["seq"], "state": "durable"}]
    assert parquet_files(data_root) == []
