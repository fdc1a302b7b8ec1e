"""Lake table maintenance on real tables (Iceberg through a SQLite catalog, Delta) over real Parquet files in a
local storage root: snapshot expiry and checkpoints keep commits flat, compaction rewrites small files into
fewer without changing a row, a crash in the middle of a compaction is settled by its recovery, orphan removal
keeps what a version or a pending commit needs, and ``flight-writer tables`` does all of it as a command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flight_writer.config import DatasetSettings, StorageSettings, TableSettings, WriterSettings, load_settings
from flight_writer.lake.storage import Storage
from flight_writer.lake.tables import DataFile, Table, make_tables
from flight_writer.lake.tables.compact import (
    INTENTS,
    begin,
    commit,
    compact,
    excluded,
    intents,
    plan,
    recover,
    stored_files,
)
from flight_writer.lake.tables.maintain import METADATA, metadata_files, remove_orphans

from helpers import write_config

pytest.importorskip("pyiceberg")
pytest.importorskip("deltalake")

DATASET = "demo/spans"
COLUMNS = ["i", "service", "ms", "region"]
FORMATS = ["iceberg", "delta"]
HOUR = 3600.0


class Lake:
    """A storage root with one table format, and files stored the way the writer stores them."""

    def __init__(self, root: Path, fmt: str, tables_settings: TableSettings | None = None) -> None:
        self.root = root
        self.format = fmt
        storage = StorageSettings(type="fs", root=str(root))
        self.storage = Storage.from_settings(storage)
        self.tables = make_tables(tables_settings or TableSettings(), DatasetSettings(table=fmt), storage)[fmt]
        self.seq = 0
        self.rows: list[dict] = []  # every row stored, as the table should give it back

    def store(self, rows: int = 10, hour: int = 1, region: bool = False) -> DataFile:
        """One file of ``rows`` rows (one seq) in ``date=2026-01-01/hour=<hour>``; ``region`` adds a column."""
        self.seq += 1
        first = len(self.rows)
        columns = {
            "i": pa.array(range(first, first + rows), pa.int64()),
            "service": pa.array([f"svc-{(first + k) % 7}" for k in range(rows)]),
            "ms": pa.array([(first + k) / 8 for k in range(rows)], pa.float64()),
        }
        if region:
            columns["region"] = pa.array(["eu"] * rows)
        data = pa.table(columns)
        sink = pa.BufferOutputStream()
        with pq.ParquetWriter(sink, data.schema, compression="zstd") as writer:
            writer.write_table(data)
            writer.add_key_value_metadata(
                {
                    b"flight_writer.dataset": DATASET.encode(),
                    b"flight_writer.seq_min": str(self.seq).encode(),
                    b"flight_writer.seq_max": str(self.seq).encode(),
                    b"flight_writer.seqs": str(self.seq).encode(),
                }
            )
        body = sink.getvalue()
        path = f"date=2026-01-01/hour={hour}/part-{self.seq:012d}-{uuid.uuid4().hex[:12]}.parquet"
        self.storage.write(f"{DATASET}/{path}", body)
        footer = pq.read_metadata(pa.BufferReader(body))
        self.rows += [{"region": None, **row} for row in data.to_pylist()]
        partition = {"date": "2026-01-01", "hour": str(hour)}
        return DataFile(path, body.size, rows, footer.schema.to_arrow_schema(), partition, footer, (self.seq,))

    def table(self, first: DataFile | None = None) -> Table:
        table = self.tables.open(DATASET, first.schema if first is not None else None)
        assert table is not None
        return table

    def part_files(self) -> set[str]:
        return set(stored_files(self.storage, DATASET))

    def local(self, path: str) -> Path:
        return self.root / DATASET / path

    def age(self, path: str, seconds: float) -> None:
        """Make a file look last modified ``seconds`` ago."""
        then = time.time() - seconds
        os.utime(self.local(path), (then, then))


def rows_of(table: Table) -> list[dict]:
    """The table's rows (data columns only, a missing one as null), sorted: a multiset to compare."""
    scanned = table.scan()
    names = [c for c in COLUMNS if c in scanned.column_names]
    picked = scanned.select(names).to_pylist()
    return sorted(({"region": None, **row} for row in picked), key=lambda r: r["i"])


