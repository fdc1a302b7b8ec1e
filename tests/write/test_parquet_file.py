"""Row groups encoded as buffers fill, several at once, joined into one file (parquet_file.py, footer.py)."""

from __future__ import annotations

import datetime
import decimal
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.flight as flight
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest

from flight_writer.config import DatasetRule, StorageSettings, WriterSettings
from flight_writer.lake.layout import Shape
from flight_writer.lake.storage import Storage
from flight_writer.queue import MemoryQueue, Plan
from flight_writer.write import footer
from flight_writer.write.parquet_file import FileContext, ParquetFile
from flight_writer.write.stored import Followers

from helpers import action, ints, parquet_files, put, read_dataset, running, wait_for

EXACT = DatasetRule(types="exact")


def mixed(start: int, rows: int) -> pa.Table:
    """Many types, nulls, nesting, and more than 15 columns (Thrift's long list header)."""
    ids = list(range(start, start + rows))
    columns = {
        "id": pa.array(ids, pa.int64()),
        "f": pa.array([i / 3 if i % 7 else None for i in ids], pa.float64()),
        "s": pa.array([f"s{i % 11}" for i in ids]),
        "big": pa.array([f"{i}" * 3 for i in ids], pa.large_string()),
        "d": pa.array([f"k{i % 3}" for i in ids]).dictionary_encode(),
        "ts": pa.array([i * 1_000_000 for i in ids], pa.timestamp("us", "UTC")),
        "day": pa.array([datetime.date(2026, 1, 1 + i % 28) for i in ids]),
        "dec": pa.array([decimal.Decimal(i) / 100 for i in ids], pa.decimal128(12, 2)),
        "bin": pa.array([i.to_bytes(8, "little") for i in ids], pa.binary(8)),
        "b": pa.array([i % 2 == 0 for i in ids]),
        "l": pa.array([[i, i + 1] if i % 5 else None for i in ids], pa.list_(pa.int32())),
        "m": pa.array([[("a", str(i))] for i in ids], pa.map_(pa.string(), pa.string())),
        "st": pa.array([{"x": i, "y": str(i)} for i in ids]),
    }
    columns.update({f"c{k}": pa.array([i * k for i in ids], pa.int32()) for k in range(5)})
    return pa.table(columns)


def part(table: pa.Table, row_group_rows: int | None = None, **options) -> pa.Buffer:
    sink = pa.BufferOutputStream()
    with pq.ParquetWriter(sink, table.schema, compression="zstd", **options) as w:
        w.write_table(table, row_group_size=row_group_rows)
    return sink.getvalue()


def test_joined_parts_read_back_in_every_reader(tmp_path):
    tables = [mixed(0, 3000), mixed(3000, 1), mixed(3001, 4000)]
    # the last part holds 20 row groups: long lists in the footer, ordinals renumbered across parts
    parts = [part(tables[0]), part(tables[1]), part(tables[2], row_group_rows=200)]
    path = tmp_path / "joined.parquet"
    path.write_bytes(b"".join(footer.assemble(parts, {b"flight_writer.seqs": b"1-3"})))

    expected = pa.concat_tables(tables)
    f = pq.ParquetFile(path)
    assert f.metadata.num_row_groups == 22 and f.metadata.num_rows == 7001
    assert f.metadata.metadata[b"flight_writer.seqs"] == b"1-3"
    assert f.read().replace_schema_metadata(None).equals(expected)  # the original types too (ARROW:schema kept)
    for i in range(f.metadata.num_row_groups):  # every row group where its offsets say
        group = f.read_row_group(i)
        first = group.column("id")[0].as_py()
        assert group.replace_schema_metadata(None).equals(expected.slice(first, group.num_rows))
        assert f.metadata.row_group(i).column(0).statistics.min == first
    assert duckdb.sql(f"select count(*), sum(id), count(f) from '{path}'").fetchall()[0] == (
        7001,
        sum(range(7001)),
        pa.compute.count(expected["f"]).as_py(),
    )
    assert pl.read_parquet(path).equals(pl.from_arrow(expected))


def test_footer_round_trips_byte_for_byte():
    data = part(mixed(0, 500)).to_pybytes()
    start, decoded = footer.split(data)
    out = bytearray()
    footer._struct(decoded, out)
    assert bytes(out) == data[start:-8]


def test_parts_it_cannot_join_are_refused():
    with pytest.raises(ValueError, match="page index"):
        footer.assemble([part(mixed(0, 10), write_page_index=True)], {})
    with pytest.raises(ValueError, match="not a Parquet file"):
        footer.assemble([b"PAR1 not really"], {})


