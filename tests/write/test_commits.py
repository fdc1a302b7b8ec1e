"""The committer (write/commits.py) through a real server: stored files go to their dataset's lake table in
batches, never one commit per file; ``flush`` and ``ack`` wait ``until`` committed and say so; the ack header
``committed`` ends a do_put once the table holds its rows; datasets without a table count toward
``committed_through`` as soon as they are durable; files a killed process stored but never committed are
adopted by the next start, exactly once; two processes committing to one table commit every row once.

Every table is read back with the format's own reader (pyiceberg, deltalake) and compared with what was sent.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import adbc_driver_flightsql.dbapi as dbapi
import pyarrow as pa
import pyarrow.flight as flight
import pytest

from helpers import (
    action,
    parquet_files,
    put,
    read_lake_table,
    running,
    table_handle,
    table_server_config,
    wait_for,
    write_config,
)

FORMATS = ["iceberg", "delta"]
ROWS = 100  # rows per batch; with writer.max_file_rows = ROWS every batch is a file of its own
# Half a batch is never a file by size: a flush writes it, and tells the committer (a flush that finds every
# batch durable already does not: see the last test)
HALF = ROWS // 2


def batch(start: int, n: int = ROWS, services: tuple[str, ...] = ("api", "db")) -> pa.RecordBatch:
    return pa.record_batch(
        {
            "id": pa.array(range(start, start + n), pa.int64()),
            "service": pa.array([services[i % len(services)] for i in range(n)]),
            "v": pa.array([f"v{i}" for i in range(start, start + n)]),
        }
    )


def sent_rows(batches: list[pa.RecordBatch]) -> list[dict[str, Any]]:
    return sorted(pa.Table.from_batches(batches).to_pylist(), key=lambda r: r["id"])


def table_rows(root: Path, fmt: str, dataset: str, columns: tuple[str, ...] = ("id", "service", "v")) -> list[dict]:
    table, files = read_lake_table(root, fmt, dataset)
    assert len(files) == len(set(files)), "a data file listed twice"
    if table.num_rows == 0:
        return []
    return sorted(table.select(list(columns)).to_pylist(), key=lambda r: r["id"])


def table_files(root: Path, fmt: str, dataset: str) -> list[str]:
    files = sorted(f.removeprefix("file://") for f in read_lake_table(root, fmt, dataset)[1])
    assert len(files) == len(set(files)), "a data file listed twice"
    return files


def stored_files(root: Path, dataset: str) -> list[str]:
    return sorted(str(p) for p in parquet_files(root, dataset) if p.name.startswith("part-"))


def data_versions(root: Path, fmt: str, dataset: str) -> int:
    """Commits that added data: Iceberg snapshots; Delta log versions after the one that made the table."""
    if fmt == "iceberg":
        from pyiceberg.catalog.sql import SqlCatalog

        catalog = SqlCatalog("flight_writer", uri=f"sqlite:///{root / '_catalog.db'}", warehouse=str(root))
        try:
            return len(catalog.load_table(("flight_writer", *dataset.split("/"))).snapshots())
        finally:
            catalog.engine.dispose()
    from deltalake import DeltaTable

    return DeltaTable(str(root / dataset)).version()


def sections(fmt: str, **tables: Any) -> dict[str, dict[str, Any]]:
    return {
        "datasets": {"table": fmt, "fields": ["service"]},
        "tables": {"commit_interval": 3600, **tables},
    }


def wait_durable(client: flight.FlightClient, seqs: list[int]) -> None:
    """Durable without a flush (a flush commits at once): the writer sealed the files by size."""
    acks = action(client, "ack", {"seqs": seqs, "wait_ms": 60_000})["acks"]
    assert {a["state"] for a in acks} == {"durable"}, acks


@pytest.mark.parametrize("fmt", FORMATS)
def test_files_are_committed_in_batches_not_one_by_one(tmp_path: Path, fmt: str) -> None:
    root = tmp_path / "data"
    settings = sections(fmt, commit_files=3)
    with (
        running(root, **settings, writer={"max_file_rows": ROWS}) as svc,
        flight.connect(svc.location) as client,
    ):
        one = batch(0, services=("api",))
        sent = [one, batch(ROWS, services=("api",))]
        seqs = [put(client, "spans", [b])[-1]["seq"] for b in sent]
        wait_durable(client, seqs)  # two files stored: fewer than commit_files, the interval far off
        assert svc.committer is not None
        assert svc.committer.table_stats().get("spans", {}).get("commits", 0) == 0
        with table_handle(svc.settings, "spans") as table:
            assert table is None or table.paths() == set()
        sent.append(batch(2 * ROWS, services=("api",)))
        third = put(client, "spans", [sent[-1]])[-1]["seq"]
        [ack] = action(client, "ack", {"seq": third, "until": "committed", "wait_ms": 60_000})["acks"]
        assert ack["state"] == "committed"
        stats = svc.committer.table_stats()["spans"]
        assert (stats["commits"], stats["files_committed"], stats["pending_files"]) == (1, 3, 0)
        with table_handle(svc.settings, "spans") as table:
            assert table is not None and table.commits() == 1 and len(table.paths()) == 3
        acks = action(client, "ack", {"seqs": seqs, "until": "committed"})["acks"]
        assert {a["state"] for a in acks} == {"committed"}  # the same commit holds the first two
    assert data_versions(root, fmt, "spans") == 1  # one commit of three files
    assert table_rows(root, fmt, "spans") == sent_rows(sent)


@pytest.mark.parametrize("fmt", FORMATS)
def test_flush_until_committed_returns_once_the_table_holds_every_row(tmp_path: Path, fmt: str) -> None:
    root = tmp_path / "data"
    with running(root, **sections(fmt)) as svc, flight.connect(svc.location) as client:
        sent = [batch(k * ROWS, services=("api", "db", "web")) for k in range(6)]
        last = 0
        for k in range(3):  # three streams, two batches each, acknowledged as queued
            last = put(client, "team/spans", sent[2 * k : 2 * k + 2])[-1]["seq"]
        reply = action(client, "flush", {"until": "committed"})
        assert reply["committed_through"] >= last and reply["durable_through"] >= last
        assert table_rows(root, fmt, "team/spans") == sent_rows(sent)  # before the stop: the reply's word
        assert action(client, "status")["committed_through"] >= last
        more = batch(6 * ROWS)
        put(client, "team/spans", [more])
        assert action(client, "flush", {"dataset": "team/spans", "until": "committed"})["committed_through"] > last
        assert table_rows(root, fmt, "team/spans") == sent_rows([*sent, more])
        api = [r for r in table_rows(root, fmt, "team/spans") if r["service"] == "api"]
        assert len(api) == sum(1 for r in sent_rows([*sent, more]) if r["service"] == "api")


@pytest.mark.parametrize("fmt", FORMATS)
def test_the_committed_ack_header_ends_a_put_once_its_rows_are_in_the_table(tmp_path: Path, fmt: str) -> None:
    root = tmp_path / "data"
    with running(root, **sections(fmt)) as svc, flight.connect(svc.location) as client:
        sent = [batch(0), batch(ROWS)]
        replies = put(client, "spans", sent, ack="committed")
        assert [r["state"] for r in replies[:2]] == ["queued", "queued"]
        final = replies[-1]
        assert final["state"] == "committed"
        assert final["committed_through"] >= replies[1]["seq"]
        assert final["files"] and all(f.startswith("spans/date=") for f in final["files"])
        assert table_rows(root, fmt, "spans") == sent_rows(sent)
        with table_handle(svc.settings, "spans") as table:
            assert table is not None
            assert {f"spans/{p}" for p in table.paths()} == set(final["files"])


@pytest.mark.parametrize("fmt", FORMATS)
def test_ack_until_committed_says_committed_with_the_file(tmp_path: Path, fmt: str) -> None:
    root = tmp_path / "data"
    # no flush: the writer seals the file itself (flush_interval), the committer commits it alone
    settings = sections(fmt, commit_files=1)
    with (
        running(root, **settings, writer={"flush_interval": 0.2}) as svc,
        flight.connect(svc.location) as client,
    ):
        sent = batch(0, services=("api",))
        [reply] = put(client, "spans", [sent])
        assert reply["state"] == "queued"
        seq = reply["seq"]
        answer = action(client, "ack", {"seq": seq, "until": "committed", "wait_ms": 60_000})
        [ack] = answer["acks"]
        assert ack["state"] == "committed" and ack["file"].startswith("spans/date=")
        assert answer["committed_through"] >= seq
        with table_handle(svc.settings, "spans") as table:
            assert table is not None and ack["file"][len("spans/") :] in table.paths()
        # until durable, the same seq: committed is what it is now
        [again] = action(client, "ack", {"seq": seq})["acks"]
        assert again == ack
        with pytest.raises(flight.FlightServerError, match='"until" must be'):
            action(client, "ack", {"seq": seq, "until": "someday"})
    assert table_rows(root, fmt, "spans") == sent_rows([sent])


@pytest.mark.parametrize("fmt", FORMATS)
def test_datasets_without_a_table_count_toward_committed_through(tmp_path: Path, fmt: str) -> None:
    root = tmp_path / "data"
    datasets = {"table": fmt, "fields": ["service"], "rules": [{"match": "loose*", "table": "none"}]}
    with (
        running(root, datasets=datasets, tables={"commit_interval": 3600}) as svc,
        flight.connect(svc.location) as client,
    ):
        tabled = put(client, "tabled", [batch(0)])[-1]["seq"]
        loose = put(client, "loose", [batch(ROWS)])[-1]["seq"]
        tabled_again = put(client, "tabled", [batch(2 * ROWS)])[-1]["seq"]
        reply = action(client, "flush", {"until": "committed"})
        assert reply["committed_through"] >= max(tabled, loose, tabled_again)
        acks = action(client, "ack", {"seqs": [tabled, loose, tabled_again], "until": "committed", "wait_ms": 1})
        states = [a["state"] for a in acks["acks"]]
        assert states == ["committed", "durable", "committed"]  # no table holds the loose one: durable is all
        assert acks["acks"][1]["file"].startswith("loose/date=")
        final = put(client, "loose", [batch(3 * ROWS)], ack="committed")[-1]
        assert final["state"] == "committed"  # the level the header asked: the seq needed no commit
        assert final["committed_through"] >= final["durable_through"]
        assert svc.committer is not None and "loose" not in svc.committer.table_stats()
    assert table_rows(root, fmt, "tabled") == sent_rows([batch(0), batch(2 * ROWS)])
    assert read_lake_table(root, fmt, "loose")[1] == []  # no table was made for it
    # and a restart does not adopt the loose dataset's files into a table
    with running(root, datasets=datasets, tables={"commit_interval": 3600}) as svc:
        assert svc.committer is not None and svc.committer.recovered.is_set()
    assert read_lake_table(root, fmt, "loose")[1] == []


@pytest.mark.parametrize("fmt", FORMATS)
def test_files_a_killed_process_never_committed_are_adopted_once(tmp_path: Path, fmt: str, server_process) -> None:
    root = tmp_path / "data"
    config = table_server_config(tmp_path, root, fmt, ROWS)
    server = server_process(config)
    committed = [batch(0, HALF)]
    orphans = [batch(k * ROWS) for k in range(2, 6)]
    with flight.connect(server.location) as client:
        put(client, "spans", committed)
        assert action(client, "flush", {"until": "committed"})["committed_through"] >= 1
        # sealed by size: no flush, no commit. Every piece's seq: a batch split by service is durable once all
        # its pieces are (waiting for the highest alone let a kill come before another piece's file was stored)
        replies = [put(client, "spans", [b])[-1] for b in orphans]
        seqs = [s for r in replies for s in r.get("seqs", [r["seq"]])]
        wait_durable(client, seqs)
    server.proc.kill()  # SIGKILL: stored files, never committed
    server.proc.wait()
    assert table_rows(root, fmt, "spans") == sent_rows(committed)
    every = sent_rows([*committed, *orphans])
    with running(root, **sections(fmt)) as svc:  # adopts before it serves
        assert svc.committer is not None and svc.committer.recovered.is_set()
        assert table_rows(root, fmt, "spans") == every
    assert table_rows(root, fmt, "spans") == every
    assert table_files(root, fmt, "spans") == stored_files(root, "spans")
    with running(root, **sections(fmt)) as svc:  # a second start finds nothing to adopt
        assert svc.committer is not None and svc.committer.stats.get("spans") is None
    assert table_rows(root, fmt, "spans") == every


@pytest.mark.parametrize("fmt", FORMATS)
def test_two_processes_committing_to_one_table_commit_every_row_once(tmp_path: Path, fmt: str, server_process) -> None:
    root = tmp_path / "data"
    # commit_files = 2: many small commits, racing; adopt_interval: each also adopts the other's stored files
    # files by flushes only (the puts with the ack header committed, the last flush)
    config = table_server_config(tmp_path, root, fmt, 10_000, commit_files=2, adopt_interval=0.3)
    servers = [server_process(config), server_process(config)]
    sent: list[pa.RecordBatch] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def produce(location: str, first: int) -> None:
        try:
            with flight.connect(location) as client:
                for k in range(8):
                    b = batch((first + k) * ROWS)
                    put(client, "spans", [b], ack="committed" if k % 4 == 3 else None)
                    with lock:
                        sent.append(b)
                action(client, "flush", {"until": "committed"})
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [
        threading.Thread(target=produce, args=(s.location, 100 * n + 10 * p))
        for n, s in enumerate(servers)
        for p in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(sent) == 32
    assert table_rows(root, fmt, "spans") == sent_rows(sent)
    ids = Counter(r["id"] for r in table_rows(root, fmt, "spans", ("id",)))
    assert set(ids.values()) == {1}
    assert table_files(root, fmt, "spans") == stored_files(root, "spans")  # every stored file, once
    for s in servers:
        s.proc.terminate()
        assert s.proc.wait(60) == 0
    assert table_rows(root, fmt, "spans") == sent_rows(sent)  # the stops committed nothing twice


@pytest.mark.parametrize(
    "fmt",
    [
        "iceberg",
        "delta",
    ],
)
def test_adopted_files_keep_partition_values_of_every_type(tmp_path: Path, fmt: str, server_process) -> None:
    """Partition fields of other types than strings (an int here): the table's partition column has the
    stream's type, and files adopted after a crash (described from their folders alone) must fit it."""
    root = tmp_path / "data"
    config = write_config(
        tmp_path / "server.toml",
        root,
        f"""
[writer]
max_file_rows = {ROWS}
[datasets]
table = "{fmt}"
fields = ["shard"]
[tables]
commit_interval = 3600
commit_files = 1000
""",
    )

    def sharded(start: int, shard: int, n: int = ROWS) -> pa.RecordBatch:
        return pa.record_batch(
            {"id": pa.array(range(start, start + n), pa.int64()), "shard": pa.array([shard] * n, pa.int32())}
        )

    committed, orphans = [sharded(0, 1, HALF)], [sharded(ROWS, 2), sharded(2 * ROWS, 3)]
    server = server_process(config)
    with flight.connect(server.location) as client:
        put(client, "sharded", committed, ack="committed")
        seqs = [put(client, "sharded", [b])[-1]["seq"] for b in orphans]
        wait_durable(client, seqs)
    server.proc.kill()
    server.proc.wait()
    restarted = server_process(config, ready="adopting 2 stored but uncommitted files")
    # then it serves: the bound is on a failure (a start that adopts two files takes a second or two)
    port = restarted.wait_for_log("(port ", timeout=20).split("(port ")[1].split(")")[0]
    with flight.connect(f"grpc://127.0.0.1:{port}") as client:
        tables = action(client, "status")["tables"]
        assert tables.get("sharded", {}).get("errors", 0) == 0, tables
    expected = sorted(pa.Table.from_batches([*committed, *orphans]).to_pylist(), key=lambda r: r["id"])
    assert table_rows(root, fmt, "sharded", ("id", "shard")) == expected
    assert table_files(root, fmt, "sharded") == stored_files(root, "sharded")


