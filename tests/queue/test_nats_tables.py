"""Lake tables in the scale-out topology: several write processes commit to one table through NATS, each
commit a compare-and-swap planned from the table's version, and every ingest process learns of commits
from the committed records. Against a real nats-server; the tables are read back with their own readers."""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.flight as flight
import pytest
from test_nats import KILLS, Producer, cluster_config, serve

from flight_writer.config import DatasetSettings, StorageSettings, TableSettings
from flight_writer.lake.tables import make_tables

import natsd
from helpers import action, ints, put

pytestmark = pytest.mark.parametrize("fmt", ["iceberg", "delta"])


@pytest.fixture(scope="module")
def nats_server() -> Iterator[natsd.Nats]:
    server = natsd.start()
    yield server
    server.stop()


def table_rows(root: Path, dataset: str, fmt: str) -> pa.Table:
    tables = make_tables(TableSettings(), DatasetSettings(table=fmt), StorageSettings(root=str(root)))[fmt]
    table = tables.open(dataset, None)
    assert table is not None, f"no {fmt} table for {dataset!r}"
    paths = sorted(table.paths())
    assert len(paths) == len(set(paths))
    rows = table.scan()
    tables.close()
    return rows


def test_two_write_processes_commit_every_row_once(tmp_path, data_root, nats_server, server_process, fmt):
    config = cluster_config(
        tmp_path,
        data_root,
        nats_server,
        nats_server.new_stream(),
        f'[datasets]\ntable = "{fmt}"\n[tables]\ncommit_interval = 0.5\n',
    )
    ingest = [server_process(config, cmd=serve("ingest", config)) for _ in "ab"]
    for _ in "ab":
        server_process(config, cmd=serve("write", config), ready="writing (role = write)")
    with flight.connect(ingest[0].location) as a, flight.connect(ingest[1].location) as b:
        replies = [*put(a, "kills", [ints(1000, k * 1000) for k in range(10)])]
        replies += put(b, "kills", [ints(1000, k * 1000) for k in range(10, 20)])
        flushed = action(a, "flush", {"until": "committed"})
        assert flushed["committed_through"] >= 20
        [ack] = action(b, "ack", {"seq": replies[0]["seq"], "until": "committed", "wait_ms": 60_000})["acks"]
        assert ack["state"] == "committed"  # the other ingest process's batch, committed by some writer
    got = sorted(table_rows(data_root, "kills", fmt).column("i").to_pylist())
    assert got == list(range(20_000))


def test_killed_write_processes_leave_every_acknowledged_row_in_the_table_once(
    tmp_path, data_root, nats_server, server_process, fmt
):
    config = cluster_config(
        tmp_path,
        data_root,
        nats_server,
        nats_server.new_stream(),
        f'[datasets]\ntable = "{fmt}"\n[tables]\ncommit_interval = 0.2\n',
    )
    ingest = server_process(config, cmd=serve("ingest", config))
    writers = [server_process(config, cmd=serve("write", config), ready="writing (role = write)") for _ in "ab"]
    producer = Producer(lambda: ingest.location)
    rng = random.Random()
    for _ in range(KILLS):
        time.sleep(rng.uniform(0.2, 0.8))  # files are sealed every 0.3 s, committed every 0.2 s
        victim = rng.randrange(len(writers))
        writers[victim].close()  # kill -9: between a store and its commit, or a commit and its record
        writers[victim] = server_process(config, cmd=serve("write", config), ready="writing (role = write)")
    acked = producer.finish()
    # a write process that starts adopts what a dead one stored and never committed
    writers.append(server_process(config, cmd=serve("write", config), ready="writing (role = write)"))
    with flight.connect(ingest.location) as c:
        assert action(c, "flush", {"until": "committed"})["committed_through"] >= len(acked)
    for w in writers:
        w.close()
    restart = server_process(config, cmd=serve("write", config), ready="writing (role = write)")
    restart.close()
    values = table_rows(data_root, "kills", fmt).column("i").to_numpy()
    counts = Counter((values // 1000).tolist())
    assert not [k for k, n in counts.items() if n != 1000], "a batch in the table more or less than once"
    assert len(acked) >= 100
    assert acked <= set(counts), f"lost: {sorted(acked - set(counts))[:10]}"