@pytest.fixture
def one_file(tmp_path: Path):
    """A ParquetFile on fs storage with a one-thread pool, and the queue that feeds it."""
    queue = MemoryQueue(1 << 30)
    storage = Storage.from_settings(StorageSettings(type="fs", root=str(tmp_path)))
    pool = ThreadPoolExecutor(1)
    stored: list[tuple[int, int]] = []

    def retry(what, action, transient):
        return action()

    followers = Followers(queue, retry, lambda event: None)
    followers.listeners.append(lambda event: stored.append((event.rows, event.nbytes)))
    ctx = FileContext(queue, storage, WriterSettings(), pool, retry, followers)
    yield ctx, queue, queue.position, stored
    pool.shutdown()


def test_row_groups_are_encoded_before_the_file_is_sealed(one_file, tmp_path):
    ctx, queue, tracker, stored = one_file
    for i in range(3):
        queue.put("ds", b"k", mixed(i * 100, 100).to_batches()[0], 1.0)
    entries = queue.take(10, 0)
    file = ParquetFile(ctx, "ds", "date=2025-11-25/hour=16", entries[0].seq, Shape.of(entries[0].batch.schema, EXACT))
    file.add(entries[:1])
    file.add(entries[1:2])
    ctx.executor.submit(lambda: None).result()  # one thread, in order: both parts are done now
    assert [p is not None for p in file._parts] == [True, True]
    assert not file.done.done() and not list(tmp_path.rglob("*.parquet"))
    file.seal(entries[2:])
    file.done.result(30)
    [path] = tmp_path.rglob("*.parquet")
    meta = pq.read_metadata(path)
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [100, 100, 100]
    assert meta.metadata[b"flight_writer.seqs"] == b"1-3"
    assert pq.read_table(path).column("id").to_pylist() == list(range(300))
    assert tracker.durable_through == 3 and stored == [(300, path.stat().st_size)]
    assert queue.stats()["pending_batches"] == 0
    assert not list((tmp_path / "_tmp").iterdir())


SMALL_ROW_GROUPS = {"row_group_bytes": "8000"}  # one 1,000-row int64 batch per row group


def test_a_file_of_many_row_groups_from_a_live_server(data_root):
    with running(data_root, writer=SMALL_ROW_GROUPS) as svc, flight.connect(svc.location) as c:
        replies = put(c, "many", [ints(1000, k * 1000) for k in range(12)])
        action(c, "flush")
    [f] = parquet_files(data_root, "many")
    meta = pq.read_metadata(f)
    assert meta.num_row_groups == 12 and meta.metadata[b"flight_writer.seqs"] == (
        f"{replies[0]['seq']}-{replies[-1]['seq']}".encode()
    )
    assert read_dataset(data_root, "many").column("i").to_pylist() == list(range(12_000))
    assert duckdb.sql(f"select count(*), sum(i) from '{f}'").fetchall()[0] == (12_000, sum(range(12_000)))


def test_a_batch_rejected_in_a_row_group_is_set_aside_and_the_rest_stored(data_root, caplog_loguru):
    """As test_failures' rejection test, but the bad batch is in a row group encoded before the seal."""
    schema = pa.schema([("t", pa.timestamp("s")), ("n", pa.int64())])

    def batch(t: int, n: int) -> pa.RecordBatch:
        return pa.record_batch([pa.array([t] * 1000, pa.timestamp("s")), pa.array([n] * 1000)], schema=schema)

    with running(data_root, writer={"row_group_bytes": "16000"}) as svc, flight.connect(svc.location) as c:
        replies = put(c, "rej", [batch(0, 0), batch(2**62, 1), batch(5, 2), batch(6, 3)])
        seqs = [r["seq"] for r in replies]
        action(c, "flush")
        acks = action(c, "ack", {"seqs": seqs})["acks"]
        assert [a["state"] for a in acks] == ["durable", "failed", "durable", "durable"]
        assert action(c, "status")["batches_failed"] == 1
    assert "encoding a row group failed" in caplog_loguru.text  # it was found in a part, not at the seal
    assert sorted(set(read_dataset(data_root, "rej").column("n").to_pylist())) == [0, 2, 3]
    kept = ipc.open_file(str(data_root / "_failed" / "rej" / f"seq-{seqs[1]:012d}.arrow")).read_all()
    assert kept.column("n").to_pylist() == [1] * 1000


