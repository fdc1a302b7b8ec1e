"""Storage outages during table commits: S3 (moto_server) stops answering while the committer commits, then
comes back. The commit fails and is retried (never landed twice); every acknowledged row ends up in the
table exactly once. The catalog of the Iceberg table is SQLite on local disk; its metadata and the files
are on S3, as for Delta."""

from __future__ import annotations

import dataclasses
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pyarrow.flight as flight
import pytest

from flight_writer import Service
from flight_writer.config import DatasetSettings, ServerSettings, Settings, TableSettings, WriterSettings
from flight_writer.lake.tables import make_tables

import emulators
from helpers import action, ints, put, wait_for


@pytest.fixture(scope="module")
def moto() -> Iterator[emulators.Emulator]:
    emulator = emulators.start("s3")
    yield emulator
    emulator.stop()


@pytest.mark.parametrize("fmt", ["iceberg", "delta"])
def test_a_storage_outage_during_commits_loses_nothing_and_commits_nothing_twice(tmp_path: Path, moto, fmt):
    storage = moto.settings(timeout=2.0, io_timeout=2.0)
    tables = TableSettings(
        commit_interval=3600, catalog_uri=f"sqlite:///{tmp_path / 'catalog.db'}", retry_initial_delay=0.1
    )
    settings = dataclasses.replace(
        Settings(),
        server=ServerSettings(location="grpc://127.0.0.1:0"),
        storage=storage,
        # a file per batch, sealed by its size: stored without a flush, so no commit is asked for before the
        # outage (a flush asks for one at once, and a Delta commit takes milliseconds)
        writer=WriterSettings(flush_interval=600, max_file_rows=1000, retry_initial_delay=0.05, retry_max_delay=0.2),
        tables=tables,
        datasets=DatasetSettings(table=fmt),
    )
    with Service(settings) as svc, flight.connect(svc.location) as client:
        put(client, "spans", [ints(1000, 0)])
        action(client, "flush", {"until": "committed"})  # the table exists: the outage hits a commit
        put(client, "spans", [ints(1000, k * 1000) for k in range(1, 6)])
        # every one of the five (files are stored in parallel: seq 6 can be durable before 5; waiting for 6
        # alone once let the outage catch 5's upload, and no commit was tried while it retried)
        stored = action(client, "ack", {"seqs": [2, 3, 4, 5, 6], "wait_ms": 60_000})["acks"]
        assert [a["state"] for a in stored] == ["durable"] * 5  # waiting for their commit (an hour away)
        emulators.suspend(moto.proc.pid)
        answers: list[dict] = []
        flushing = threading.Thread(target=lambda: answers.append(action(client, "flush", {"until": "committed"})))
        try:
            flushing.start()
            wait_for(lambda: svc.committer.stats["spans"].errors >= 2, "two failed commits while S3 is away", 120)
        finally:
            moto.proc.send_signal(signal.SIGCONT)
        flushing.join(120)
        assert answers and answers[0]["committed_through"] == 6
        stats = svc.status()["tables"]["spans"]
        # a commit whose reply the outage lost may have landed (Delta's log entry is one PUT): the retry
        # reads it back, finds the files in the table and adds nothing, so this process counts them not
        assert stats["files_committed"] in (1, 6) and stats["pending_files"] == 0
    found = make_tables(tables, DatasetSettings(table=fmt), storage)[fmt].open("spans", None)
    assert found is not None
    rows = found.scan().column("i").to_pylist()
    assert sorted(rows) == list(range(6000))  # every row once
    assert len(found.paths()) == 6
