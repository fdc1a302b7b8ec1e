"""The writer driven synchronously (``step``/``sync``, no loop thread): what it seals when, on a real queue
and real local storage, with no clock in the way."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flight_writer.config import DatasetRule, DatasetSettings, StorageSettings, WriterSettings
from flight_writer.lake.storage import Storage
from flight_writer.queue import MemoryQueue
from flight_writer.write.stored import Stored
from flight_writer.write.writer import Writer

from helpers import ints, parquet_files

SIZE = ints(1000).get_total_buffer_size()


@pytest.fixture
def storage(tmp_path: Path) -> Storage:
    return Storage.from_settings(StorageSettings(type="fs", root=str(tmp_path)))


def fill(queue: MemoryQueue, dataset: str, n: int) -> list[int]:
    return [queue.put(dataset, b"k", ints(1000, i * 1000), 1).seq for i in range(n)]


def test_sync_stores_everything_queued_and_the_queue_makes_it_durable(storage, tmp_path):
    queue = MemoryQueue(1 << 30)
    writer = Writer(queue, storage)
    fill(queue, "a", 2)
    fill(queue, "b", 1)
    writer.sync()
    assert queue.position.durable_through == 3 and queue.stats()["pending_bytes"] == 0
    [a] = parquet_files(tmp_path, "a")
    assert pq.read_table(a).column("i").to_pylist() == list(range(2000))
    assert queue.position.describe(3)["file"] == parquet_files(tmp_path, "b")[0].relative_to(tmp_path).as_posix()
    assert writer.close() is True


def test_buffers_holding_more_than_the_queue_has_room_for_are_sealed_largest_first(storage, tmp_path):
    queue = MemoryQueue(10 * SIZE)  # room for 10 batches, the one bound
    writer = Writer(queue, storage)
    a, b = fill(queue, "a", 3), fill(queue, "b", 3)  # 6 pending: room for 4 more
    assert writer.step() == 6
    # the 5th batch made the buffers (5) hold more than the room (4): the largest, a's, went out
    assert queue.position.wait(a, 30) and queue.position.describe(b[0])["state"] == "queued"
    assert writer.stats()["open_buffers"] == 1
    writer.sync()
    assert len(parquet_files(tmp_path, "a")) == len(parquet_files(tmp_path, "b")) == 1


def test_with_room_to_spare_buffers_wait_for_their_size_or_age(storage):
    queue = MemoryQueue(100 * SIZE)
    writer = Writer(queue, storage, WriterSettings(flush_interval=600))
    fill(queue, "a", 3)
    fill(queue, "b", 3)
    writer.step()
    assert writer.stats()["open_buffers"] == 2 and queue.position.durable_through == 0
    writer.close()  # a writer never started writes everything at close
    assert queue.position.durable_through == 6


def test_a_flush_request_reaches_the_writer_through_the_feed_and_seals_its_dataset_only(storage):
    queue = MemoryQueue(1 << 30)
    writer = Writer(queue, storage, WriterSettings(flush_interval=600))
    a, b = fill(queue, "a", 2), fill(queue, "b", 2)
    assert queue.flush("a", 0) is False  # asked, not yet done
    writer.step()
    assert queue.position.wait(a, 30)  # the writer's files are stored on its pool
    assert all(queue.position.describe(s)["state"] == "queued" for s in b)
    assert writer.stats()["open_buffers"] == 1


def test_sync_refuses_a_writer_whose_loop_runs(storage):
    queue = MemoryQueue(1 << 30)
    with Writer(queue, storage) as writer, pytest.raises(RuntimeError, match="without its loop"):
        writer.sync()


def test_a_write_process_removes_only_partials_no_one_touched_for_an_hour(storage, tmp_path):
    tmp = tmp_path / "_tmp"
    tmp.mkdir()
    (tmp / "old.partial").write_bytes(b"left by a crash")
    (tmp / "busy.partial").write_bytes(b"another writer's file in the making")
    hours_ago = time.time() - 2 * 3600
    os.utime(tmp / "old.partial", (hours_ago, hours_ago))
    storage.remove_partials(older_than=3600)  # write processes share the root
    assert sorted(p.name for p in tmp.iterdir()) == ["busy.partial"]
    storage.remove_partials()  # role all: the only writer, everything under _tmp/ is a crash's
    assert list(tmp.iterdir()) == []


def test_a_stored_file_is_told_to_followers_once_with_what_a_table_commit_needs(storage, tmp_path):
    """The Stored event: after storage confirmed the object, the durability record first (the position is
    durable when a listener hears of it), then the listeners, once per file, with the path, dataset, seqs,
    rows, bytes, schema, partition values and the footer the file really has."""
    queue = MemoryQueue(1 << 30)
    rules = (("svc/*", DatasetRule(fields=("service",))),)
    writer = Writer(queue, storage, datasets=DatasetSettings(rules=rules))
    heard: list[tuple[Stored, int]] = []
    writer.followers.listeners.append(lambda event: heard.append((event, 0)))
    for k, service in enumerate(["api", "a/b", "api"]):
        batch = pa.record_batch({"i": range(k * 10, k * 10 + 10), "service": [service] * 10})
        queue.put("svc/spans", b"k", batch, 1)
    writer.sync()
    events = sorted((e for e, _ in heard), key=lambda e: e.seqs)
    assert [e.seqs for e in events] == [(1, 3), (2,)]
    for event, _ in heard:
        assert all(queue.position.describe(s)["state"] == "durable" for s in event.seqs)  # recorded first
        path = tmp_path / event.path
        assert event.kind == "parquet" and event.dataset == "svc/spans" and path.stat().st_size == event.nbytes
        stored = pq.read_metadata(path)
        assert event.rows == stored.num_rows == 10 * len(event.seqs)
        assert event.footer is not None and event.footer.num_rows == stored.num_rows
        assert event.footer.row_group(0).column(0).statistics.min == stored.row_group(0).column(0).statistics.min
        assert event.metadata[b"flight_writer.seqs"] == stored.metadata[b"flight_writer.seqs"]
        assert pq.read_schema(path).remove_metadata().equals(event.schema.remove_metadata())
        assert set(event.partition) == {"date", "hour", "service"}
    assert [e.partition["service"] for e in events] == ["api", "a/b"]  # the folder value, decoded
    assert writer.stats()["files_written"] == 2


def test_a_batch_the_encoder_rejects_is_told_as_failed(storage, tmp_path):
    queue = MemoryQueue(1 << 30)
    writer = Writer(queue, storage)
    heard: list[Stored] = []
    writer.followers.listeners.append(heard.append)
    union = pa.UnionArray.from_sparse(pa.array([0, 1], pa.int8()), [pa.array([1, 2]), pa.array(["x", "y"])])
    queue.put("bad", b"u", pa.record_batch({"u": union}), 1)  # Parquet cannot hold a union column
    writer.sync()
    [event] = heard
    assert event.kind == "failed" and event.seqs == (1,) and event.footer is None and "union" in event.error.lower()
    assert (tmp_path / event.path).exists() and queue.position.describe(1)["state"] == "failed"
    assert writer.stats()["batches_failed"] == 1
