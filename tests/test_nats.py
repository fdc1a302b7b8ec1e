"""Scale-out on NATS JetStream: ingest and write roles as separate services (in this process, then as
processes), sharing one stream and one storage root, against a real nats-server."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import natsd
import pyarrow.flight as flight
import pytest

from flight_writer import Service

from conftest import STOP_TIMEOUT, action, ints, parquet_files, put, read_dataset, settings_for


@pytest.fixture(scope="module")
def nats_server() -> Iterator[natsd.Nats]:
    server = natsd.start()
    yield server
    server.stop()


def nats_settings(root: Path, nats: natsd.Nats, stream: str, **queue) -> object:
    q = {"type": "nats", "url": list(nats.urls), "stream": stream, "ack_wait": 5, **queue}
    return settings_for(root, queue=q)


@contextlib.contextmanager
def roles(root: Path, nats: natsd.Nats, *names: str, **queue) -> Iterator[list[Service]]:
    """Services of these roles on one stream and one root, stopped in reverse."""
    stream = nats.new_stream()
    started: list[Service] = []
    try:
        for role in names:
            started.append(Service(nats_settings(root, nats, stream, **queue), role=role).start())
        yield started
    finally:
        for svc in reversed(started):
            svc.stop(STOP_TIMEOUT)


def test_ingest_and_write_roles_store_every_batch_once(data_root, nats_server):
    with roles(data_root, nats_server, "write", "write", "ingest") as (_, _, ingest):
        with flight.connect(ingest.location) as c:
            replies = put(c, "spans", [ints(1000, k * 1000) for k in range(20)])
            assert [r["seq"] for r in replies] == list(range(1, 21))
            assert {r["state"] for r in replies} == {"logged"}  # JetStream acknowledged each publish
            flushed = action(c, "flush")
            assert flushed["durable_through"] == 20
            acks = action(c, "ack", {"seqs": [1, 20]})["acks"]
            assert [a["state"] for a in acks] == ["durable", "durable"]
    got = read_dataset(data_root, "spans", sort_by="i").column("i").to_pylist()
    assert got == list(range(20_000))


def test_every_ingest_process_answers_for_every_seq(data_root, nats_server):
    with (
        roles(data_root, nats_server, "write", "ingest", "ingest") as (_, first, second),
        flight.connect(first.location) as a,
        flight.connect(second.location) as b,
    ):
        [r] = put(a, "shared", [ints(10)])
        [r2] = put(b, "shared", [ints(10, 10)])
        assert r2["seq"] == r["seq"] + 1  # one global sequence
        got = action(b, "ack", {"seq": r["seq"], "wait_ms": 0})["acks"][0]
        assert got["state"] == "logged"  # the other process's batch, known here
        assert action(b, "flush")["durable_through"] == r2["seq"]
        for client in (a, b):
            [ack] = action(client, "ack", {"seq": r["seq"], "wait_ms": 30_000})["acks"]
            assert ack["state"] == "durable" and ack["file"].startswith("shared/")
            assert action(client, "status")["durable_through"] == r2["seq"]


def test_a_batch_id_is_stored_once_whichever_ingest_process_gets_it(data_root, nats_server):
    with (
        roles(data_root, nats_server, "write", "ingest", "ingest") as (_, first, second),
        flight.connect(first.location) as a,
        flight.connect(second.location) as b,
    ):
        [one] = put(a, "ids", [ints(5)], ids=["batch-1"])
        [two] = put(b, "ids", [ints(5)], ids=["batch-1"])  # a producer re-sending to another process
        assert two["seq"] == one["seq"] and two["duplicate"] is True
        action(a, "flush")
    assert len(read_dataset(data_root, "ids")) == 5


def test_durable_streams_go_through_any_ingest_process(data_root, nats_server):
    with roles(data_root, nats_server, "write", "ingest") as (_, ingest), flight.connect(ingest.location) as c:
        replies = put(c, "dur", [ints(4), ints(4, 4)], ack="durable")
        final = replies[-1]
        assert final["state"] == "durable" and final["durable_through"] >= 2 and final["files"]
    assert len(parquet_files(data_root, "dur")) >= 1