@pytest.mark.parametrize(("writer", "step"), [(SMALL_ROW_GROUPS, "write"), ({}, "encode")])
def test_a_failing_local_disk_is_retried(data_root, writer, step):
    """Three row groups joined ("write"), or one row group encoded straight to disk ("encode")."""
    with running(data_root, writer=writer) as svc, flight.connect(svc.location) as c:
        tmp = data_root / "_tmp"
        tmp.rmdir()
        tmp.write_text("a file where the temporary directory must be")  # every local write fails
        replies = put(c, "disk", [ints(1000, k * 1000) for k in range(3)])
        flusher = threading.Thread(target=action, args=(c, "flush"))
        flusher.start()
        status = wait_for(lambda: (s := action(c, "status"))["last_error"] and s, "last_error")
        assert f"{step} disk/date=" in status["last_error"] and status["durable_through"] < replies[-1]["seq"]
        tmp.unlink()  # the disk is back
        flusher.join(60)
        assert not flusher.is_alive() and action(c, "status")["durable_through"] == replies[-1]["seq"]
    assert read_dataset(data_root, "disk").column("i").to_pylist() == list(range(3000))
    assert len(parquet_files(data_root, "disk")) == 1 and not list((data_root / "_tmp").iterdir())


@pytest.mark.parametrize("parts", [1, 2])
def test_nearly_unique_columns_get_no_dictionary(one_file, tmp_path, parts):
    """Unique ids are written plain in every row group, whether the file is one part or joined; a
    low-cardinality column keeps its dictionary; nested columns keep theirs."""
    ctx, queue, _, _ = one_file
    rows = 20_000
    for i in range(2):
        ids = pa.array(range(i * rows, (i + 1) * rows), pa.int64())
        kinds = pa.array([f"kind-{n % 5}" for n in range(rows)])
        tags = pa.array([[f"t{n % 3}"] for n in range(rows)], pa.list_(pa.string()))
        queue.put("ds", b"k", pa.record_batch({"id": ids, "kind": kinds, "tags": tags}), 1.0)
    entries = queue.take(10, 0)
    file = ParquetFile(ctx, "ds", "date=2025-11-25/hour=16", entries[0].seq, Shape.of(entries[0].batch.schema, EXACT))
    if parts == 2:
        file.add(entries[:1])
        file.seal(entries[1:])
    else:
        file.seal(entries)
    file.done.result(30)
    [path] = tmp_path.rglob("*.parquet")
    meta = pq.read_metadata(path)
    assert meta.num_row_groups == parts
    for g in range(parts):
        group = meta.row_group(g)
        assert [group.column(c).has_dictionary_page for c in range(3)] == [False, True, True]
    table = pq.read_table(path)
    assert table.column("id").to_pylist() == list(range(2 * rows))
    assert table.column("kind").to_pylist()[:6] == ["kind-0", "kind-1", "kind-2", "kind-3", "kind-4", "kind-0"]


def test_small_batches_are_encoded_in_runs_with_every_row_in_order():
    """coalesced: runs of small batches concatenated (bounded in rows), big ones as they are, dictionaries
    unified; the file holds every row in order either way."""
    from flight_writer.write.encoding import COALESCE_ROWS, coalesced

    small = [
        pa.record_batch(
            {
                "id": pa.array(range(k * 100, k * 100 + 100), pa.int64()),
                "d": pa.array([f"v{k}"] * 100).dictionary_encode(),
            }
        )
        for k in range(1000)
    ]
    runs = coalesced(small)
    first = COALESCE_ROWS // 100 * 100
    assert [b.num_rows for b in runs] == [first, 100_000 - first]
    assert pa.Table.from_batches(runs).to_pydict() == pa.Table.from_batches(small).to_pydict()
    big = [pa.record_batch({"id": pa.array(range(i * 8192, i * 8192 + 8192), pa.int64())}) for i in range(3)]
    assert coalesced(big) == big
    assert coalesced(small[:1]) == small[:1]


def stored_in_three_parts(one_file, tmp_path):
    """Three batches stored as one object of three row groups (parts joined): the first try of a plan.
    Returns the context, the shape, the file, the object's path and its bytes."""
    ctx, queue, _, _ = one_file
    for i in range(3):
        queue.put("ds", b"k", mixed(i * 100, 100).to_batches()[0], 1.0)
    entries = queue.take(10, 0)
    shape = Shape.of(entries[0].batch.schema, EXACT)
    first = ParquetFile(ctx, "ds", "date=2025-11-25/hour=16", entries[0].seq, shape)
    first.add(entries[:1])
    first.add(entries[1:2])
    first.seal(entries[2:])
    first.done.result(30)
    [path] = tmp_path.rglob("*.parquet")
    return ctx, shape, first, path, path.read_bytes()


