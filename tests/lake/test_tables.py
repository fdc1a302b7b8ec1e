"""The table seam (lake/tables/base.py), one contract for every table it opens: Iceberg on a SQLite catalog and
on a PostgreSQL one, and Delta; each on a local root and on S3 (moto_server). Files are real Parquet files
written to the storage under Hive partition folders (date=/hour=/service=), committed through the seam, then
read back through the seam's scan and through each format's own readers (pyiceberg and Polars' scan_iceberg;
deltalake and Polars' scan_delta), a filter on a partition column included: partition values live only in the
table, never in the files, so a table that recorded them as null (pyiceberg's add_files does) filters to
nothing."""

from __future__ import annotations

import datetime as dt
import io
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flight_writer.config import DatasetSettings, StorageSettings, TableSettings
from flight_writer.lake.storage import Storage
from flight_writer.lake.tables import CommitConflict, DataFile, Table, Tables, make_tables
from flight_writer.write.stored import Stored

import emulators

DATASET = "team/spans"
DAY = "2026-12-06"
NULL = "__HIVE_DEFAULT_PARTITION__"  # the layout's null partition folder (lake/layout.py)
KINDS = ["iceberg-sqlite", "iceberg-postgres", "delta"]
WHERE = ["fs", "s3"]
EVERY = [(k, w) for w in WHERE for k in KINDS]
ICEBERG = [p for p in EVERY if p[0].startswith("iceberg")]
DELTA = [p for p in EVERY if p[0] == "delta"]


def lake_id(param: tuple[str, str]) -> str:
    return f"{param[0]}-{param[1]}"


@pytest.fixture(scope="module")
def moto() -> Iterator[emulators.Emulator]:
    emulator = emulators.start("s3")
    yield emulator
    emulator.stop()


@dataclass
class Lake:
    """One table format on one storage, as flight-writer opens it (``tables``) and as an outside reader
    would (``reader_*``)."""

    fmt: str
    storage: Storage
    tables: Tables
    base: str  # where datasets are, as the table libraries name it
    catalog_uri: str  # Iceberg's
    namespace: str
    iceberg_io: dict[str, str]
    delta_options: dict[str, str]

    def store(self, folders: str, table: pa.Table, dataset: str = DATASET) -> DataFile:
        """``table`` written as a Parquet file under the dataset's ``folders``, described as the writer's
        Stored event describes it."""
        buf = io.BytesIO()
        pq.write_table(table, buf)
        data = buf.getvalue()
        name = f"{folders}/part-{uuid.uuid4().hex[:12]}.parquet"
        path = f"{dataset}/{name}"
        self.storage.write(path, data)
        footer = pq.ParquetFile(pa.BufferReader(data)).metadata
        return DataFile(name, len(data), table.num_rows, table.schema, Stored.partition_of(path, dataset), footer)

    def open(self, schema: pa.Schema | None = None, dataset: str = DATASET) -> Table | None:
        return self.tables.open(dataset, schema)

    def iceberg_table(self, dataset: str = DATASET) -> Any:
        """The table through a catalog of the reader's own (the catalog name is part of SqlCatalog's rows)."""
        from pyiceberg.catalog.sql import SqlCatalog

        catalog = SqlCatalog("flight_writer", uri=self.catalog_uri, warehouse=self.base, **self.iceberg_io)
        try:
            return catalog.load_table((*self.namespace.split("."), *dataset.split("/")))
        finally:
            catalog.engine.dispose()

    def delta_uri(self, dataset: str = DATASET) -> str:
        return f"{self.base}/{dataset}"