def expected(lake: Lake) -> list[dict]:
    return sorted(lake.rows, key=lambda r: r["i"])


@pytest.fixture(params=FORMATS)
def lake(request, tmp_path: Path) -> Lake:
    return Lake(tmp_path / "data", request.param)


# -- maintenance ----------------------------------------------------------------------------------------------
def test_maintain_every_100_of_300_commits_drops_metadata_and_keeps_every_row(lake: Lake):
    """300 one-file commits maintained every 100 (as the committer does, ``tables.maintain_every``): without
    it an Iceberg commit copies metadata holding every snapshot, and the 300 commits take minutes here."""
    first = lake.store()
    table = lake.table(first)
    if lake.format == "delta":  # Delta keeps its log by age: let every entry expire at once
        from deltalake import DeltaTable

        DeltaTable(str(lake.root / DATASET)).alter.set_table_properties(
            {"delta.logRetentionDuration": "interval 0 seconds"}
        )
        table.refresh()
    table.append([first])
    for k in range(1, 300):
        if k % 100 == 0:
            table.maintain(10)
        table.append([lake.store()])
    before = metadata_files(lake.storage, table)

    done = table.maintain(10)

    after = metadata_files(lake.storage, table)
    assert after < before, (before, after, done)
    names = [p.rsplit("/", 1)[-1] for p in lake.storage.list(f"{DATASET}/{METADATA[lake.format]}/")]
    if lake.format == "iceberg":
        assert done["snapshots_expired"] == 100  # 110 snapshots since the last run: the newest 10 kept
        assert done["manifest_lists_deleted"] == 100 and done["manifests_deleted"] > 0
        assert sum(n.endswith(".metadata.json") for n in names) == 21  # 20 previous versions and the current
        assert sum(n.startswith("snap-") for n in names) == 10  # a manifest list per snapshot kept
        assert len(names) - 31 <= 110, len(names)  # the manifests the kept snapshots use
        assert table.maintain(10)["snapshots_expired"] == 0
    else:
        assert done["checkpoint_version"] == 301  # the create, the property, then 300 commits
        assert sorted(names)[0].startswith("00000000000000000301.")  # every entry before the checkpoint gone
        assert len(names) <= 3, names
    assert rows_of(table) == expected(lake)
    table.append([lake.store()])  # commits go on from the maintained table, in this handle and a new one
    assert rows_of(lake.table()) == expected(lake)
    assert len(lake.table().paths()) == 301


def test_delta_commits_checkpoint_every_100_versions_when_maintenance_is_off(tmp_path: Path):
    """flight-writer writes Delta commits itself (delta-rs would build the whole table state each time): with
    ``tables.maintain_every = 0`` nothing else checkpoints, so the commit at every 100th version does; with
    maintenance on its schedule, maintenance does."""
    off = Lake(tmp_path / "off", "delta", TableSettings(maintain_every=0))
    on = Lake(tmp_path / "on", "delta")
    for lake in (off, on):
        first = lake.store()
        table = lake.table(first)
        table.append([first])
        for _ in range(100):
            table.append([lake.store()])
    log = [p.rsplit("/", 1)[-1] for p in off.storage.list(f"{DATASET}/_delta_log/")]
    assert f"{100:020d}.checkpoint.parquet" in log and "_last_checkpoint" in log
    assert not any("checkpoint" in p for p in on.storage.list(f"{DATASET}/_delta_log/"))
    assert rows_of(off.table()) == expected(off) and len(off.table().paths()) == 101