def test_flush_until_committed_commits_at_once_when_every_file_is_already_durable(tmp_path: Path) -> None:
    root = tmp_path / "data"
    fmt = "delta"  # the queue's and the committer's, whichever format
    with (
        running(root, **sections(fmt), writer={"max_file_rows": ROWS}, server={"shutdown_timeout": 1}) as svc,
        flight.connect(svc.location) as client,
    ):
        sent = [batch(0, services=("api",)), batch(ROWS, services=("api",))]
        seqs = [put(client, "spans", [b])[-1]["seq"] for b in sent]
        wait_durable(client, seqs)  # stored, waiting for a commit an hour away
        # the bound is on a failure: a flush's commit takes well under a second (the interval, an hour)
        bounded = flight.FlightCallOptions(timeout=10)
        [result] = client.do_action(flight.Action("flush", json.dumps({"until": "committed"}).encode()), bounded)
        assert json.loads(result.body.to_pybytes())["committed_through"] >= seqs[-1]
        assert table_rows(root, fmt, "spans") == sent_rows(sent)


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_flight_sql_replace_is_one_overwrite_commit(tmp_path: Path, fmt: str) -> None:
    root = tmp_path / "data"
    with running(root, **sections(fmt)) as svc, flight.connect(svc.location) as client:
        old = [batch(0), batch(ROWS)]
        put(client, "spans", old)
        action(client, "flush", {"until": "committed"})
        assert table_rows(root, fmt, "spans") == sent_rows(old)
        replaced = stored_files(root, "spans")
        new = batch(1000, services=("web",))
        with dbapi.connect(svc.location, autocommit=True) as conn, conn.cursor() as cur:
            cur.adbc_ingest("spans", pa.Table.from_batches([new]), mode="replace")
        # the table holds the new rows only, at once (one commit); the replaced files are gone from storage
        assert table_rows(root, fmt, "spans") == sent_rows([new])
        assert not set(replaced) & set(stored_files(root, "spans"))
        assert table_files(root, fmt, "spans") == stored_files(root, "spans")
        assert not list(root.glob("spans/_compacting/*.json"))  # the replace's intent is settled