@pytest.fixture(params=EVERY, ids=lake_id)
def lake(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Lake]:
    kind, where = request.param
    fmt = kind.split("-")[0]
    namespace = f"t{uuid.uuid4().hex[:12]}"  # the PostgreSQL database is the session's: names of our own
    if where == "fs":
        root = tmp_path / "data"
        storage_settings = StorageSettings(type="fs", root=str(root))
        base = str(root)
        iceberg_io: dict[str, str] = {}
        delta_options: dict[str, str] = {}
    else:
        emulator: emulators.Emulator = request.getfixturevalue("moto")
        storage_settings = emulator.settings()
        base = f"s3://{emulators.BUCKET}/{storage_settings.root.strip('/')}"
        iceberg_io = {
            "s3.endpoint": emulator.endpoint,
            "s3.region": "us-east-1",
            "s3.access-key-id": "test",
            "s3.secret-access-key": "test",
        }
        delta_options = {
            "AWS_ENDPOINT_URL": emulator.endpoint,
            "AWS_ALLOW_HTTP": "true",
            "AWS_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
        }
    if kind == "iceberg-postgres":
        catalog_uri = request.getfixturevalue("postgres_uri")
    elif kind == "iceberg-sqlite" and where == "s3":  # the default SQLite catalog needs a local root
        catalog_uri = f"sqlite:///{tmp_path / 'catalog.db'}"
    else:
        catalog_uri = ""
    table_settings = TableSettings(catalog_uri=catalog_uri, namespace=namespace)
    datasets = DatasetSettings(fields=("service",), table=fmt)
    storage = Storage.from_settings(storage_settings)
    tables = make_tables(table_settings, datasets, storage_settings)[fmt]
    yield Lake(
        fmt,
        storage,
        tables,
        base,
        catalog_uri or f"sqlite:///{base}/_catalog.db",
        namespace,
        iceberg_io,
        delta_options,
    )
    tables.close()


def ids(start: int, n: int) -> pa.Table:
    return pa.table({"id": pa.array(range(start, start + n), pa.int64())})


def rows_of(table: pa.Table) -> list[dict[str, Any]]:
    """Rows as plain values, sorted by id (types vary by reader: large_string or string, etc.)."""
    return sorted(table.to_pylist(), key=lambda r: r["id"])


def folder(hour: int, service: str) -> str:
    return f"date={DAY}/hour={hour}/service={service}"