def test_a_delta_handle_idle_past_the_log_cleanup_reads_the_table_again_before_committing(tmp_path: Path):
    """A handle that read the table, then sat while another wrote 150 commits, checkpointed and cleaned the log
    up (retention 0 here): the log files after its version are gone. Its next commit must not land below
    the checkpoint, where readers never look: it reads the table again and lands on top."""
    from deltalake import DeltaTable

    lake = Lake(tmp_path / "data", "delta")
    first = lake.store()
    busy = lake.table(first)
    DeltaTable(str(lake.root / DATASET)).alter.set_table_properties(
        {"delta.logRetentionDuration": "interval 0 seconds"}
    )
    busy.refresh()
    busy.append([first])
    idle = lake.table()
    assert idle.paths() == {first.path}
    for _ in range(150):
        busy.append([lake.store()])
    busy.maintain(10)
    assert not lake.storage.list(f"{DATASET}/_delta_log/{2:020d}.json")  # cleaned up
    late = lake.store()
    idle.refresh()
    idle.append([late])
    assert rows_of(lake.table()) == expected(lake) and len(lake.table().paths()) == 152


# -- compaction -----------------------------------------------------------------------------------------------
def test_compaction_rewrites_small_files_into_fewer_with_the_same_rows(lake: Lake):
    files = [lake.store(rows=50, hour=1 + k % 2, region=(k == 29)) for k in range(30)]
    big = lake.store(rows=20_000, hour=1)
    table = lake.table(files[0])
    for f in [*files, big]:
        table.append([f])
    small = max(f.size for f in files)
    target = 5 * small
    assert big.size >= target  # a file at the target is left as it is
    before = rows_of(table)
    assert before == expected(lake)

    planned = compact(lake.storage, table, WriterSettings(), target, dry_run=True)
    assert planned["files_in"] == 30 and planned["groups"] >= 6, planned
    assert table.paths() == {f.path for f in [*files, big]}  # a dry run changes nothing

    done = compact(lake.storage, table, WriterSettings(), target)

    assert done["commits"] == done["files_out"] == planned["groups"], done
    assert done["inputs_deleted"] == 30 and done["outputs_deleted"] == 0 and done["skipped"] == 0
    assert rows_of(table) == before  # the same rows, each once
    fresh = lake.table()  # as another process reads it
    assert rows_of(fresh) == before
    outputs = fresh.paths() - {big.path}
    assert len(outputs) == done["files_out"] < 30
    assert lake.part_files() == fresh.paths()  # the inputs are gone from storage, the outputs are there
    assert not lake.storage.list(f"{DATASET}/{INTENTS}/")
    seqs: list[int] = []
    for path in sorted(outputs):
        name = path.rsplit("/", 1)[-1]
        footer = pq.read_metadata(lake.local(path)).metadata
        assert footer[b"flight_writer.dataset"] == DATASET.encode()
        first, last = int(footer[b"flight_writer.seq_min"]), int(footer[b"flight_writer.seq_max"])
        assert name.startswith(f"part-{first:012d}-") and len(name) == len("part-000000000001-0123456789ab.parquet")
        group = [int(s) for s in footer[b"flight_writer.seqs"].decode().split(",")]  # every other seq: no ranges
        assert group[0] == first and group[-1] == last
        assert pq.ParquetFile(lake.local(path)).metadata.row_group(0).column(0).compression == "ZSTD"
        seqs += group
    assert sorted(seqs) == [f.seqs[0] for f in files]  # each input's seq in exactly one output
    hour2 = [p for p in outputs if "hour=2" in p]
    region = [p for p in hour2 if "region" in pq.read_schema(lake.local(p)).names]
    assert len(region) == 1  # the file with the extra column joined its group; the others' rows are null there


def test_compaction_leaves_files_at_the_target_and_lone_small_files(lake: Lake):
    files = [lake.store(rows=50, hour=1), lake.store(rows=50, hour=2)]  # one small file per partition
    table = lake.table(files[0])
    table.append(files)
    assert compact(lake.storage, table, WriterSettings(), 10 * files[0].size)["groups"] == 0
    assert compact(lake.storage, table, WriterSettings(), 1)["groups"] == 0  # none below the target
    assert table.paths() == {f.path for f in files} == lake.part_files()