def test_a_redone_plan_whose_object_is_there_confirms_it_as_it_is(one_file, tmp_path):
    """After a crash between upload and confirmation a plan is redone under the same name. A table may already
    have committed the object with its size, and the redo encodes in one piece what was three row groups, so
    another upload would change the bytes under the table: the object found complete is confirmed as is."""
    ctx, shape, first, path, before = stored_in_three_parts(one_file, tmp_path)

    again = MemoryQueue(1 << 30)  # the queue after the crash: the same batches, the same seqs, their plan
    for i in range(3):
        again.put("ds", b"k", mixed(i * 100, 100).to_batches()[0], 1.0)
    redone: list[tuple[int, int]] = []
    followers = Followers(again, ctx.retry, lambda event: None)
    followers.listeners.append(lambda event: redone.append((event.rows, event.nbytes, event.footer.num_row_groups)))
    redo_ctx = FileContext(again, ctx.storage, ctx.settings, ctx.executor, ctx.retry, followers)
    plan = Plan(first.path, "parquet", (1, 2, 3))
    file = ParquetFile(redo_ctx, "ds", "", 0, shape, plan)
    file.seal(again.take(10, 0))
    file.done.result(30)
    assert path.read_bytes() == before  # not rewritten
    assert redone == [(300, len(before), 3)] and again.position.durable_through == 3

    # an object that is not there (the crash came before the upload) is stored by the redo
    path.unlink()
    third = MemoryQueue(1 << 30)
    for i in range(3):
        third.put("ds", b"k", mixed(i * 100, 100).to_batches()[0], 1.0)
    followers = Followers(third, ctx.retry, lambda event: None)
    third_ctx = FileContext(third, ctx.storage, ctx.settings, ctx.executor, ctx.retry, followers)
    file = ParquetFile(third_ctx, "ds", "", 0, shape, plan)
    file.seal(third.take(10, 0))
    file.done.result(30)
    assert pq.read_table(path).column("id").to_pylist() == list(range(300))
    assert third.position.durable_through == 3


def test_a_redone_plan_never_replaces_an_object_stored_while_it_encoded(one_file, tmp_path):
    """The writer that made the plan was slow, not dead: it stores the object after the redo looked for it
    and found nothing. The redo's upload must not replace it (a table may already name it with its size):
    it finds the object there and confirms it as it is."""
    ctx, shape, first, path, before = stored_in_three_parts(one_file, tmp_path)
    path.unlink()

    class SlowFirstWriter(Storage):
        """The real local storage; the first writer's object lands right after the redo's look."""

        def parquet_footer(self, p: str):
            found = super().parquet_footer(p)
            if not path.exists():
                path.write_bytes(before)
            return found

    storage = SlowFirstWriter(ctx.storage.operator, ctx.storage.service, ctx.storage.root)
    again = MemoryQueue(1 << 30)
    for i in range(3):
        again.put("ds", b"k", mixed(i * 100, 100).to_batches()[0], 1.0)
    followers = Followers(again, ctx.retry, lambda event: None)
    redo_ctx = FileContext(again, storage, ctx.settings, ctx.executor, ctx.retry, followers)
    file = ParquetFile(redo_ctx, "ds", "", 0, shape, Plan(first.path, "parquet", (1, 2, 3)))
    file.seal(list(reversed(again.take(10, 0))))  # delivered out of order: stored in the plan's order
    file.done.result(30)
    assert path.read_bytes() == before and again.position.durable_through == 3
    assert not list(tmp_path.rglob("*.partial"))  # the redo's own file removed


def test_an_upload_never_replaces_the_object_a_redo_of_its_plan_stored_first(one_file, tmp_path):
    """The other order: the writer that made the plan was slow, another writer redid the plan and stored
    the object first (a table may have named it with its size). The first writer's upload finds the name
    taken by an object of its seqs and confirms it as it is."""
    ctx, shape, _, path, redone = stored_in_three_parts(one_file, tmp_path)  # what the redo stored
    path.unlink()

    class RedoFirst(Storage):
        def commit(self, tmp: str, target: str, replace: bool = True) -> None:
            (tmp_path / target).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / target).write_bytes(redone)  # the redo's object lands just before this upload
            super().commit(tmp, target, replace)

    slow = MemoryQueue(1 << 30)
    for i in range(3):
        slow.put("ds", b"k", mixed(i * 100, 100).to_batches()[0], 1.0)
    events: list[str] = []
    followers = Followers(slow, ctx.retry, lambda event: None)
    followers.listeners.append(lambda event: events.append(event.nbytes))
    storage = RedoFirst(ctx.storage.operator, ctx.storage.service, ctx.storage.root)
    file = ParquetFile(FileContext(slow, storage, ctx.settings, ctx.executor, ctx.retry, followers), "ds", "", 1, shape)
    file.seal(slow.take(10, 0))  # one piece: other bytes than the redo's three row groups
    file.done.result(30)
    [stored] = tmp_path.rglob("*.parquet")
    assert stored.read_bytes() == redone and events == [len(redone)] and slow.position.durable_through == 3
    assert not list(tmp_path.rglob("*.partial"))