def expected_rows(*parts: tuple[pa.Table, int, str | None], extra: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    day = dt.date.fromisoformat(DAY)
    rows = []
    for table, hour, service in parts:
        for r in table.to_pylist():
            rows.append({**{c: None for c in extra}, **r, "date": day, "hour": hour, "service": service})
    return sorted(rows, key=lambda r: r["id"])


# -- the contract ------------------------------------------------------------------------------------------
def test_open_makes_a_table_from_a_schema(lake: Lake) -> None:
    assert lake.open(None) is None  # none yet, and no schema to make one from
    made = lake.open(ids(0, 1).schema)
    assert made is not None and made.format == lake.fmt and made.dataset == DATASET
    assert made.paths() == set() and made.commits() == 0
    empty = made.scan()
    assert empty.num_rows == 0
    assert empty.schema.names == ["id", "date", "hour", "service"]  # the file's columns, then the partitions
    again = lake.open(None)  # it exists now: opened, not made
    assert again is not None and again.paths() == set() and again.commits() == 0


def test_appended_files_land_and_commits_are_counted(lake: Lake) -> None:
    api, db = ids(0, 5), ids(5, 3)
    f1, f2 = lake.store(folder(9, "api"), api), lake.store(folder(10, "db"), db)
    table = lake.open(api.schema)
    assert table is not None
    table.append([f1])
    assert table.paths() == {f1.path} and table.commits() == 1
    table.append([f2])
    assert table.paths() == {f1.path, f2.path} and table.commits() == 2
    fresh = lake.open(None)  # another handle reads the same from the table itself
    assert fresh is not None
    assert fresh.paths() == {f1.path, f2.path} and fresh.commits() == 2
    assert rows_of(fresh.scan()) == expected_rows((api, 9, "api"), (db, 10, "db"))


def test_two_handles_appending_the_same_file_commit_it_once(lake: Lake) -> None:
    data = ids(0, 7)
    shared = lake.store(folder(9, "api"), data)
    first = lake.open(data.schema)
    second = lake.open(None)
    assert first is not None and second is not None
    assert second.paths() == set()  # both read the table before either commit
    first.append([shared])
    with pytest.raises(CommitConflict):
        second.append([shared])  # made from the version before the first's commit: refused, nothing landed
    second.refresh()
    plan = [f for f in [shared] if f.path not in second.paths()]
    assert plan == []  # the committer's plan after the conflict: nothing left to add
    assert second.paths() == {shared.path}
    assert rows_of(second.scan()) == expected_rows((data, 9, "api"))  # exactly once


def test_a_conflict_loses_nothing_of_other_files(lake: Lake) -> None:
    a, b = ids(0, 4), ids(4, 6)
    fa, fb = lake.store(folder(9, "api"), a), lake.store(folder(9, "db"), b)
    first = lake.open(a.schema)
    second = lake.open(None)
    assert first is not None and second is not None
    first.append([fa])
    with pytest.raises(CommitConflict):
        second.append([fb])
    second.refresh()
    plan = [f for f in [fb] if f.path not in second.paths()]
    assert plan == [fb]
    second.append(plan)  # planned again from the version that is now current: lands
    assert second.paths() == {fa.path, fb.path} and second.commits() == 2
    assert rows_of(second.scan()) == expected_rows((a, 9, "api"), (b, 9, "db"))


def test_a_file_with_an_extra_column_widens_the_schema(lake: Lake) -> None:
    old = ids(0, 3)
    new = pa.table({"id": pa.array([3, 4], pa.int64()), "note": pa.array(["x", None]), "n": pa.array([1.5, 2.5])})
    f_old, f_new = lake.store(folder(9, "api"), old), lake.store(folder(9, "api"), new)
    table = lake.open(old.schema)
    assert table is not None
    table.append([f_old])
    table.append([f_new])
    got = table.scan()
    assert {"note", "n"} <= set(got.schema.names)
    assert pa.types.is_floating(got.schema.field("n").type)
    assert rows_of(got) == expected_rows((old, 9, "api"), (new, 9, "api"), extra=("note", "n"))
    fresh = lake.open(None)  # the widened schema is the table's, not the handle's
    assert fresh is not None and rows_of(fresh.scan()) == rows_of(got)


def test_scan_fills_the_partition_columns_from_the_table(lake: Lake) -> None:
    parts = [(ids(0, 2), 0, "api"), (ids(2, 3), 9, "db"), (ids(5, 4), 23, None)]  # None: the null partition
    files = [lake.store(folder(hour, service or NULL), t) for t, hour, service in parts]
    table = lake.open(parts[0][0].schema)
    assert table is not None
    table.append(files)  # one commit, three files
    assert table.commits() == 1 and table.paths() == {f.path for f in files}
    got = table.scan()
    assert got.num_rows == 9
    assert rows_of(got) == expected_rows(*parts)
    assert pa.types.is_date(got.schema.field("date").type) and pa.types.is_integer(got.schema.field("hour").type)
    for f in files:  # the files hold the data columns only: the partition values are the table's
        assert pq.ParquetFile(io.BytesIO(lake.storage.read(f"{DATASET}/{f.path}"))).schema_arrow.names == ["id"]


def test_replace_keeps_the_rows(lake: Lake) -> None:
    a, b, c = ids(0, 3), ids(3, 4), ids(7, 2)
    fa, fb, fc = lake.store(folder(9, "api"), a), lake.store(folder(9, "api"), b), lake.store(folder(9, "db"), c)
    table = lake.open(a.schema)
    assert table is not None
    table.append([fa, fb, fc])
    before = rows_of(table.scan())
    merged = lake.store(folder(9, "api"), pa.concat_tables([a, b]))  # compaction of the api partition
    table.replace([fa.path, fb.path], [merged])
    assert table.paths() == {merged.path, fc.path} and table.commits() == 2
    assert rows_of(table.scan()) == before
    fresh = lake.open(None)
    assert fresh is not None and fresh.paths() == {merged.path, fc.path} and rows_of(fresh.scan()) == before
    assert {fa.path, fb.path} <= fresh.referenced() or lake.fmt == "delta"  # Iceberg: older snapshots keep them
    assert {merged.path, fc.path} <= fresh.referenced()


def test_maintenance_keeps_the_rows(lake: Lake) -> None:
    parts = [(ids(k * 10, 10), k, "api") for k in range(4)]
    table = lake.open(parts[0][0].schema)
    assert table is not None
    for t, hour, service in parts:
        table.append([lake.store(folder(hour, service), t)])
    table.maintain(keep=1)
    table.refresh()
    assert rows_of(table.scan()) == expected_rows(*parts)
    assert table.paths() <= table.referenced()
    fresh = lake.open(None)
    assert fresh is not None and fresh.commits() == 4 and rows_of(fresh.scan()) == expected_rows(*parts)


# -- the formats' own readers ------------------------------------------------------------------------------
def committed_example(lake: Lake) -> list[tuple[pa.Table, int, str]]:
    parts = [(ids(0, 5), 9, "api"), (ids(5, 7), 9, "db"), (ids(12, 3), 10, "api"), (ids(15, 2), 10, "web")]
    files = [lake.store(folder(hour, service), t) for t, hour, service in parts]
    table = lake.open(parts[0][0].schema)
    assert table is not None
    table.append(files[:2])
    table.append(files[2:])
    return parts


def api_rows(parts: list[tuple[pa.Table, int, str]]) -> list[dict[str, Any]]:
    return [r for r in expected_rows(*parts) if r["service"] == "api"]


@pytest.mark.parametrize("lake", ICEBERG, ids=lake_id, indirect=True)
def test_pyiceberg_reads_every_row_and_filters_by_partition(lake: Lake) -> None:
    parts = committed_example(lake)
    table = lake.iceberg_table()
    assert rows_of(table.scan().to_arrow()) == expected_rows(*parts)
    assert rows_of(table.scan(row_filter="service == 'api'").to_arrow()) == api_rows(parts)  # 8 rows
    assert table.scan(row_filter="hour == 10").to_arrow().num_rows == 5
    # the manifests record each file's partition (add_files would record null: the filter would find nothing)
    recorded = {p["service"] for p in table.inspect.files().column("partition").to_pylist()}
    assert recorded == {"api", "db", "web"}


@pytest.mark.parametrize("lake", ICEBERG, ids=lake_id, indirect=True)
def test_polars_scan_iceberg_reads_every_row_and_filters_by_partition(
    lake: Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POLARS_ICEBERG_PLANNER", "pyiceberg")  # the planner plugin is not installed
    parts = committed_example(lake)
    table = lake.iceberg_table()
    options = {k.lower(): v for k, v in lake.delta_options.items()} or None  # object_store's keys, as Delta's
    assert rows_of(pl.scan_iceberg(table, storage_options=options).collect().to_arrow()) == expected_rows(*parts)
    api = pl.scan_iceberg(table, storage_options=options).filter(pl.col("service") == "api").collect()
    assert rows_of(api.to_arrow()) == api_rows(parts)


@pytest.mark.parametrize("lake", DELTA, ids=lake_id, indirect=True)
def test_deltalake_reads_every_row_and_filters_by_partition(lake: Lake) -> None:
    from deltalake import DeltaTable

    parts = committed_example(lake)
    table = DeltaTable(lake.delta_uri(), storage_options=lake.delta_options)
    assert rows_of(table.to_pyarrow_table()) == expected_rows(*parts)
    assert rows_of(table.to_pyarrow_table(filters=[("service", "=", "api")])) == api_rows(parts)
    recorded = {p["service"] for p in table.get_add_actions(flatten=False).column("partition").to_pylist()}
    assert recorded == {"api", "db", "web"}


@pytest.mark.parametrize("lake", DELTA, ids=lake_id, indirect=True)
def test_polars_scan_delta_reads_every_row_and_filters_by_partition(lake: Lake) -> None:
    parts = committed_example(lake)
    scan = pl.scan_delta(lake.delta_uri(), storage_options=lake.delta_options or None)
    assert rows_of(scan.collect().to_arrow()) == expected_rows(*parts)
    assert rows_of(scan.filter(pl.col("service") == "api").collect().to_arrow()) == api_rows(parts)


# -- Delta: commits written as log files here, delta-rs beside them ------------------------------------------
@pytest.mark.parametrize("lake", DELTA, ids=lake_id, indirect=True)
def test_delta_paths_with_escaped_partition_values_match_the_files(lake: Lake) -> None:
    """The log holds paths percent-encoded; the layout's folders hold escaped values ('a/b c' is
    'a%2Fb c'): a table read again must name the very files stored, or adoption would add them twice."""
    from deltalake import DeltaTable

    data = ids(0, 3)
    odd = lake.store("date=2026-12-06/hour=9/service=a%2Fb c", data)
    table = lake.open(data.schema)
    assert table is not None
    table.append([odd])
    fresh = lake.open(None)
    assert fresh is not None and fresh.paths() == {odd.path}
    reader = DeltaTable(lake.delta_uri(), storage_options=lake.delta_options)
    assert sorted(reader.to_pyarrow_table(filters=[("service", "=", "a/b c")]).column("id").to_pylist()) == [0, 1, 2]


@pytest.mark.parametrize("lake", DELTA, ids=lake_id, indirect=True)
def test_delta_commits_from_delta_rs_between_ours_are_read_from_the_log(lake: Lake) -> None:
    """Another writer (delta-rs itself) commits between two of ours: ours conflicts, reads that commit's
    log file, plans again and lands; 100 versions on, a handle opened anew and every reader agree."""
    from deltalake import DeltaTable
    from deltalake.transaction import AddAction

    first = ids(0, 2)
    ours = lake.open(first.schema)
    assert ours is not None
    f0 = lake.store(folder(9, "api"), first)
    ours.append([f0])
    other = lake.store(folder(9, "db"), ids(2, 2))
    writer = DeltaTable(lake.delta_uri(), storage_options=lake.delta_options)
    partition = {"date": DAY, "hour": "9", "service": "db"}
    writer.create_write_transaction(
        [AddAction(other.path, other.size, partition, 0, True, '{"numRecords": 2}')], "append", writer.schema()
    )
    mine = lake.store(folder(10, "api"), ids(4, 1))
    with pytest.raises(CommitConflict):
        ours.append([mine])
    ours.refresh()
    assert ours.paths() == {f0.path, other.path}  # the other's commit, read from its JSON file
    ours.append([mine])
    more = [lake.store(folder(11, "web"), ids(5 + k, 1)) for k in range(97)]
    for f in more:  # up to version 100 (the table's creation is version 0)
        ours.append([f])
    fresh = lake.open(None)
    assert fresh is not None and fresh.commits() == 99 and len(fresh.paths()) == 100
    reader = DeltaTable(lake.delta_uri(), storage_options=lake.delta_options)
    assert reader.version() == 100 and sorted(reader.to_pyarrow_table().column("id").to_pylist()) == list(range(102))
    scan = pl.scan_delta(lake.delta_uri(), storage_options=lake.delta_options or None).collect()
    assert sorted(scan["id"].to_list()) == list(range(102))


@pytest.mark.parametrize("lake", DELTA, ids=lake_id, indirect=True)
def test_a_delta_table_with_a_newer_writer_protocol_is_refused_with_a_reason(lake: Lake) -> None:
    """A CHECK constraint raises the table's writer protocol to 3: a writer must check every row, which
    adding files as they are cannot. Seen at open, and seen by a handle that read the table before it (its
    files not loaded yet), through the log: refused, nothing lands."""
    from deltalake import DeltaTable

    from flight_writer.lake.tables import TableError

    data = ids(1, 3)
    made = lake.open(data.schema)
    assert made is not None
    before = lake.open(None)  # opened before the constraint, nothing read yet
    assert before is not None
    DeltaTable(lake.delta_uri(), storage_options=lake.delta_options).alter.add_constraint({"positive": "id > 0"})
    f = lake.store(folder(9, "api"), data)
    for table in (lake.open(None), before):
        assert table is not None
        table.refresh()
        with pytest.raises(TableError, match="asks more of a writer"):
            table.append([f])
    made.refresh()  # a handle whose files are loaded reads the protocol change from the log
    with pytest.raises(TableError, match="asks more of a writer"):
        made.append([f])
    reader = DeltaTable(lake.delta_uri(), storage_options=lake.delta_options)
    assert reader.protocol().min_writer_version >= 3 and reader.to_pyarrow_table().num_rows == 0


@pytest.mark.parametrize("lake", DELTA, ids=lake_id, indirect=True)
def test_a_delta_replace_removes_files_by_the_path_the_log_spells(lake: Lake) -> None:
    """Another engine may percent-encode a path otherwise than delta-rs (Spark leaves ',' as '%2C'): a
    remove must name it as its add did, or the file stays in the table after a replace."""
    from deltalake import DeltaTable

    data = ids(0, 2)
    ours = lake.open(data.schema)
    assert ours is not None
    odd = lake.store("date=2026-12-06/hour=9/service=a,b", data)
    add = {  # version 1 as that engine writes it: ',' encoded
        "path": odd.path.replace(",", "%2C"),
        "partitionValues": {"date": DAY, "hour": "9", "service": "a,b"},
        "size": odd.size,
        "modificationTime": 0,
        "dataChange": True,
        "stats": '{"numRecords": 2}',
    }
    entry = json.dumps({"commitInfo": {"operation": "WRITE"}}) + "\n" + json.dumps({"add": add}) + "\n"
    lake.storage.create(f"{DATASET}/_delta_log/{1:020d}.json", entry.encode())
    fresh = lake.open(None)
    assert fresh is not None and fresh.paths() == {odd.path}
    new = lake.store(folder(10, "api"), ids(2, 3))
    fresh.replace([odd.path], [new], data_change=True)
    reader = DeltaTable(lake.delta_uri(), storage_options=lake.delta_options)
    assert sorted(reader.to_pyarrow_table().column("id").to_pylist()) == [2, 3, 4]
    history = reader.history(1)[0]
    assert history["operation"] == "WRITE" and history["operationParameters"]["mode"] == "Overwrite"