@pytest.mark.parametrize("crash", ["before_commit", "after_commit"])
def test_a_crash_inside_a_compaction_is_settled_by_recovery(lake: Lake, crash: str):
    files = [lake.store(rows=40) for _ in range(8)]
    table = lake.table(files[0])
    for f in files:
        table.append([f])
    inputs = {f.path for f in files}
    [group] = plan(table, stored_files(lake.storage, DATASET), 10**9)
    [rewritten] = begin(lake.storage, DATASET, group, WriterSettings())
    output = rewritten.file.path
    if crash == "after_commit":
        assert commit(lake.storage, table, rewritten)
        assert table.paths() == {output}
    else:
        assert table.paths() == inputs
    # the crash: storage holds the inputs and the output, the intent says which are which. What adoption
    # would commit (stored files the table lacks) is named by the intent, so it adopts none of them.
    table = lake.table()
    stranded = lake.part_files() - table.paths()
    assert stranded == ({output} if crash == "before_commit" else inputs)
    assert stranded <= excluded(lake.storage, DATASET) == inputs | {output}
    assert rows_of(table) == expected(lake)

    assert recover(lake.storage, table)["intents"] == 0  # an hour-old intent only, on a shared root
    done = recover(lake.storage, table, older_than=None)  # a process that has the root to itself: any age

    assert done["intents"] == 1
    if crash == "after_commit":
        assert done == {"intents": 1, "inputs_deleted": 8, "outputs_deleted": 0}
        assert table.paths() == lake.part_files() == {output}
    else:
        assert done == {"intents": 1, "inputs_deleted": 0, "outputs_deleted": 1}
        assert table.paths() == lake.part_files() == inputs
    assert rows_of(lake.table()) == expected(lake)  # every row exactly once
    assert intents(lake.storage, DATASET) == [] and excluded(lake.storage, DATASET) == set()
    assert recover(lake.storage, table, older_than=None)["intents"] == 0  # settled once


def test_a_compaction_whose_inputs_another_commit_took_commits_nothing(lake: Lake):
    files = [lake.store(rows=40) for _ in range(4)]
    table = lake.table(files[0])
    table.append(files)
    [group] = plan(table, stored_files(lake.storage, DATASET), 10**9)
    [rewritten] = begin(lake.storage, DATASET, group, WriterSettings())
    other = lake.table()
    other.replace([files[0].path], [])  # someone else took one input out (as another compaction would)

    assert not commit(lake.storage, table, rewritten)  # planned from the table as it is now

    assert recover(lake.storage, table, older_than=None)["outputs_deleted"] == 1
    assert table.paths() == {f.path for f in files[1:]}
    assert rewritten.file.path not in lake.part_files()


