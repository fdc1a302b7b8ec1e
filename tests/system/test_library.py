"""Library use: a service built from parts (a queue and an OpenDAL operator), the memory backend, and a
library that logs nothing until the program turns its logs on."""

from __future__ import annotations

import io
import subprocess
import sys

import opendal
import pyarrow as pa
import pyarrow.flight as flight
import pyarrow.parquet as pq
import pytest

from flight_writer import MemoryQueue, Service, Storage

from helpers import REPO, action, put, settings_for


def read_all(storage: Storage, dataset: str) -> pa.Table:
    paths = [p for p in storage.list(dataset + "/") if p.endswith(".parquet")]
    return pa.concat_tables([pq.read_table(io.BytesIO(storage.read(p))) for p in paths])


def test_service_from_a_queue_and_an_operator(tmp_path):
    operator = opendal.Operator("memory")
    queue = MemoryQueue(max_bytes=1 << 20)
    with Service(settings_for(tmp_path), queue=queue, storage=operator) as svc:
        assert svc.queue is queue
        with flight.connect(svc.location) as c:
            put(c, "lib", [pa.record_batch({"x": [1, 2, 3]})])
            action(c, "flush")
        table = read_all(svc.storage, "lib")
    assert table.column("x").to_pylist() == [1, 2, 3]
    assert not list(tmp_path.iterdir())  # nothing went to the local disk


def test_memory_storage_from_settings(tmp_path):
    with Service(settings_for(tmp_path, storage={"type": "memory", "root": "/lake"})) as svc:
        assert svc.status()["storage"] == {"service": "memory", "root": "/lake"}
        with flight.connect(svc.location) as c:
            put(c, "a/b", [pa.record_batch({"x": [1]}), pa.record_batch({"x": [2]})], ack="durable")
        assert read_all(svc.storage, "a/b").column("x").to_pylist() == [1, 2]
        assert svc.storage.list("_tmp/") == []  # memory cannot rename: objects are written in place


@pytest.mark.parametrize("codec", ["zstd", "snappy", "lz4", "gzip", "none"])
def test_every_compression_setting(tmp_path, codec):
    with (
        Service(settings_for(tmp_path, writer={"compression": codec})) as svc,
        flight.connect(svc.location) as c,
    ):
        put(c, "c", [pa.record_batch({"s": ["abc"] * 100})])
        action(c, "flush")
    [f] = (tmp_path / "c").rglob("*.parquet")
    expected = {"none": "UNCOMPRESSED", "lz4": "LZ4"}.get(codec, codec.upper())
    assert pq.ParquetFile(f).metadata.row_group(0).column(0).compression == expected


def test_lifecycle_refuses_restart(tmp_path):
    svc = Service(settings_for(tmp_path)).start()
    svc.stop()
    with pytest.raises(RuntimeError, match="cannot start a service that is closed"):
        svc.start()


def test_a_failed_start_gives_back_the_wal_so_a_retry_can_open_it(tmp_path):
    """The port is taken: start fails; the WAL's lock and fsync thread must not stay behind."""
    import socket

    from flight_writer import Service

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        queue = {"type": "wal", "path": str(tmp_path / "wal")}
        busy = settings_for(tmp_path / "data", queue=queue, server={"location": f"grpc://127.0.0.1:{port}"})
        with pytest.raises(Exception, match=r"(?i)address|port|bind|start"):
            Service(busy).start()
    with Service(settings_for(tmp_path / "data", queue=queue)) as svc:  # same process, same WAL
        assert svc.queue.type == "wal"


LIBRARY_PROGRAM = """
import sys
import pyarrow as pa, pyarrow.flight as flight
from loguru import logger
from flight_writer import Service, load_settings

if sys.argv[1] == "enabled":
    logger.enable("flight_writer")
settings = load_settings(overrides={"server": {"location": "grpc://127.0.0.1:0"}, "storage": {"type": "memory"}})
with Service(settings) as svc, flight.connect(svc.location) as client:
    batch = pa.record_batch({"x": [1, 2, 3]})
    writer, reader = client.do_put(flight.FlightDescriptor.for_path("lib", "quiet"), batch.schema)
    writer.write_batch(batch)
    writer.close()
    list(client.do_action(flight.Action("flush", b"")))
print("done")
"""


def test_the_library_logs_nothing_until_the_program_enables_it():
    """A Service in someone's program writes nothing to stderr (the logs of its start, writes and stop
    included), until the program calls logger.enable("flight_writer")."""

    def run(mode: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-c", LIBRARY_PROGRAM, mode], capture_output=True, text=True, cwd=REPO, timeout=60
        )
        assert done.returncode == 0 and done.stdout == "done\n", done.stderr
        return done

    assert run("quiet").stderr == ""
    enabled = run("enabled").stderr
    assert "flight-writer" in enabled and "(port " in enabled and "stopped: durable through seq 1" in enabled