@pytest.mark.parametrize("fmt", FORMATS)
def test_the_server_compacts_a_table_every_compact_every_commits(tmp_path: Path, fmt: str) -> None:
    root = tmp_path / "data"
    with running(root, **sections(fmt, compact_every=3)) as svc, flight.connect(svc.location) as client:
        sent = []
        for k in range(3):  # three commits of one small file each: the third compacts the three
            sent.append(batch(k * ROWS))
            put(client, "spans", [sent[-1]])
            action(client, "flush", {"until": "committed"})
        # the compaction runs on the committer's thread right after the third commit (after its reply)
        wait_for(lambda: svc.committer.stats["spans"].compactions, "the compaction after the third commit")
        assert len(table_files(root, fmt, "spans")) == 2  # one partition per service: api, db
        assert table_files(root, fmt, "spans") == stored_files(root, "spans")  # the inputs are gone
        assert table_rows(root, fmt, "spans") == sent_rows(sent)
        assert svc.status()["tables"]["spans"]["errors"] == 0


@pytest.mark.parametrize("fmt", FORMATS)
def test_no_process_adopts_files_while_a_replace_is_under_way(tmp_path: Path, fmt: str) -> None:
    """A Flight SQL replace stores its files before its one commit; a second server on the same root must not
    adopt them as orphans meanwhile (they would show before the replace, and stay if it failed). The replace
    leaves a marker from start to end; with it gone, orphans are adopted again."""
    import pyarrow.parquet as pq

    from flight_writer.config import DatasetSettings, StorageSettings, TableSettings
    from flight_writer.lake.storage import Storage
    from flight_writer.lake.tables import make_tables
    from flight_writer.write.commits import Committer

    root = tmp_path / "data"
    settings = StorageSettings(type="fs", root=str(root))
    datasets = DatasetSettings(table=fmt)

    def committer() -> Committer:
        tables = make_tables(TableSettings(), datasets, settings)
        return Committer(tables, datasets, TableSettings(), Storage.from_settings(settings), lambda seqs: None)

    def orphan(start: int) -> None:
        folder = root / "spans" / "date=2026-12-06" / "hour=9"
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_batches([batch(start)]), folder / f"part-{start:012d}-0123456789ab.parquet")

    replacing, other = committer(), committer()
    orphan(0)
    assert other.adopt(patient=False) == 1  # the table made, with one file
    replacing.begin_replace("spans")
    orphan(ROWS)  # the replace's file, stored, not yet committed
    assert other.rescan() == 0 and other.rescan() == 0  # seen twice: an orphan, but a replace is under way
    assert replacing.finish_replace("spans", [], [], ok=False) is False  # given up: the door deletes its files,
    assert other.rescan() == 0 and other.rescan() == 0  # and only then ends the replace (this one stays here)
    replacing.end_replace("spans")
    assert not list(root.glob("spans/_compacting/*.json"))
    other.rescan()
    assert other.rescan() == 1
    assert table_rows(root, fmt, "spans") == sent_rows([batch(0), batch(ROWS)])

    # a marker a crash left: the next start leaves the dataset's files alone (its adoption incomplete, so
    # the server holds back committed) until the marker is older than SHARED_AGE; then any look settles it
    import dataclasses
    import time

    from flight_writer.lake.tables.compact import SHARED_AGE, Intent

    crashed = Intent("deadbeef0000", "spans", (), "", replacing=True)
    (root / "spans" / "_compacting").mkdir(exist_ok=True)
    (root / crashed.path).write_bytes(crashed.to_json())
    orphan(2 * ROWS)
    restarted = committer()
    assert restarted.adopt(patient=False) == 0 and restarted.incomplete
    old = dataclasses.replace(crashed, created_at=time.time() - SHARED_AGE - 60)
    (root / crashed.path).write_bytes(old.to_json())
    restarted.rescan()  # settles the marker (the table is not open in this process)
    assert restarted.rescan() == 1 and not list(root.glob("spans/_compacting/*.json"))
    assert table_rows(root, fmt, "spans") == sent_rows([batch(0), batch(ROWS), batch(2 * ROWS)])