# -- orphans --------------------------------------------------------------------------------------------------
def test_remove_orphans_deletes_old_unreferenced_files_only(lake: Lake):
    committed = [lake.store() for _ in range(3)]
    table = lake.table(committed[0])
    table.append(committed)
    table.replace([committed[0].path], [])  # out of the current version, still in the older one
    old_orphan, fresh_orphan, claimed = lake.store(), lake.store(), lake.store()
    for f in [*committed, old_orphan, claimed]:
        lake.age(f.path, 2 * HOUR)
    lake.storage.write(  # a compaction in progress elsewhere names this one
        f"{DATASET}/{INTENTS}/x.json",
        json.dumps(
            {"id": "x", "dataset": DATASET, "inputs": [], "output": claimed.path, "created_at": time.time()}
        ).encode(),
    )
    nested_path = f"eu/{committed[1].path}"  # a dataset inside this one's folder: another table's file
    lake.storage.write(f"{DATASET}/{nested_path}", lake.local(committed[1].path).read_bytes())
    lake.age(nested_path, 2 * HOUR)

    dry = remove_orphans(lake.storage, table, HOUR, dry_run=True)
    assert dry["orphans"] == 1 and dry["deleted"] == 0 and dry["bytes"] == old_orphan.size
    done = remove_orphans(lake.storage, table, HOUR)

    assert done["deleted"] == 1
    left = lake.part_files()
    assert old_orphan.path not in left
    assert {f.path for f in [*committed, fresh_orphan, claimed]} <= left  # referenced, young, or claimed
    assert lake.local(nested_path).exists()
    assert rows_of(table) == sorted([r for r in lake.rows if r["i"] in range(10, 30)], key=lambda r: r["i"])

    done = remove_orphans(lake.storage, table, 0)  # no grace: the fresh file goes too
    left = lake.part_files()
    assert fresh_orphan.path not in left and claimed.path in left and lake.local(nested_path).exists()
    # a file only an older version holds: Iceberg keeps it while that snapshot is kept; Delta's vacuum
    # deletes a removed file once its removal is older than the retention (none here)
    assert (committed[0].path in left) == (lake.format == "iceberg")
    assert {committed[1].path, committed[2].path} <= left


# -- the command ----------------------------------------------------------------------------------------------
def tables_command(*args: str, config: Path) -> subprocess.CompletedProcess:
    command = Path(sys.executable).parent / "flight-writer"
    return subprocess.run(
        [str(command), "tables", *args, "--config", str(config)], capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("fmt", FORMATS)
def test_the_tables_command_on_a_real_root(tmp_path: Path, fmt: str):
    root = tmp_path / "data"
    config = write_config(tmp_path / "settings.toml", root, f'[datasets]\ntable = "{fmt}"\n')
    settings = load_settings(str(config))
    lake = Lake(root, fmt, settings.tables)
    files = [lake.store(rows=30) for _ in range(6)]
    table = lake.table(files[0])
    for f in files:
        table.append([f])
    lake.tables.close()

    dry = tables_command("compact", "--dry-run", "--json", config=config)
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)[DATASET] == {
        "format": fmt,
        "groups": 1,
        "files_in": 6,
        "bytes_in": sum(f.size for f in files),
    }
    done = tables_command("compact", "--dataset", DATASET, config=config)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{DATASET} ({fmt}): groups=1 files_in=6 ") and "commits=1" in done.stdout
    after = lake.table()
    assert len(after.paths()) == 1 and lake.part_files() == after.paths()
    assert rows_of(after) == expected(lake)

    kept = tables_command("maintain", "--keep", "1", "--json", config=config)
    assert kept.returncode == 0, kept.stderr
    report = json.loads(kept.stdout)[DATASET]
    if fmt == "iceberg":
        assert report["snapshots_expired"] == 6  # 6 appends and the replace: the newest one stays
        assert report["metadata_files_after"] < report["metadata_files_before"]
    else:  # a checkpoint (and _last_checkpoint) more; no log entry is 30 days old
        assert report["checkpoint_version"] == 7
        assert report["metadata_files_after"] == report["metadata_files_before"] + 2

    stray = lake.store()
    lake.age(stray.path, 2 * HOUR)
    gone = tables_command("remove-orphans", "--older-than", "3600", config=config)
    assert gone.returncode == 0, gone.stderr
    assert gone.stdout == f"{DATASET} ({fmt}): orphans=1 bytes={stray.size} deleted=1\n"
    assert lake.part_files() == lake.table().paths()
    assert rows_of(lake.table()) == expected(lake)[:-10]  # the stray file's rows never were in the table

    missing = tables_command("maintain", "--dataset", "demo/none", config=config)
    assert missing.returncode == 0 and missing.stdout == f"demo/none ({fmt}): no table yet\n"
    broken = tmp_path / "broken.toml"
    broken.write_text("[storage]\ntype = 3\n")
    assert tables_command("maintain", config=broken).returncode == 2
