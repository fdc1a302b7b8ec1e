"""The writer driven synchronously (``step``/``sync``, no loop thread): what it seals when, on a real queue
and real local storage, with no clock in the way."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from helpers import ints, parquet_files

from flight_writer.config import StorageSettings, WriterSettings
from flight_writer.lake.storage import Storage
from flight_writer.queue import MemoryQueue
from flight_writer.write.writer import Writer

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
