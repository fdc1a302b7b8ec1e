"""Scale-out on NATS JetStream: ingest and write roles as separate services (in this process, then as
processes), sharing one stream and one storage root, against a real nats-server."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import nats as nats_client
import nats.js.errors
import pyarrow as pa
import pyarrow.flight as flight
import pytest

from flight_writer import Service
from flight_writer.config import QueueSettings
from flight_writer.queue import Plan, QueueFull, QueueLost
from flight_writer.queue.nats.queue import NatsQueue

import natsd
from emulators import HoldingProxy, free_port, suspend
from helpers import (
    REPO,
    STOP_TIMEOUT,
    action,
    ints,
    parquet_files,
    put,
    read_dataset,
    send,
    settings_for,
    take_rows,
    wait_for,
    write_config,
)

KILLS = 20  # per run: the target the issue sets


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
    with (
        roles(data_root, nats_server, "write", "write", "ingest") as (_, _, ingest),
        flight.connect(ingest.location) as c,
    ):
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


def test_a_batch_over_max_payload_goes_as_pieces_with_a_seq_each(data_root, nats_server):
    big = ints(300_000)  # 2.4 MB of int64: over the server's max_payload (1 MiB by default)
    with roles(data_root, nats_server, "write", "ingest") as (_, ingest), flight.connect(ingest.location) as c:
        [reply] = put(c, "big", [big], ids=["big-1"])
        assert len(reply["seqs"]) >= 3 and reply["seq"] == max(reply["seqs"]) and reply["rows"] == 300_000
        [again] = put(c, "big", [big], ids=["big-1"])  # re-sent: every piece known by its id
        assert again["duplicate"] is True and again["seqs"] == reply["seqs"]
        acks = action(c, "ack", {"seqs": reply["seqs"], "wait_ms": 0})["acks"]
        assert {a["state"] for a in acks} == {"logged"}
        action(c, "flush")
    assert read_dataset(data_root, "big", sort_by="i").column("i").to_pylist() == list(range(300_000))


@pytest.mark.parametrize("streams", [1, 2])
def test_an_ack_through_another_ingest_process_knows_a_seq_issued_a_moment_ago(data_root, nats_server, streams):
    """A process keeps a stream's state 0.2 s; an ack of a seq above what it knows asks again: another
    process's batch is answered as logged, not "unknown" (and so an ack's wait_ms waits for it)."""
    with (
        roles(data_root, nats_server, "ingest", "ingest", streams=streams) as (first, second),
        flight.connect(first.location) as a,
        flight.connect(second.location) as b,
    ):
        action(b, "status")  # b has just read the streams' state
        for k in range(3):
            [reply] = put(a, f"moment-{k}", [ints(5)])  # datasets in either stream
            [ack] = action(b, "ack", {"seq": reply["seq"], "wait_ms": 0})["acks"]
            assert ack["state"] == "logged", ack


def test_durable_streams_go_through_any_ingest_process(data_root, nats_server):
    with roles(data_root, nats_server, "write", "ingest") as (_, ingest), flight.connect(ingest.location) as c:
        replies = put(c, "dur", [ints(4), ints(4, 4)], ack="durable")
        final = replies[-1]
        assert final["state"] == "durable" and final["durable_through"] >= 2 and final["files"]
    assert len(parquet_files(data_root, "dur")) >= 1


# -- the queue itself: plans redone across writers, messages kept alive --------------------------------
def queue_settings(nats: natsd.Nats, **values) -> QueueSettings:
    return QueueSettings(type="nats", url=nats.urls, stream=nats.new_stream(), **{"ack_wait": 1.0, **values})


def test_a_plan_whose_writer_died_is_redone_as_planned_by_every_writer_that_gets_part_of_it(nats_server):
    settings = queue_settings(nats_server)
    dead = NatsQueue(settings)
    dead.put("ds", b"k", ints(10), 5)
    dead.put("ds", b"k", ints(10, 10), 5)
    plan = Plan("ds/date=2026-11-27/hour=21/part-x.parquet", "parquet", (1, 2))
    assert [e.seq for e in dead.take(10, 5)] == [1, 2]
    dead.plan(plan)
    dead.close()  # died after recording its plan, before storing: nothing acknowledged
    first, second = NatsQueue(settings, "write"), NatsQueue(settings, "write")
    try:
        got = first.take(1, 30)  # seq 1, redelivered after ack_wait; seq 2 is read from the stream
        assert sorted(e.seq for e in got) == [1, 2] and {e.planned for e in got} == {plan}
        also = second.take(1, 30)  # seq 2, redelivered here: the same plan, the same object name
        assert sorted(e.seq for e in also) == [1, 2] and {e.planned for e in also} == {plan}
        assert got[0].batch.equals(ints(10)) or got[1].batch.equals(ints(10))
        first.confirm(got, plan.path)
        second.confirm(also, plan.path)  # the same object again: overwritten, not a second copy
        assert first.position.durable_through == 2 and first.stats()["pending_batches"] == 0
    finally:
        first.close()
        second.close()


def test_two_live_writers_holding_one_batch_store_it_once(nats_server):
    """A batch given to a second writer while the first still holds it (the first was slow, or NATS was
    away): the plan recorded first keeps it; the other file is not stored and its batches come again."""
    settings = queue_settings(nats_server, ack_wait=30.0)
    slow, fast = NatsQueue(settings), NatsQueue(settings, "write")
    try:
        slow.put("ds", b"k", ints(10), 5)
        slow.put("ds", b"k", ints(10, 10), 5)
        mine = slow.take(10, 5)
        assert [e.seq for e in mine] == [1, 2]
        slow._link.run(mine[0].handle.nak())  # as JetStream does after ack_wait: seq 1 goes to another writer
        [theirs] = fast.take(10, 10)
        assert theirs.seq == 1
        fast.plan(Plan("ds/part-fast.parquet", "parquet", (1,)), [theirs])  # recorded first: it holds seq 1
        with pytest.raises(QueueLost, match="seqs 1 are in another writer's plan"):
            slow.plan(Plan("ds/part-slow.parquet", "parquet", (1, 2)), mine)
        fast.confirm([theirs], "ds/part-fast.parquet")
        [again] = fast.take(10, 10)  # seq 2, given back by the slow writer, stored once by whoever takes it
        assert again.seq == 2 and again.planned is None
        fast.plan(Plan("ds/part-2.parquet", "parquet", (2,)), [again])
        fast.confirm([again], "ds/part-2.parquet")
        assert fast.position.describe(1)["file"] == "ds/part-fast.parquet"
        assert fast.position.durable_through == 2 and fast.stats()["pending_batches"] == 0
    finally:
        slow.close()
        fast.close()


def test_a_plan_its_writer_must_withdraw_is_never_redone_by_another(nats_server):
    """A writer's plan that meets an earlier, unconfirmed plan is withdrawn by its writer; if that writer
    stalls between the two records (SIGSTOP, a VM paused) and a third writer gets a seq of the doomed plan,
    it must not redo it: the redo reads the earlier plan's batches from the stream and stores them in a
    second object (a review reproduced it with processes: batches twice in Parquet, Delta and Iceberg)."""
    settings = queue_settings(nats_server, ack_wait=30.0)
    a, b, c = NatsQueue(settings), NatsQueue(settings, "write"), NatsQueue(settings, "write")
    try:
        for k in range(3):
            a.put("ds", b"k", ints(10, 10 * k), 5)
        held = a.take(10, 5)
        assert [e.seq for e in held] == [1, 2, 3]
        for e in held:  # A stalls past ack_wait: JetStream gives its messages to other writers
            a._link.run(e.handle.nak())
        early = b.take(2, 10)
        assert [e.seq for e in early] == [1, 2]
        b.plan(Plan("ds/part-b.parquet", "parquet", (1, 2)), early)  # holds 1, 2; B is slow to store it
        doomed = Plan("ds/part-a.parquet", "parquet", (1, 2, 3))
        a._records.record_plan(doomed)  # A wakes and records its plan ...
        assert a._records.taken(doomed) == [1, 2]  # ... which it must withdraw, but stalls again first
        c._records.catch_up(10)
        got = c.take(10, 10)  # seq 3 (B holds 1, 2): a batch of its own, not the doomed plan redone
        assert [(e.seq, e.planned) for e in got] == [(3, None)]
        a._records.withdraw(doomed)
        b.confirm(early, "ds/part-b.parquet")
        c.plan(Plan("ds/part-c.parquet", "parquet", (3,)), got)
        c.confirm(got, "ds/part-c.parquet")
        files = {s: c.position.describe(s)["file"] for s in (1, 2, 3)}
        assert files == {1: "ds/part-b.parquet", 2: "ds/part-b.parquet", 3: "ds/part-c.parquet"}
    finally:
        a.close()
        b.close()
        c.close()


def test_the_writers_room_is_the_stream_less_what_writers_hold_not_what_waits_for_them(nats_server):
    """The writer seals its largest buffer once its buffers hold more than ``room()``. Messages no writer has
    taken yet do not count against it: a stream full of them means the writers are behind, and sealing
    would only make smaller files (with the old rule, a full stream had the writer seal a file per batch or
    two). What writers hold, delivered and not acknowledged, does count, this process's or another's."""
    settings = queue_settings(nats_server, ack_wait=30.0, max_bytes=400_000)
    q, other = NatsQueue(settings), NatsQueue(settings, "write")
    try:
        for k in range(22):
            q.put("ds", b"k", ints(4000, k * 4000), 5)  # ~16.5 KB each with lz4: the stream is nearly full
        state = q._publisher.stream_state(fresh=True)
        each = state.bytes // state.messages
        assert q._publisher.room() < 50_000  # what producers may still put
        assert q.room() == 400_000  # the writer's: nothing held yet
        mine = q.take(3, 5)

        def held() -> float:  # messages held by writers, in mean message sizes, as the consumer says now
            q._feed.forget_held()  # (room() asks it at most every 0.2 s)
            return (400_000 - q.room()) / each

        assert len(mine) == 3 and round(held(), 3) == 3
        theirs = other.take(2, 5)  # another writer's buffers count too
        assert len(theirs) == 2 and round(held(), 3) == 5
        q.confirm(mine, "ds/part-1.parquet")  # acknowledged: gone from the stream
        assert round(held(), 3) == 2
    finally:
        q.close()
        other.close()


def test_a_batch_already_in_a_confirmed_object_is_dropped_when_redelivered(nats_server):
    settings = queue_settings(nats_server)
    slow = NatsQueue(settings)
    slow.put("ds", b"k", ints(10), 5)
    entries = slow.take(10, 5)
    other = NatsQueue(settings, "write")
    try:
        slow.confirm(entries, "ds/part-1.parquet")  # confirmed, and acknowledged
        assert other.take(10, 0.5) == []  # nothing comes back
        assert other.position.describe(1)["state"] == "durable"
    finally:
        slow.close()
        other.close()


def test_batches_buffered_longer_than_ack_wait_stay_with_their_writer(nats_server):
    settings = queue_settings(nats_server, ack_wait=1.0)
    holder, other = NatsQueue(settings), NatsQueue(settings, "write")
    try:
        holder.put("ds", b"k", ints(10), 5)
        entries = holder.take(10, 5)
        # three ack_waits in a buffer: the keepalive (in_progress every ack_wait / 3) keeps them here
        assert other.take(10, 3.0) == []
        holder.confirm(entries, "ds/part-1.parquet")
        assert holder.stats()["pending_batches"] == 0
    finally:
        holder.close()
        other.close()


def test_the_dedupe_window_is_a_duration(nats_server):
    q = NatsQueue(queue_settings(nats_server, duplicate_window=1.0))
    try:
        assert q.put("ds", b"k", ints(1), 5, "a") == (1, False)
        assert q.put("ds", b"k", ints(1), 5, "a") == (1, True)
        time.sleep(1.5)  # the window is a duration: after it, the id is new again
        assert q.put("ds", b"k", ints(1), 5, "a") == (2, False)
    finally:
        q.close()


def test_a_producer_id_never_meets_the_ids_a_process_makes(nats_server):
    """Batches without an id get one from their process (so a retried publish is stored once): a producer
    that sends that very string as its id stores a batch of its own, and leaves the process's alone."""
    q = NatsQueue(queue_settings(nats_server))
    try:
        assert q.put("ds", b"k", ints(1), 5) == (1, False)  # made id: the process's name + "-1"
        made = f"{q._publisher._name}-1"
        assert made.startswith("~") and q.put("ds", b"k", ints(2), 5, made) == (2, False)
        assert q.put("ds", b"k", ints(3), 5) == (3, False)
        taken = q.take(10, 0)
        assert [(e.seq, e.client_id, e.batch.num_rows) for e in taken] == [(1, None, 1), (2, made, 2), (3, None, 3)]
    finally:
        q.close()


def test_a_batch_split_into_messages_leaves_an_id_like_its_pieces_to_other_batches(data_root, nats_server):
    """A batch over a message's size goes as pieces, each kept by an id of its own: a producer's id that
    reads like a piece's ("a#1") is another batch, stored (it was answered as a duplicate of piece 1)."""
    with roles(data_root, nats_server, "write", "ingest") as (_, ingest), flight.connect(ingest.location) as c:
        [whole] = put(c, "pieces", [ints(200_000)], ids=["a"])  # 1.6 MB of int64: over max_message_bytes
        [other] = put(c, "pieces", [ints(7, 1_000_000)], ids=["a#1"])
        [again] = put(c, "pieces", [ints(200_000)], ids=["a"])  # re-sent: splits the same way
        assert len(whole["seqs"]) > 1 and "duplicate" not in other and other["seq"] not in whole["seqs"]
        assert again["duplicate"] and again["seqs"] == whole["seqs"]
        action(c, "flush")
    assert read_dataset(data_root, "pieces").num_rows == 200_007


def test_an_id_that_looks_encoded_from_an_earlier_version_is_taken_as_it_is(nats_server):
    """An ingest process of an earlier version sent ids as they were: one that starts like an encoded id but
    is none is the batch's id all the same, and the batch is taken like any other (not dropped as broken)."""
    from flight_writer.queue.ipc import encode_ipc, write_options

    settings = queue_settings(nats_server)
    q = NatsQueue(settings)

    async def publish_as_before() -> None:
        nc = await nats_client.connect(nats_server.urls[0])
        try:
            headers = {"fw-dataset": "ds", "fw-at": repr(time.time()), "Nats-Msg-Id": "~b64~zz!", "fw-id": "1"}
            payload = encode_ipc(ints(4), write_options("none")).to_pybytes()
            await nc.jetstream().publish(f"{settings.stream}.data", payload, headers=headers)
        finally:
            await nc.close()

    try:
        asyncio.run(publish_as_before())
        taken = q.take(10, 30)
        assert [(e.seq, e.client_id, e.batch.num_rows) for e in taken] == [(1, "~b64~zz!", 4)]
    finally:
        q.close()


def test_a_connection_whose_loop_thread_starts_late_opens_all_the_same(nats_server, monkeypatch):
    """On a loaded machine the loop's thread may not run before the connection is first used: a write
    process then failed to start ("Cannot close a running event loop", the chaos tests saw it once)."""
    from flight_writer.queue.nats import link

    class LateLoop(asyncio.SelectorEventLoop):
        def run_forever(self) -> None:
            time.sleep(0.2)  # stands for a thread the scheduler has not run yet
            super().run_forever()

    monkeypatch.setattr(link.asyncio, "new_event_loop", LateLoop)
    q = NatsQueue(queue_settings(nats_server))
    try:
        assert q.put("ds", b"k", ints(1), 5) == (1, False)
    finally:
        q.close()


def test_a_flush_with_nats_away_returns_when_its_timeout_ends(nats_server):
    """A flush asks NATS for the stream's state and publishes its request: with NATS paused each waited for
    its own timeout (the state 5-10 s) before the flush's own was looked at."""
    q = NatsQueue(queue_settings(nats_server))
    nats = nats_server.servers[0].proc
    try:
        q.put("ds", b"k", ints(1), 5)  # not written: no write process takes it
        suspend(nats.pid)
        try:
            started = time.monotonic()
            assert q.flush(None, 0.2) is False
            took = time.monotonic() - started
        finally:
            os.kill(nats.pid, signal.SIGCONT)
        assert took < 3.0, took  # 0.2 s asked; it took 10.2 s before (two stream-info requests of 5 s)
    finally:
        q.close()


# -- processes: kill -9 of writers and ingest processes, of NATS itself -----------------------------------
def test_batches_put_while_a_message_is_in_flight_share_the_next_one(nats_server):
    """Packing, made certain by pausing NATS: the first message cannot be acknowledged, so the batches put
    meanwhile wait together for the next; each receipt names the record (seq) holding its batch, and the
    feed hands out each record as one entry of its batches, in order."""
    q = NatsQueue(queue_settings(nats_server, ack_wait=5.0))
    nats = nats_server.servers[0].proc
    batches = [ints(100, k * 100) for k in range(50)]
    try:
        suspend(nats.pid)
        try:
            receipts = [q.put_packed("packed", b"k", b, 60) for b in batches]
            put_by = time.time()
        finally:
            os.kill(nats.pid, signal.SIGCONT)
        seqs = [r.result(60).seq for r in receipts]
        assert seqs[-1] <= 2 and seqs == sorted(seqs) and q.last_seq == seqs[-1]
        got: list = []
        while sum(e.batch.num_rows for e in got) < 5000:
            got += q.take(100, 30)
        assert [e.seq for e in got] == sorted(set(seqs)) and all(e.client_id is None for e in got)
        # the time received is the first batch's, not when the message could go (after NATS came back)
        assert all(e.received_at <= put_by for e in got)
        assert pa.Table.from_batches([e.batch for e in got]).equals(pa.Table.from_batches(batches))
        assert q.stats()["received_batches"] == 50
        q.plan(Plan("packed/a.parquet", "parquet", tuple(e.seq for e in got)), got)
        q.confirm(got, "packed/a.parquet")
        assert q.position.durable_through == seqs[-1] and q.stats()["pending_batches"] == 0
    finally:
        q.close()


def paused(nats: natsd.Nats) -> contextlib.AbstractContextManager:
    """NATS stopped (SIGSTOP) for the block: publishes wait, nothing is lost."""

    @contextlib.contextmanager
    def pause() -> Iterator[None]:
        pid = nats.servers[0].proc.pid
        suspend(pid)
        try:
            yield
        finally:
            os.kill(pid, signal.SIGCONT)

    return pause()


def test_packs_stay_under_the_message_limit_counted_in_ipc_bytes(nats_server):
    """800-byte incompressible batches: their IPC messages are ~1.3 x their Arrow bytes, so a pack counted
    in Arrow bytes would pass NATS's max_payload (1 MiB here); every batch is kept and taken once."""
    q = NatsQueue(queue_settings(nats_server, ack_wait=5.0, compression="none"))
    batches = [
        pa.record_batch({"k": pa.array([k] * 10), "b": pa.array([os.urandom(72) for _ in range(10)])})
        for k in range(2000)
    ]
    try:
        with paused(nats_server):
            receipts = [q.put_packed("limits", b"k", b, 60) for b in batches]
        seqs = [r.result(60).seq for r in receipts]
        assert seqs == sorted(seqs) and len(set(seqs)) < 100  # packed
        got = take_rows(q, 20_000)
        assert pa.Table.from_batches([e.batch for e in got]).equals(pa.Table.from_batches(batches))
        assert max(e.nbytes for e in got) <= q.max_message_bytes
    finally:
        q.close()


def test_a_failed_pack_fails_the_stream_batches_behind_it_and_none_after_it_is_kept(nats_server):
    """The first message's publish cannot finish (NATS paused) and its put gives up (QueueFull): the batch
    packed behind it fails with it, and a put after it (knowing its predecessor) raises at once. The first
    publish reached the paused server's socket, so it may be kept once NATS runs again (a publish whose
    answer never came: why batch ids exist); the batch behind it only ever as part of that same message."""
    q = NatsQueue(queue_settings(nats_server, ack_wait=5.0))
    try:
        with paused(nats_server):
            first = q.put_packed("failing", b"k", ints(10), 0.3)
            behind = q.put_packed("failing", b"k", ints(10, 10), 60, after=first)
            with pytest.raises(QueueFull):
                behind.result(60)
            with pytest.raises(QueueFull):
                q.put_packed("failing", b"k", ints(10, 20), 60, after=behind)
            assert isinstance(first.exception(), QueueFull)
        fresh = q.put_packed("failing", b"k", ints(10, 30), 60).result(60)
        got = take_rows(q, 10)
        assert fresh.seq == max(e.seq for e in got)
        by_entry = [set(e.batch.column("i").to_pylist()) for e in got]
        assert not any(v & set(range(20, 30)) for v in by_entry)  # after: never published
        assert all(v & set(range(10)) for v in by_entry if v & set(range(10, 20)))  # behind: only with the first
    finally:
        q.close()


def put_pipelined(
    client: flight.FlightClient, dataset: str, batches: list[pa.RecordBatch], ids: dict[int, str] | None = None
) -> list[dict]:
    """One stream whose batches are all written before any reply is read (as a producer that does not wait);
    ``ids``: the batches (by index) sent with an id."""
    writer, reader = client.do_put(flight.FlightDescriptor.for_path(dataset), batches[0].schema)
    for k, batch in enumerate(batches):
        if ids and k in ids:
            writer.write_with_metadata(batch, pa.py_buffer(json.dumps({"id": ids[k]}).encode()))
        else:
            writer.write_batch(batch)
    writer.done_writing()
    replies = []
    while (buf := reader.read()) is not None:
        replies.append(json.loads(buf.to_pybytes()))
    writer.close()
    return replies


def test_batches_with_dictionaries_are_never_packed(nats_server):
    """int8-indexed dictionaries, each batch its own 100 values: joined they would need more than 127, so a
    packed message could not be read back as one batch. Such batches go alone, each with its seq."""
    q = NatsQueue(queue_settings(nats_server, ack_wait=5.0))
    batches = [
        pa.record_batch(
            {"d": pa.DictionaryArray.from_arrays(pa.array(range(100), pa.int8()), [f"v{k}-{j}" for j in range(100)])}
        )
        for k in range(5)
    ]
    try:
        receipts = [q.put_packed("dicts", b"k", b, 60) for b in batches]
        assert [r.result(60).seq for r in receipts] == [1, 2, 3, 4, 5]
        got = take_rows(q, 500)
        assert [e.seq for e in got] == [1, 2, 3, 4, 5]
        assert all(e.batch.equals(b) for e, b in zip(got, batches, strict=True))
    finally:
        q.close()


def test_small_batches_without_ids_get_a_reply_each_in_order_and_are_stored_once(data_root, nats_server):
    batches = [ints(50, k * 50) for k in range(400)]
    with roles(data_root, nats_server, "write", "ingest") as (_, ingest), flight.connect(ingest.location) as c:
        replies = put_pipelined(c, "small", batches)
        assert [r["rows"] for r in replies] == [50] * 400 and {r["state"] for r in replies} == {"logged"}
        seqs = [r["seq"] for r in replies]
        assert seqs == sorted(seqs)  # several batches may share a seq: a packed message
        mixed = put_pipelined(c, "small", [ints(50, 20_000 + k * 50) for k in range(40)], {10: "m-10", 30: "m-30"})
        assert [r.get("id") for r in mixed if "id" in r] == ["m-10", "m-30"]
        seqs += [r["seq"] for r in mixed]
        assert seqs == sorted(seqs)  # a batch with an id waits for the packed ones before it
        assert action(c, "flush")["durable_through"] == seqs[-1]
        acks = action(c, "ack", {"seqs": sorted(set(seqs)), "wait_ms": 0})["acks"]
        assert {a["state"] for a in acks} == {"durable"}
        assert action(c, "status")["received_batches"] == 440
    got = read_dataset(data_root, "small", sort_by="i").column("i").to_pylist()
    assert got == list(range(22_000))


def cluster_config(
    tmp_path: Path, root: Path, nats: natsd.Nats, stream: str, extra: str = "", streams: int = 1, slots: int = 0
) -> Path:
    urls = ", ".join(f'"{u}"' for u in nats.urls)
    return write_config(
        tmp_path / f"fw-{streams}.toml",
        root,
        f"""
[queue]
type = "nats"
url = [{urls}]
stream = "{stream}"
streams = {streams}
stream_slots = {slots}
ack_wait = 2.0
put_timeout = 60.0
[writer]
flush_interval = 0.3
max_file_rows = 20000
{extra}""",
    )


def serve(role: str, config: Path) -> list[str]:
    return [sys.executable, "-m", "flight_writer.cli", "serve", "--config", str(config), "--role", role]


class Producer:
    """Sends numbered 1,000-row batches with ids (``b<k>``), ten per stream, re-sending a stream whose call
    failed (the ingest process died, NATS was away): what it was told is safe is in ``acked``. Without
    ``ids`` it writes a stream's batches before reading its replies, so they are packed (NATS)."""

    def __init__(
        self, location: Callable[[], str], per_stream: int = 10, dataset: str = "kills", ids: bool = True
    ) -> None:
        self.location = location
        self.per_stream = per_stream
        self.dataset = dataset
        self.ids = ids
        self.acked: set[int] = set()
        self.seqs: set[int] = set()  # every seq answered
        self.top = 0  # the highest seq answered
        self.stop = threading.Event()
        self.streaming = threading.Event()  # set while a stream is open
        self.errors = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        k = 0
        while not self.stop.is_set():
            ks = list(range(k, k + self.per_stream))
            try:
                with flight.connect(self.location()) as c:
                    self.streaming.set()
                    batches = [ints(1000, j * 1000) for j in ks]
                    if self.ids:
                        replies = put(c, self.dataset, batches, ids=[f"{self.dataset}-{j}" for j in ks])
                    else:  # a reply per batch, in order
                        replies = put_pipelined(c, self.dataset, batches)
                        for j, r in zip(ks, replies, strict=True):
                            r["id"] = f"{self.dataset}-{j}"
            except (flight.FlightError, OSError, AttributeError):  # AttributeError: the stream ended, no reply
                self.errors += 1
                time.sleep(0.1)  # the process is being restarted; try the same batches again
                continue
            finally:
                self.streaming.clear()
            self.acked.update(int(r["id"].rsplit("-", 1)[1]) for r in replies)
            self.seqs.update(r["seq"] for r in replies)
            self.top = max(self.top, *(r["seq"] for r in replies))
            k += 10

    def finish(self) -> set[int]:
        self.stop.set()
        self.thread.join(120)
        return self.acked


def exactly_once(root: Path, acked: set[int], dataset: str = "kills") -> None:
    values = read_dataset(root, dataset).column("i").to_numpy()
    counts = Counter((values // 1000).tolist())
    assert not [k for k, n in counts.items() if n != 1000], "a batch stored more or less than once"
    assert acked <= set(counts), f"lost: {sorted(acked - set(counts))[:10]}"


def kill_writers(config: Path, writers: list, server_process: Callable, kills: int = KILLS) -> None:
    """``kills`` times, a random write process killed (-9) mid-file and started again."""
    rng = random.Random(int(os.environ.get("CRASH_SEED", random.randrange(1 << 30))))
    for _ in range(kills):
        time.sleep(rng.uniform(0.2, 0.8))  # mid-file: files are sealed every 0.3 s
        victim = rng.randrange(len(writers))
        writers[victim].close()  # kill -9
        writers[victim] = server_process(config, cmd=serve("write", config), ready="writing (role = write)")


@pytest.mark.parametrize("ids", [True, False], ids=["ids", "packed"])
def test_killed_write_processes_lose_nothing_and_store_nothing_twice(
    tmp_path, data_root, nats_server, server_process, ids
):
    config = cluster_config(tmp_path, data_root, nats_server, nats_server.new_stream())
    ingest = server_process(config, cmd=serve("ingest", config))
    writers = [server_process(config, cmd=serve("write", config), ready="writing (role = write)") for _ in "ab"]
    producer = Producer(lambda: ingest.location, ids=ids)
    kill_writers(config, writers, server_process)
    acked = producer.finish()
    with flight.connect(ingest.location) as c:
        assert action(c, "flush")["durable_through"] >= producer.top
    assert len(acked) >= 100
    exactly_once(data_root, acked)


@pytest.mark.parametrize("streams", [1, 2])
def test_a_killed_ingest_process_loses_nothing_its_producers_send_again(
    tmp_path, data_root, nats_server, server_process, streams
):
    config = cluster_config(tmp_path, data_root, nats_server, nats_server.new_stream(), streams=streams)
    server_process(config, cmd=serve("write", config), ready="writing (role = write)")
    ingest = [server_process(config, cmd=serve("ingest", config))]
    producer = Producer(lambda: ingest[0].location, per_stream=200)
    for _ in range(5):
        assert producer.streaming.wait(60)
        time.sleep(0.05)
        ingest[0].close()  # kill -9 mid-stream: the producer's stream fails and is sent again
        ingest[0] = server_process(config, cmd=serve("ingest", config))
    wait_for(lambda: len(producer.acked) >= 400, "the producer to get its re-sent streams through", 120)
    acked = producer.finish()
    with flight.connect(ingest[0].location) as c:
        action(c, "flush")
    assert producer.errors >= 1 and len(acked) >= 50
    exactly_once(data_root, acked)


# -- NATS itself failing ------------------------------------------------------------------------------------
def test_nats_down_then_back_refuses_clearly_then_recovers_without_a_restart(data_root):
    nats = natsd.start()  # its own: this test kills it
    try:
        with (
            roles(data_root, nats, "write", "ingest", put_timeout=2.0) as (_, ingest),
            flight.connect(ingest.location) as c,
        ):
            first = put(c, "outage", [ints(100, k * 100) for k in range(5)], ids=[f"o{k}" for k in range(5)])
            nats.servers[0].kill()  # kill -9: what it acknowledged is on its disk
            with pytest.raises(flight.FlightUnavailableError, match="NATS did not take the batch"):
                send(c, flight.FlightDescriptor.for_path("outage"), ints(100, 500), metadata=b'{"id": "o5"}')
            status = wait_for(lambda: (s := action(c, "status"))["last_error"] and s, "the error in status")
            assert "NATS" in status["last_error"]
            nats.servers[0].start()  # back on the same port and store
            again = put(c, "outage", [ints(100, k * 100) for k in range(5, 10)], ids=[f"o{k}" for k in range(5, 10)])
            assert [r["seq"] for r in again] == list(range(6, 11)) and first[-1]["seq"] == 5
            assert action(c, "flush")["durable_through"] == 10
            assert action(c, "status")["last_error"] is None
        assert sorted(read_dataset(data_root, "outage").column("i").to_pylist()) == list(range(1000))
    finally:
        nats.stop()


@pytest.mark.parametrize("slots", [0, 4])
def test_nats_down_then_back_with_sharded_streams_loses_nothing(data_root, slots):
    """NATS killed and started again under two streams: both come back, every acknowledged batch of the
    datasets of both streams is stored once. With stream_slots = 4 every process also looks for streams
    added (and fails to while NATS is away)."""
    nats = natsd.start()  # its own: this test kills it
    names = in_shards(2, 2)
    try:
        with (
            roles(data_root, nats, "write", "ingest", put_timeout=2.0, streams=2, stream_slots=slots) as (_, ingest),
            flight.connect(ingest.location) as c,
        ):
            for name in names:
                put(c, name, [ints(100, k * 100) for k in range(5)], ids=[f"{name}-{k}" for k in range(5)])
            nats.servers[0].kill()  # kill -9: what it acknowledged is on its disk
            with pytest.raises(flight.FlightUnavailableError, match="NATS did not take the batch"):
                # refused, but it may have landed: the producer sends it again with its id (below)
                send(
                    c,
                    flight.FlightDescriptor.for_path(names[0]),
                    ints(100, 500),
                    metadata=f'{{"id": "{names[0]}-5"}}'.encode(),
                )
            nats.servers[0].start()  # back on the same port and store
            for name in names:
                put(c, name, [ints(100, k * 100) for k in range(5, 10)], ids=[f"{name}-{k}" for k in range(5, 10)])
            action(c, "flush")
        for name in names:
            assert sorted(read_dataset(data_root, name).column("i").to_pylist()) == list(range(1000))
    finally:
        nats.stop()


def test_a_three_node_cluster_keeps_every_batch_when_a_node_dies(data_root):
    nats = natsd.start(nodes=3)
    try:
        with (
            roles(data_root, nats, "write", "ingest", replicas=3, put_timeout=30.0) as (_, ingest),
            flight.connect(ingest.location) as c,
        ):
            put(c, "r3", [ints(100, k * 100) for k in range(5)], ids=[f"r{k}" for k in range(5)])
            nats.servers[1].kill()  # one of three: the stream keeps a quorum
            put(c, "r3", [ints(100, k * 100) for k in range(5, 10)], ids=[f"r{k}" for k in range(5, 10)])
            assert action(c, "flush")["durable_through"] == 10
            # claims of batch ids (sharded.py: ids across a move) on a replicated stream: a batch's id is
            # answered with its seq; a new one is claimed (seq 11, no batch), which the writer resolves as
            # durable and records as a claim; the next batch gets seq 12
            q = ingest.queue
            assert q.claim("r3", "r7", 30) == (8, True) and q.kind_of(8, 30) == "batch"
            assert q.claim("r3", "r10", 30) == (11, False) and q.kind_of(11, 30) == "claim"
            assert action(c, "flush")["durable_through"] == 11
            assert q.claim("r3", "r10", 30) == (11, True) and q.kind_of(11, 30) == "claim"  # from the records
            assert [r["seq"] for r in put(c, "r3", [ints(100, 1000)], ids=["r11"])] == [12]
        assert sorted(read_dataset(data_root, "r3").column("i").to_pylist()) == list(range(1100))
    finally:
        nats.stop()


def test_the_cluster_script_runs_the_topology_and_stops_in_order(tmp_path, server_process):
    """make cluster: nats-server, two write processes and an ingest process; with METRICS_PORT each has a
    metrics listener (the ingest's on the port, write process i's on port + i), which is where the files
    written are seen (an ingest process writes none)."""
    root, cluster = tmp_path / "data", tmp_path / "cluster"
    metrics = _free_run(3)
    env = {
        "NATS_PORT": str(free_port()),
        "CLUSTER_DIR": str(cluster),
        "BIN": str(Path(sys.executable).parent),
        "FLIGHT_WRITER_SERVER__LOCATION": "grpc://127.0.0.1:0",
        "FLIGHT_WRITER_STORAGE__ROOT": str(root),
        "FLIGHT_WRITER_WRITER__FLUSH_INTERVAL": "600",
        "METRICS_PORT": str(metrics),
    }
    proc = server_process(None, env=env, cmd=["deploy/cluster.sh"])  # what make cluster runs
    try:
        with flight.connect(proc.location) as c:
            put(c, "tryout", [ints(1000, k * 1000) for k in range(10)])
            assert action(c, "flush")["durable_through"] == 10
            assert _metric(metrics, "flight_writer_files_written_total") == 0  # the ingest process
            # the write processes (a slow one may still be starting): whichever took the batches wrote them
            written = wait_for(
                lambda: _metrics(metrics, (1, 2), "flight_writer_files_written_total"), "writers' metrics"
            )
            assert sum(written) >= 1, written
            put(c, "tryout", [ints(1000, 10_000)])  # left buffered: the stop writes it
        os.killpg(proc.proc.pid, signal.SIGTERM)  # as a terminal's Ctrl-C: the script stops them in order
        assert proc.proc.wait(60) == 0
        assert read_dataset(root, "tryout", sort_by="i").column("i").to_pylist() == list(range(11_000))
    finally:
        if (cluster / "pids").exists():
            for pid in (cluster / "pids").read_text().split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)


def _free_run(n: int) -> int:
    """A port p with p .. p + n - 1 free now."""
    while True:
        base = free_port()
        try:
            with contextlib.ExitStack() as held:
                for port in range(base + 1, base + n):
                    sock = held.enter_context(socket.socket())
                    sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue


def _metrics(base: int, offsets: tuple[int, ...], name: str) -> list[float] | None:
    """A metric of each listener at base + offset; None while one does not answer yet."""
    try:
        return [_metric(base + k, name) for k in offsets]
    except urllib.error.URLError:
        return None


def _metric(port: int, name: str) -> float:
    """A metric's value on a metrics listener (the first sample of that name)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as page:
        for line in page.read().decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {name} on port {port}")


def test_a_stopping_write_process_stores_what_it_holds_and_leaves_the_rest(data_root, nats_server):
    with roles(data_root, nats_server, "ingest") as (ingest,), flight.connect(ingest.location) as c:
        settings = nats_settings(data_root, nats_server, ingest.settings.queue.stream)
        writer = Service(settings, role="write").start()
        put(c, "leaving", [ints(100, k * 100) for k in range(3)])
        wait_for(lambda: writer.writer.stats()["open_buffers"], "the writer to hold a batch")
        writer.stop(STOP_TIMEOUT)  # stores what it holds; takes nothing more while producers go on
        put(c, "leaving", [ints(100, 300)])
        status = action(c, "status")
        stored = status["durable_through"]
        assert stored >= 1 and status["pending_batches"] == 4 - stored  # the rest waits for a writer
        with Service(settings, role="write") as other:
            assert action(c, "flush")["durable_through"] == 4
            rows = (4 - stored) * 100  # counted just after the confirmation that flush waited for
            wait_for(lambda: other.writer.stats()["rows_written"] == rows, "the other writer's count")
    assert sorted(read_dataset(data_root, "leaving").column("i").to_pylist()) == list(range(400))


def test_flight_sql_ingest_goes_through_an_ingest_process(data_root, nats_server):
    import adbc_driver_flightsql.dbapi as dbapi
    import pyarrow as pa

    table = pa.table({"a": pa.array([1, 2, 3], pa.int64()), "b": ["x", "y", "z"]})
    with (
        roles(data_root, nats_server, "write", "ingest") as (_, ingest),
        dbapi.connect(ingest.location, autocommit=True) as conn,
        conn.cursor() as cur,
    ):
        assert cur.adbc_ingest("events", table, mode="create") == 3  # returns once durable
        assert cur.adbc_ingest("events", table.slice(1), mode="append") == 2
        assert len(parquet_files(data_root, "events")) == 2
    assert sorted(read_dataset(data_root, "events").column("a").to_pylist()) == [1, 2, 2, 3, 3]


def test_a_full_stream_holds_producers_back_then_refuses_and_loses_nothing(data_root, nats_server):
    with (
        roles(data_root, nats_server, "ingest", max_bytes=200_000, put_timeout=1.0) as (ingest,),
        flight.connect(ingest.location) as c,
    ):
        acked = []
        with pytest.raises(flight.FlightUnavailableError, match="queue full"):
            for k in range(100):  # no writer: the stream fills
                send(c, flight.FlightDescriptor.for_path("full"), ints(1000, k * 1000))  # raises if refused
                acked.append(k)
        assert 10 <= len(acked) < 100
        settings = nats_settings(data_root, nats_server, ingest.settings.queue.stream, max_bytes=200_000)
        with Service(settings, role="write"):  # a writer comes: everything answered is stored
            assert action(c, "flush")["durable_through"] == len(acked)
            put(c, "full", [ints(1000, 100_000)])  # and there is room again
    values = read_dataset(data_root, "full").column("i").to_pylist()
    assert sorted(values) == [i for k in acked for i in range(k * 1000, k * 1000 + 1000)] + list(
        range(100_000, 101_000)
    )


def test_credentials_come_from_the_environment(tmp_path, data_root, server_process):
    nats = natsd.start(extra=["--user", "fw", "--pass", "s3cret"])
    try:
        config = cluster_config(tmp_path, data_root, nats, nats.new_stream())
        config.write_text(config.read_text().replace('[queue]\ntype = "nats"', '[queue]\nuser = "fw"\ntype = "nats"'))
        refused = subprocess.run(serve("ingest", config), capture_output=True, text=True, cwd=REPO, timeout=60)
        assert refused.returncode == 2 and "cannot connect to NATS" in refused.stderr  # no password
        assert "authorization" in refused.stderr.lower(), refused.stderr
        proc = server_process(config, env={"FLIGHT_WRITER_QUEUE__PASSWORD": "s3cret"}, cmd=serve("ingest", config))
        with flight.connect(proc.location) as c:
            assert put(c, "auth", [ints(10)])[0]["state"] == "logged"
            assert "s3cret" not in proc.log
    finally:
        nats.stop()


def test_a_password_in_the_config_file_is_refused(tmp_path, data_root):
    config = write_config(tmp_path / "fw.toml", data_root, '[queue]\ntype = "nats"\npassword = "s3cret"\n')
    result = subprocess.run(serve("ingest", config), capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == 2 and "FLIGHT_WRITER_QUEUE__PASSWORD" in result.stderr


def test_roles_need_a_queue_processes_share(tmp_path, data_root):
    config = write_config(tmp_path / "fw.toml", data_root)  # memory
    result = subprocess.run(serve("write", config), capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == 2 and "--role write needs queue.type = nats" in result.stderr


# -- sharded streams (queue.streams = N) ---------------------------------------------------------------------
def in_shards(n: int, count: int) -> list[str]:
    """``count`` dataset names, one per shard of ``n`` streams (crc32 mod n), then round again."""
    import zlib

    names: dict[int, list[str]] = {}
    k = 0
    while any(len(names.get(i, ())) < -(-count // n) for i in range(n)):
        name = f"sh{k}"
        names.setdefault(zlib.crc32(name.encode()) % n, []).append(name)
        k += 1
    return [names[i % n][i // n] for i in range(count)]


def test_sharded_streams_store_every_batch_once_and_every_ingest_process_answers(data_root, nats_server):
    """queue.streams = 3: datasets spread over three streams; seqs are unique across them (a shard's
    sequence s is s * 3 + shard); every ingest process answers ack, flush and status for every seq; a
    dataset's batches stay in order in one stream. Half the datasets are sent without waiting for
    replies, so their batches may be packed (several share a seq)."""
    datasets = in_shards(3, 6)
    with (
        roles(data_root, nats_server, "write", "write", "ingest", "ingest", streams=3) as (*_, first, second),
        flight.connect(first.location) as a,
        flight.connect(second.location) as b,
    ):
        seqs: dict[str, list[int]] = {}
        for n, name in enumerate(datasets):
            client = a if n % 2 else b
            batches = [ints(100, (n * 10 + j) * 100) for j in range(10)]
            replies = put(client, name, batches) if n < 3 else put_pipelined(client, name, batches)
            assert [r["rows"] for r in replies] == [100] * 10
            seqs[name] = [r["seq"] for r in replies]
        every = sorted({s for v in seqs.values() for s in v})
        assert len(every) == sum(len(set(v)) for v in seqs.values())  # no seq in two datasets
        assert all(len(set(seqs[name])) == 10 for name in datasets[:3])
        assert {s % 3 for s in every} == {0, 1, 2}  # all three streams
        for v in seqs.values():
            assert v == sorted(v) and len({s % 3 for s in v}) == 1  # a dataset: one stream, in order
        flushed = action(a, "flush")
        assert flushed["durable_through"] >= max(every)
        for client in (a, b):
            acks = action(client, "ack", {"seqs": every})["acks"]
            assert {x["state"] for x in acks} == {"durable"}
            assert all(x["file"].startswith(f"{name}/") for name in seqs for x in acks if x["seq"] in seqs[name])
            assert action(client, "status")["durable_through"] >= max(every)
        assert action(b, "ack", {"seqs": [max(every) + 3]})["acks"][0]["state"] == "unknown"
    for n, name in enumerate(datasets):
        got = read_dataset(data_root, name, sort_by="i").column("i").to_pylist()
        assert got == list(range(n * 1000, n * 1000 + 1000))


def test_killed_write_processes_lose_nothing_with_sharded_streams(tmp_path, data_root, nats_server, server_process):
    """The kill test on two streams: two producers whose datasets live in different streams, two write
    processes killed KILLS times between them."""
    config = cluster_config(tmp_path, data_root, nats_server, nats_server.new_stream(), streams=2)
    ingest = server_process(config, cmd=serve("ingest", config))
    writers = [server_process(config, cmd=serve("write", config), ready="writing (role = write)") for _ in "ab"]
    names = in_shards(2, 2)
    producers = [Producer(lambda: ingest.location, dataset=name) for name in names]
    kill_writers(config, writers, server_process)
    acked = [p.finish() for p in producers]
    with flight.connect(ingest.location) as c:
        action(c, "flush")
    for name, got in zip(names, acked, strict=True):
        assert len(got) >= 50
        exactly_once(data_root, got, name)


def test_a_stream_whose_connection_was_lost_makes_every_stream_give_back_what_it_holds(data_root, nats_server):
    """The writer drops every buffer when one stream took back what it had handed out (its own connection
    was away for ack_wait / 2): the other streams must give their batches back too, or they would stay
    held here, kept alive and never stored."""
    names = in_shards(2, 2)
    with roles(data_root, nats_server, "all", streams=2, ack_wait=2) as (svc,):
        queue = svc.queue
        for name in names:
            for i in range(3):
                queue.put(name, b"k", ints(10, i * 10), 5)
        wait_for(lambda: svc.writer.stats()["open_buffers"] == 2, "both datasets buffered")
        lost = queue.shards[1]._feed  # one stream's connection was away long enough
        lost._on_reconnect(100.0)
        assert queue.flush(None, 60)  # every batch stored in the end
        # a batch stored while its message was given back is acknowledged when the message comes again
        wait_for(lambda: queue.stats()["pending_batches"] == 0, "the given-back messages acknowledged", 60)
    for name in names:
        assert sorted(read_dataset(data_root, name).column("i").to_pylist()) == list(range(30))


# -- streams added live (queue.stream_slots) ------------------------------------------------------------------
def test_a_stream_added_to_a_running_deployment_is_taken_on_by_every_process(data_root, nats_server, monkeypatch):
    """stream_slots = 4: a writer and an ingest process run on one stream; an ingest process started with
    streams = 2 makes the second. Seqs keep their meaning (s * 4 + k) and the queue its identity; the old
    ingest process takes the stream on when an ack asks about its seqs (its own look waits an hour here),
    then routes by two; the writer consumes both; a dataset
    whose batches are in both streams is flushed and stored once, whole."""
    from flight_writer.queue.nats import sharded

    stream = nats_server.new_stream()
    moved, stays = in_shards(2, 2)[1], in_shards(2, 2)[0]  # crc32 mod 2: 1 and 0 (mod 1: both 0)
    started: list[Service] = []

    def start(role: str, streams: int) -> Service:
        settings = nats_settings(data_root, nats_server, stream, streams=streams, stream_slots=4)
        started.append(Service(settings, role=role).start())
        return started[-1]

    monkeypatch.setattr(sharded, "LOOK_AGAIN", 0.0)  # this test runs in less than its 0.1 s
    try:
        monkeypatch.setattr(sharded, "LOOK_EVERY", 3600.0)
        old = start("ingest", 1)
        monkeypatch.setattr(sharded, "LOOK_EVERY", 1.0)
        writer = start("write", 1)
        with flight.connect(old.location) as a:
            before = [r["seq"] for r in put(a, moved, [ints(10, j * 10) for j in range(3)])]
            assert [s % 4 for s in before] == [0, 0, 0]
            assert action(a, "status")["nats_streams"] == 1
            new = start("ingest", 2)  # makes <stream>-1
            assert old.queue.identity == writer.queue.identity == new.queue.identity
            with flight.connect(new.location) as b:
                after = [r["seq"] for r in put(b, moved, [ints(10, 30 + j * 10) for j in range(3)])]
                assert [s % 4 for s in after] == [1, 1, 1]
                assert [s % 4 for s in (r["seq"] for r in put(b, stays, [ints(5)]))] == [0]
                acks = action(a, "ack", {"seqs": after})["acks"]  # seqs of a stream it lacks: looked for
                assert {x["state"] for x in acks} <= {"logged", "durable"}
                assert action(a, "status")["nats_streams"] == 2
                again = [r["seq"] for r in put(a, moved, [ints(10, 60 + j * 10) for j in range(3)])]
                assert [s % 4 for s in again] == [1, 1, 1]  # routed by two now
                action(a, "flush", {"dataset": moved})  # in both streams it has been put into: the acks below
                for client in (a, b):
                    acks = action(client, "ack", {"seqs": before + after + again})["acks"]
                    assert {x["state"] for x in acks} == {"durable"}
                assert action(b, "flush")["durable_through"] >= max(after + again)
        assert writer.queue.stats()["nats_streams"] == 2
    finally:
        for svc in reversed(started):
            svc.stop(STOP_TIMEOUT)
    assert read_dataset(data_root, moved, sort_by="i").column("i").to_pylist() == list(range(90))
    assert read_dataset(data_root, stays).column("i").to_pylist() == list(range(5))


def test_a_stream_holding_batches_refuses_a_process_with_another_seq_stride(nats_server, caplog_loguru):
    """Every stream says the stride its seqs were given under; a process with another (queue.streams or
    stream_slots changed without a drain) is refused while the stream holds batches. An empty stream takes
    the stride of the process that opens it, and the process says so."""
    from flight_writer.queue import make_queue

    sliced = queue_settings(nats_server, stream_slots=4)
    made = make_queue(sliced, role="ingest")  # made for stride 4, empty
    assert made.stats()["nats_stream_slots"] == 4
    made.close()
    assert "seq stride is now" not in caplog_loguru.text
    plain = dataclasses.replace(sliced, stream_slots=0)
    one = make_queue(plain, role="ingest")  # empty: takes stride 1
    try:
        assert f"NATS stream {sliced.stream} held no batch: its seq stride is now 1 (it was 4" in caplog_loguru.text
        assert (one.stats()["nats_streams"], one.stats()["nats_stream_slots"]) == (1, 1)  # said with one stream too
        assert one.put("ds", b"k", ints(10), 5).seq == 1
        with pytest.raises(ValueError, match=r"seqs have stride 1 .* this process has 4: every process must"):
            make_queue(sliced, role="ingest")
        with pytest.raises(ValueError, match=r"stride 1 .* this process has 2"):
            make_queue(dataclasses.replace(plain, streams=2), role="ingest")
    finally:
        one.close()


def test_a_process_of_another_stride_changes_no_stream_and_streams_without_a_stride_count_as_made(nats_server):
    """A process of another stride is refused before it says its stride in any stream (here the first stream
    is empty, the second holds a batch); streams made before they said their stride have the stride of
    their number (what that version used), and say it once a process of that stride opens them."""
    from flight_writer.queue import make_queue

    two = queue_settings(nats_server, streams=2)
    made = make_queue(two, role="ingest")
    try:
        made.put(in_shards(2, 2)[1], b"k", ints(10), 5)  # into the second stream only
        with pytest.raises(ValueError, match=r"stride 2 .*this process has 4: every process must"):
            make_queue(dataclasses.replace(two, streams=1, stream_slots=4), role="ingest")
        with pytest.raises(ValueError, match=r"stride 2 .*this process has 3: every process must"):
            make_queue(dataclasses.replace(two, streams=3), role="ingest")
        link = made.shards[0]._link
        with pytest.raises(nats.js.errors.NotFoundError):  # the refused process made no stream either
            link.run(link.js.stream_info(f"{two.stream}-2"), 30)
        made.put(in_shards(2, 2)[0], b"k", ints(10), 5)  # the first stream still says 2: taken
        for q in made.shards:  # as made before streams said their stride
            link = q._link
            info = link.run(link.js.stream_info(link.settings.stream), 30)
            link.run(link.js.update_stream(dataclasses.replace(info.config, description=None)), 30)
        for other in (dataclasses.replace(two, streams=1), dataclasses.replace(two, stream_slots=4)):
            with pytest.raises(ValueError, match=r"stride 2 \(queue.streams"):
                make_queue(other, role="ingest")
        again = make_queue(two, role="ingest")  # two streams: stride 2, as before; now said
        again.close()
        for q in made.shards:
            link = q._link
            assert link.declared_stride(link.run(link.js.stream_info(link.settings.stream), 30)) == 2
    finally:
        made.close()


def test_a_sharded_take_returns_for_a_flush_asked_in_any_stream(nats_server):
    """A writer waiting on the shards sees a flush request as soon as it comes, from whichever stream (one
    stream's request wakes only that stream's wait), and a wake before a take ends that take too."""
    from flight_writer.queue import make_queue

    settings = queue_settings(nats_server, streams=2)
    writer, ingest = make_queue(settings), make_queue(settings, role="ingest")
    try:
        got: list[object] = []
        taking = threading.Thread(target=lambda: got.append(writer.take(10, 60)))
        taking.start()
        ingest.flush(None, 0)  # a request on every stream; nothing is pending
        taking.join(30)
        assert not taking.is_alive() and got == [[]]
        assert writer.flush_requests()
        writer.wake()
        assert writer.take(10, 60) == []  # at once: the wake came before it
    finally:
        ingest.close()
        writer.close()


def test_a_stream_added_while_write_processes_are_killed_loses_nothing(
    tmp_path, data_root, nats_server, server_process
):
    """The kill test across a live addition: stream_slots = 4, one stream; two producers through one ingest
    process, two write processes killed KILLS times between them. Halfway an ingest process started with
    streams = 2 makes the second stream; the first one takes it on (its flush looks first) and moves one
    producer's dataset there; write processes started again with streams = 1 take it on as they start.
    Every acknowledged batch of both datasets is stored once."""
    stream = nats_server.new_stream()
    one = cluster_config(tmp_path, data_root, nats_server, stream, streams=1, slots=4)
    two = cluster_config(tmp_path, data_root, nats_server, stream, streams=2, slots=4)
    ingest = server_process(one, cmd=serve("ingest", one))
    writers = [server_process(one, cmd=serve("write", one), ready="writing (role = write)") for _ in "ab"]
    stays, moves = in_shards(2, 2)
    producers = [Producer(lambda: ingest.location, dataset=name) for name in (stays, moves)]
    kill_writers(one, writers, server_process, KILLS // 2)
    wait_for(lambda: producers[1].acked, "the producer of the dataset that moves to get a stream through", 120)
    server_process(two, cmd=serve("ingest", two))  # makes <stream>-1
    with flight.connect(ingest.location) as c:
        action(c, "flush")  # looks for streams first: routes by two from here on
        assert action(c, "status")["nats_streams"] == 2
    kill_writers(one, writers, server_process, KILLS - KILLS // 2)
    wait_for(lambda: any(s % 4 == 1 for s in producers[1].seqs), "a batch through the new stream", 120)
    acked = [p.finish() for p in producers]
    with flight.connect(ingest.location) as c:
        action(c, "flush")
    assert {s % 4 for s in producers[0].seqs} == {0} and {s % 4 for s in producers[1].seqs} == {0, 1}
    for name, got in zip((stays, moves), acked, strict=True):
        exactly_once(data_root, got, name)


def test_processes_of_one_stride_share_the_queue_identity_however_many_streams_they_have(nats_server):
    """Files and table commits name the queue's identity, and a write process trusts the seqs of those that
    name its own (exactly once across crashes): one stride, one identity, whatever streams and stream_slots."""
    from flight_writer.queue import make_queue

    grown = queue_settings(nats_server, streams=1, stream_slots=2)
    full = dataclasses.replace(grown, streams=2, stream_slots=0)  # stride 2 as well
    one, two = make_queue(grown, role="ingest"), make_queue(full, role="ingest")
    try:
        assert one.identity == two.identity and one.identity.startswith("nats-sharded:2:")
    finally:
        one.close()
        two.close()


def test_a_packed_batch_after_its_dataset_moved_waits_for_the_one_before_it_in_the_old_stream(nats_server):
    """Packed puts of one DoPut stream keep no batch after a failed one (ingest.py); that chain is per
    stream, so when the dataset moves to an added stream between two of them, the second waits for the
    first in the old one and fails with it (here the old stream is full)."""
    from flight_writer.queue import make_queue

    one = queue_settings(nats_server, stream_slots=4, max_bytes=256 << 10)
    moves = in_shards(2, 2)[1]
    a = make_queue(one, role="ingest")
    try:
        for rows in (2000, 100):  # no writer: the first stream fills up, to the last batch of 100 rows
            with pytest.raises(QueueFull):
                while True:
                    a.put("filler", b"f", ints(rows), 0.2)
        b = make_queue(dataclasses.replace(one, streams=2), role="ingest")  # makes the second
        try:
            first = a.put_packed(moves, b"k", ints(100), 1.0)  # to the first stream: waits for room
            a.flush(None, 0)  # looks for streams: routes by two from here on
            with pytest.raises(QueueFull):
                a.put_packed(moves, b"k", ints(100, 100), 1.0, after=first).result(30)
            with pytest.raises(QueueFull):
                first.result(30)
            assert len(a.shards) == 2 and a.shards[1].stats()["pending_batches"] == 0  # the second not kept
        finally:
            b.close()
    finally:
        a.close()


def test_a_batch_id_sent_again_after_its_dataset_moved_is_found_in_the_stream_it_moved_from(nats_server, monkeypatch):
    """JetStream remembers a batch id per stream. A stream added to a running deployment takes batches with
    an id only from the moment its metadata says (SWITCH_AFTER after it was made; an hour here, and the
    processes' clocks are set past it and the QUIET seconds after it); from then, for the old stream's
    duplicate window, a batch with an id of a dataset that moved is claimed in the old stream first: one
    it holds is answered with its seq there and not stored again, by any process; a new one is claimed
    there (a message with its id and no batch) and goes to the new stream. Streams made with the
    deployment have no such moment."""
    from flight_writer.queue import Accepted, make_queue
    from flight_writer.queue.nats import sharded

    monkeypatch.setattr(sharded, "SWITCH_AFTER", 3600.0)
    one = queue_settings(nats_server, stream_slots=4)
    stays, moves = in_shards(2, 2)
    a = make_queue(one, role="ingest")  # no writer: every message stays in its stream, to be counted
    try:
        first = a.put(moves, b"k", ints(10), 5, "x1").seq
        assert first % 4 == 0 and a.shards[0].switch_at is None
        b = make_queue(dataclasses.replace(one, streams=2), role="ingest")  # added live: makes the second
        try:
            at = b.shards[1].switch_at
            assert at is not None and at > time.time() + 3000
            assert b.put(moves, b"k", ints(10), 5, "x2").seq % 4 == 0  # before the moment: where it was
            assert b.put(moves, b"k", ints(10), 5, "x1") == Accepted(first, True)
            assert b.put(moves, b"k", ints(10), 5).seq % 4 == 1  # without an id: moved at once
            a.flush(None, 0)  # looks for streams: takes the second on
            assert a.shards[1].switch_at == at
            for q in (a, b):  # past the moment and the quiet seconds after it
                q._clock = lambda: at + sharded.QUIET + 1
                q.flush(None, 0)  # a look at that time (the last one's is an hour before it)
            assert a.put(moves, b"k", ints(10), 5, "x1") == Accepted(first, True)  # found in the old stream
            assert b.put(moves, b"k", ints(10), 5, "x1") == Accepted(first, True)
            new = b.put(moves, b"k", ints(10), 5, "x3")  # not there: to the new stream
            assert new.seq % 4 == 1 and not new.duplicate
            assert a.put(moves, b"k", ints(10), 5, "x3") == Accepted(new.seq, True)  # the new stream's dedupe
            assert b.put(stays, b"k", ints(10), 5, "y1").seq % 4 == 0 and b.lookups == 2  # stays: no lookup
            pieces = b.put_many(moves, b"k", [ints(5), ints(5)], 5, ["x1", "x4"])
            assert pieces[0] == Accepted(first, True) and pieces[1].seq % 4 == 1 and not pieces[1].duplicate
            assert (a.stats()["nats_id_found"], b.stats()["nats_id_found"]) == (1, 2)
            for x in ("x3", "x4"):  # claimed in the old stream: no batch there can take the id any more
                claimed = b.shards[0].claim(moves, x, 5)
                assert claimed.duplicate and b.shards[0].kind_of(claimed.seq, 5) == "claim"
            for q in (a, b):  # the window over: straight to the new stream
                q._clock = lambda: at + sharded.QUIET + 3600 + sharded.CLOCKS + one.duplicate_window + 1
                q.flush(None, 0)
            assert b.put(moves, b"k", ints(10), 5, "x5").seq % 4 == 1 and b.lookups == 4
            # stored once each: x1, x2, y1 (and the claims of x3 and x4) in the first stream; the one without
            # an id, x3, x4, x5 in the second
            assert [q.stats()["pending_batches"] for q in b.shards] == [5, 4]
        finally:
            b.close()
    finally:
        a.close()


def test_no_publish_of_a_moving_dataset_to_its_old_stream_outlasts_the_switch(nats_server, monkeypatch):
    """A batch with an id put just before the moment its dataset moves, to an old stream that is full, stops
    trying there at that moment (were it still trying when the producer sends it again through another
    process after the moment, it would be in neither stream when that one claims it there): it waits out
    the quiet seconds, is claimed in the old stream (once that has room: a claim is a message), and goes
    to the new stream, where the re-send finds it. A batch in the quiet seconds waits (here longer than its
    timeout: refused)."""
    from flight_writer.queue import make_queue
    from flight_writer.queue.nats import sharded

    monkeypatch.setattr(sharded, "SWITCH_AFTER", 3600.0)
    monkeypatch.setattr(sharded, "QUIET", 1.0)
    one = queue_settings(nats_server, stream_slots=4, max_bytes=20_000)
    stays, moves = in_shards(2, 2)
    a = make_queue(one, role="ingest")  # no writer: the first stream fills up
    try:
        with pytest.raises(QueueFull):
            while True:
                a.put(stays, b"k", ints(200), 0.5)
        full = a.shards[0].stats()["pending_batches"]
        b = make_queue(dataclasses.replace(one, streams=2, max_bytes=200_000), role="ingest")  # makes the second
        try:
            at = b.shards[1].switch_at
            a.flush(None, 0)  # takes the second on
            b._clock = lambda: at + 0.1  # in the quiet second after the moment
            with pytest.raises(QueueFull, match="moving to another stream"):
                b.put(moves, b"k", ints(10), 0.5, "x1")
            offset = at - 1 - time.time()
            a._clock = lambda: time.time() + offset  # a second before the moment, and going on
            claim, old = a.shards[0].claim, a.shards[0]

            def with_room(*args: object) -> object:  # called after the moment: room for the claim, one batch less
                first = old._publisher.stream_state(fresh=True).first_seq
                old._link.run(old._link.js.delete_msg(old._link.settings.stream, first), 10)
                return claim(*args)

            a.shards[0].claim = with_room  # type: ignore[method-assign]
            first = a.put(moves, b"k", ints(10), 60, "x1")
            assert first.seq % 4 == 1 and not first.duplicate and a.lookups == 1
            b._clock = lambda: at + sharded.QUIET + 1
            assert b.put(moves, b"k", ints(10), 5, "x1") == (first.seq, True)  # the new stream's dedupe
            assert [q.stats()["pending_batches"] for q in b.shards] == [full, 1]
        finally:
            b.close()
    finally:
        a.close()


def test_where_a_batch_with_an_id_goes_follows_the_moments_of_the_streams(monkeypatch):
    """``_id_route`` against a model, over every quarter second around the moments of three layouts (one
    left by two processes making streams at once: a stream with a moment between streams without): a
    stream takes batches with an id once its moment and those of the streams before it have come; every
    stream a dataset's ids went to within the window is looked up; a batch waits the quiet seconds after a
    moment that moved its dataset; its stream stops at the next moment that moves it."""
    import zlib

    from flight_writer.queue.nats import sharded

    @dataclasses.dataclass
    class Shard:
        switch_at: float | None
        duplicate_window: float = 120.0

    q = object.__new__(sharded.ShardedNatsQueue)
    q._moments_cache = (None, [], 0.0)
    quiet, window = sharded.QUIET, sharded.QUIET + sharded.SWITCH_AFTER + sharded.CLOCKS + 120.0
    for moments in ([None, 1000.0, 1003.0, 1200.0], [None, 1000.0, 1000.001, 2000.0], [None, 1000.0, None, None]):
        q.shards = [Shard(m) for m in moments]

        def streams_at(t: float, moments: list = moments) -> int:
            return next((m for m, at in enumerate(moments) if m and at is not None and t < at), len(moments))

        for name in (f"m{d}" for d in range(24)):
            crc = zlib.crc32(name.encode())
            for t in (x / 4 for x in range(3800, 9000)):
                k, olds, waits_until, stop = q._id_route(name, t)
                assert k == crc % streams_at(t)
                # the routes over [t - window, t): piecewise constant, changing only at moments
                since = [t - window, *(at for at in moments if at is not None and t - window < at < t)]
                went = {crc % streams_at(u) for u in since} - {k}
                assert went <= set(olds) and len(olds) == len(set(olds)), (moments, name, t)
                moved = [at for at in moments if at is not None and at <= t < at + quiet]
                moved = [at for at in moved if crc % streams_at(at - 1e-6) != crc % streams_at(at)]
                assert (t < waits_until) == bool(moved), (moments, name, t)
                later = [at for at in moments if at is not None and at > t and crc % streams_at(at) != k]
                assert stop == (min(later) if later else None), (moments, name, t)


def test_a_batch_put_before_its_process_knew_of_an_added_stream_stops_at_its_moment(nats_server, monkeypatch):
    """A batch with an id whose put began before the process knew of a stream added meanwhile (here: still
    trying, on a full stream) stops trying there no later than the moment of any stream its last look did
    not see, and is routed again: the batch sent again through another process after the moment is stored
    once, with it. Real clocks; the moment 2 s after the stream is made, the quiet 1 s."""
    from flight_writer.queue import make_queue
    from flight_writer.queue.nats import sharded

    monkeypatch.setattr(sharded, "SWITCH_AFTER", 2.0)
    monkeypatch.setattr(sharded, "QUIET", 1.0)
    one = queue_settings(nats_server, stream_slots=4, max_bytes=20_000)
    stays, moves = in_shards(2, 2)
    a = make_queue(one, role="ingest")
    try:
        fill = []
        with pytest.raises(QueueFull):
            while True:
                fill.append(a.put(stays, b"k", ints(200), 0.5).seq)
        # room for a claim (a message with no batch), not for the batch of 1,000 rows
        delete_messages(nats_server, one.stream, [fill[0] // 4])
        got: dict[str, object] = {}
        trying = threading.Event()

        def first() -> None:
            trying.set()
            try:
                got["a"] = a.put(moves, b"k", ints(1000), 60, "x1")  # to the full first stream: tries on
            except Exception as exc:
                got["a"] = exc

        putting = threading.Thread(target=first)
        putting.start()
        trying.wait(30)
        b = make_queue(dataclasses.replace(one, streams=2, max_bytes=200_000), role="ingest")  # makes the second
        try:
            again = b.put(moves, b"k", ints(1000), 60, "x1")  # waits for the moment and the quiet second
            assert again.seq % 4 == 1
            putting.join(60)
            assert got["a"] == (again.seq, True) or (got["a"] == (again.seq, False) and again.duplicate)
            # the first stream: the batches left and one claim of x1; the second: x1
            assert [q.stats()["pending_batches"] for q in b.shards] == [len(fill), 1]
        finally:
            b.close()
    finally:
        a.close()


def delete_messages(nats: natsd.Nats, stream: str, seqs: list[int]) -> None:
    async def delete() -> None:
        nc = await nats_client.connect(nats.urls[0])
        try:
            for s in seqs:
                await nc.jetstream().delete_msg(stream, s)
        finally:
            await nc.close()

    asyncio.run(delete())


def test_a_batch_with_an_id_waits_for_the_streams_to_be_looked_up(data_root, monkeypatch):
    """With streams that can be added (stream_slots), a batch with an id is taken only while this process's
    last look for streams is recent (one added since would change where ids go): with NATS away and the
    last look old, it is refused as unavailable, and taken once NATS is back."""
    from flight_writer.queue import make_queue

    nats = natsd.start()  # its own: this test stops it
    try:
        a = make_queue(queue_settings(nats, stream_slots=4), role="ingest")
        try:
            first = a.put("d", b"k", ints(10), 5, "x0").seq
            nats.servers[0].stop()
            a._looked_ok = time.monotonic() - 60  # as if the looks had failed for a minute
            with pytest.raises(QueueFull, match="cannot tell which streams there are"):
                a.put("d", b"k", ints(10), 1.0, "x1")
            nats.servers[0].start()
            assert a.put("d", b"k", ints(10), 60, "x1").seq == first + 4
        finally:
            a.close()
    finally:
        nats.stop()


@pytest.mark.parametrize(
    "routes, resend_after",
    [((0, 1, 2), 2), ((0, 1, 0, 1), 2)],
    ids=["moved-twice", "away-and-back"],
)
def test_a_claim_that_outlasts_later_moments_is_followed_by_routing_again(
    nats_server, monkeypatch, routes, resend_after
):
    """Streams added one after another (moments ~100 s apart); a dataset whose batches with an id go to
    the streams ``routes`` in turn. A batch of it claimed in stream 0 after the first moment, the claim
    slow (NATS busy) until after the last moment, while the producer's re-send through another process
    comes after moment ``resend_after``: the first put decides its route again after its claim, rather
    than publish where it was going. Moved twice: the re-send is stored in the last stream, and the first
    put finds it there. Away and back: the re-send's route (stream 0) holds the first put's claim, and
    the first put's (stream 1) the re-send's: both are refused (the batch is in neither; it can be sent
    again once the claims are out of the streams' duplicate window), and nothing is stored twice."""
    import zlib

    from flight_writer.queue import make_queue
    from flight_writer.queue.nats import sharded

    n = len(routes)
    moving = next(
        name
        for k in range(100_000)
        if all(zlib.crc32((name := f"mv{k}").encode()) % (m + 1) == r for m, r in enumerate(routes))
    )
    monkeypatch.setattr(sharded, "SWITCH_AFTER", 3600.0)
    one = queue_settings(nats_server, stream_slots=4)
    a = make_queue(one, role="ingest")
    made = [a]
    try:
        a.put("other", b"k", ints(3), 5, "y0")  # a deployment that took batches: streams added are live
        for streams in range(2, n + 1):  # each stream's moment ~100 s after the one before
            monkeypatch.setattr(sharded, "SWITCH_AFTER", 3600.0 + 100 * (streams - 2))
            made.append(make_queue(dataclasses.replace(one, streams=streams), role="ingest"))
        monkeypatch.setattr(sharded, "SWITCH_AFTER", 3600.0)
        b = made[-1]
        a.flush(None, 0)
        moments = [q.switch_at for q in b.shards]
        assert [q.switch_at for q in a.shards] == moments
        now = [moments[1] + sharded.QUIET + 1]  # to stream routes[1], after a claim in stream 0
        a._clock = lambda: now[0]
        a.flush(None, 0)
        resent, claimed = threading.Event(), threading.Event()
        claim = a.shards[0].claim

        def slow(dataset: str, client_id: str, timeout: float) -> object:
            got = claim(dataset, client_id, timeout)
            if not claimed.is_set():
                now[0] = moments[-1] + sharded.QUIET + 1  # the claim ends after the last moment
                claimed.set()
                assert resent.wait(30)
            return got

        a.shards[0].claim = slow  # type: ignore[method-assign]
        got: dict[str, object] = {}

        def first_put() -> None:
            try:
                got["a"] = a.put(moving, b"k", ints(10), 60, "x1")
            except QueueFull as exc:
                got["a"] = exc

        putting = threading.Thread(target=first_put)
        putting.start()
        assert claimed.wait(30)
        b._clock = lambda: moments[resend_after] + sharded.QUIET + 1
        b.flush(None, 0)
        try:
            again = b.put(moving, b"k", ints(10), 30, "x1")  # the re-send
        except QueueFull as exc:
            again = exc
        resent.set()
        putting.join(60)
        held = [q.stats()["pending_batches"] for q in b.shards]
        if routes == (0, 1, 2):  # moved twice
            assert again.seq % 4 == routes[resend_after] and not again.duplicate
            assert got["a"] == (again.seq, True)
            assert held == [2, 1, 1]  # y0 and a's claim; b's claim; x1, once (and nothing refused)
        else:  # away and back: each route holds the other put's claim
            for refused in (again, got["a"]):
                assert isinstance(refused, QueueFull) and "holds a claim of its id" in str(refused)
            assert held == [2, 1, 0, 0]  # y0 and a's claim; b's claim: x1 nowhere
    finally:
        for q in reversed(made):
            q.close()


def test_a_put_whose_stream_may_have_changed_looks_again_rather_than_retry_at_once(nats_server, monkeypatch):
    """The last look began more than SWITCH_AFTER ago (it took long): a stream it did not see may take
    batches with an id already, so a put with an id looks again first, then publishes; it does not try
    the stream over and over without waiting."""
    from flight_writer.queue import make_queue
    from flight_writer.queue.nats import sharded

    monkeypatch.setattr(sharded, "LOOK_EVERY", 3600.0)  # no background look during the test
    one = queue_settings(nats_server, stream_slots=4, max_bytes=20_000)
    a = make_queue(one, role="ingest")
    try:
        with pytest.raises(QueueFull):
            while True:
                a.put("d", b"k", ints(200), 0.5)
        a._looked_from, a._looked_ok = time.time() - sharded.SWITCH_AFTER - 1, time.monotonic()
        timeouts = []
        put = a.shards[0].put
        a.shards[0].put = lambda *args, **kwargs: (timeouts.append(args[3]), put(*args, **kwargs))[1]
        with pytest.raises(QueueFull):
            a.put("d", b"k", ints(10), 2, "x1")  # the stream is full: refused after its 2 s
        assert len(timeouts) == 1 and timeouts[0] > 1.5 and a._looked_from > time.time() - 5
    finally:
        a.close()


def test_a_batch_sent_again_across_a_stream_addition_is_stored_once(data_root, nats_server, monkeypatch):
    """What a producer sees: a batch with an id taken through one ingest process, a stream added, the
    dataset moved (the processes' clocks past the moment the new stream says), the batch sent again through
    another ingest process: answered as a duplicate with its first seq; the next one goes to the new
    stream; the writer stores each once."""
    from flight_writer.queue.nats import sharded

    monkeypatch.setattr(sharded, "SWITCH_AFTER", 3600.0)
    stream = nats_server.new_stream()
    moves = in_shards(2, 2)[1]
    started: list[Service] = []

    def start(role: str, streams: int) -> Service:
        settings = nats_settings(data_root, nats_server, stream, streams=streams, stream_slots=4)
        started.append(Service(settings, role=role).start())
        return started[-1]

    try:
        old = start("ingest", 1)
        start("write", 1)
        with flight.connect(old.location) as a:
            [first] = put(a, moves, [ints(10)], ids=["m0"])
            assert first["seq"] % 4 == 0
            new = start("ingest", 2)  # makes the second stream
            at = new.queue.shards[1].switch_at
            for svc in started:
                svc.queue._clock = lambda: at + sharded.QUIET + 1
            with flight.connect(new.location) as b:
                [again] = put(b, moves, [ints(10)], ids=["m0"])
                assert again["seq"] == first["seq"] and again.get("duplicate") is True
                [later] = put(b, moves, [ints(10, 10)], ids=["m1"])
                assert later["seq"] % 4 == 1 and not later.get("duplicate")
                action(a, "flush", {"dataset": moves})  # in both streams
                acks = action(a, "ack", {"seqs": [first["seq"], later["seq"]]})["acks"]
                assert [x["state"] for x in acks] == ["durable", "durable"]
    finally:
        for svc in reversed(started):
            svc.stop(STOP_TIMEOUT)
    assert read_dataset(data_root, moves, sort_by="i").column("i").to_pylist() == list(range(20))


def ids_in(q: NatsQueue) -> list[tuple[str, bool]]:
    """(batch id, is a claim) of every message the stream of ``q`` holds, in order."""
    link = q._link
    state = q._publisher.stream_state(fresh=True)
    found = []
    for seq in range(state.first_seq, state.last_seq + 1):
        try:
            raw = link.run(link.js.get_msg(link.settings.stream, seq), 10)
        except nats.js.errors.NotFoundError:
            continue
        headers = raw.headers or {}
        found.append((headers.get("Nats-Msg-Id", ""), "fw-claim" in headers))
    return found


@contextlib.contextmanager
def added_live(nats: natsd.Nats, role: str = "ingest", a_url: str | None = None) -> Iterator[tuple[Any, ...]]:
    """A deployment that ran (process ``a``, ingest, on one stream of ``stream_slots = 4``, took a batch,
    y0) and a process ``b`` (``role``) started with two: it makes the second stream, live (its moment
    ``SWITCH_AFTER`` after it was made), and ``a`` has taken it on. Yields (a, b, a's and b's settings with
    one stream, a dataset that stays in the first stream, one that moves to the second, the moment).
    ``a_url``: where ``a`` connects instead (a proxy)."""
    from flight_writer.queue import make_queue

    one = queue_settings(nats, stream_slots=4)
    stays, moves = in_shards(2, 2)
    a = make_queue(dataclasses.replace(one, url=[a_url]) if a_url else one, role="ingest")
    try:
        a.put(stays, b"k", ints(3), 5, "y0")  # a deployment that took batches: a stream added is live
        b = make_queue(dataclasses.replace(one, streams=2), role=role)
        try:
            a.flush(None, 0)  # takes the second stream on
            yield a, b, one, stays, moves, b.shards[1].switch_at
        finally:
            b.close()
    finally:
        a.close()


def test_a_publish_that_reaches_the_old_stream_after_the_claim_is_not_stored(nats_server, monkeypatch):
    """A put with an id just before its dataset's move, whose bytes the network holds (the connection stays
    up): the put gives up; the producer sends the batch again through another process after the moment,
    which claims its id in the old stream and stores it in the new one; then the held publish reaches the
    old stream. The claim makes JetStream take it as a duplicate: the batch is stored once, however late
    the first publish arrives (a lookup that stored nothing could not say that)."""
    from flight_writer.queue.nats import sharded

    monkeypatch.setattr(sharded, "SWITCH_AFTER", 3600.0)
    monkeypatch.setattr(sharded, "LOOK_EVERY", 3600.0)  # no look of its own while its bytes are held
    proxy = HoldingProxy(int(nats_server.urls[0].rsplit(":", 1)[1]))
    try:
        with added_live(nats_server, a_url=f"nats://127.0.0.1:{proxy.port}") as (a, b, _, stays, moves, at):
            proxy.hold()  # before the moment: a's batches with an id still go to the first stream
            with pytest.raises(QueueFull):
                a.put(moves, b"k", ints(10), 1.0, "x1")
            assert proxy.holding.is_set()  # its publish waits in the network
            b._clock = lambda: at + sharded.QUIET + 1
            b.flush(None, 0)
            again = b.put(moves, b"k", ints(10), 5, "x1")
            assert again.seq % 4 == 1 and not again.duplicate  # claimed in the first stream, stored in the second
            proxy.release()
            a.put(stays, b"k", ints(3), 30)  # after the held publish on the same connection: that one was handled
            held = ids_in(b.shards[0])  # y0, the claim of x1, the last batch (an id of the process's making)
            assert held[:2] == [("y0", False), ("x1", True)] and len(held) == 3 and not held[2][1]
            assert ids_in(b.shards[1]) == [("x1", False)]
    finally:
        proxy.close()


def test_a_batch_whose_id_is_claimed_where_it_goes_is_refused_until_it_goes_where_the_claim_sent_it(
    nats_server, monkeypatch
):
    """A put claimed a batch id in the old stream and stopped there (its process died); a process whose
    route for the dataset is still the old stream (its clock before the moment) is refused the batch (a
    claim holds its id there: storing it anyway could make a second copy of one stored elsewhere) and
    takes it once past the moment, in the new stream, where a re-send finds it."""
    from flight_writer.queue.nats import sharded

    monkeypatch.setattr(sharded, "SWITCH_AFTER", 3600.0)
    with added_live(nats_server) as (a, b, _, _, moves, at):
        claimed = b.shards[0].claim(moves, "x1", 5)  # a put's claim, its process gone before storing
        assert not claimed.duplicate and b.shards[0].kind_of(claimed.seq, 5) == "claim"
        with pytest.raises(QueueFull, match="holds a claim of its id"):
            a.put(moves, b"k", ints(10), 5, "x1")  # before the moment: to the first stream
        a._clock = b._clock = lambda: at + sharded.QUIET + 1
        a.flush(None, 0)
        stored = a.put(moves, b"k", ints(10), 5, "x1")
        assert stored.seq % 4 == 1 and not stored.duplicate
        assert b.put(moves, b"k", ints(10), 5, "x1") == (stored.seq, True)
        assert [x for x, _ in ids_in(b.shards[0])] == ["y0", "x1"] and ids_in(b.shards[1]) == [("x1", False)]


def test_a_claim_taken_by_a_writer_stays_in_the_stream_through_a_nats_restart(data_root, monkeypatch):
    """A writer takes a claim (durable, recorded as a claim) but leaves it in the stream for its duplicate
    window: nats-server, restarted, rebuilds the ids it refuses from the messages it holds, so a publish of
    the claimed id to the old stream after the restart (a process whose route is still the old one) is
    still refused, and a fresh process tells the claim from the records."""
    from flight_writer.queue import make_queue
    from flight_writer.queue.nats import sharded

    monkeypatch.setattr(sharded, "SWITCH_AFTER", 3600.0)
    nats = natsd.start()  # its own: this test restarts it
    try:
        with added_live(nats, role="all") as (a, b, one, stays, moves, at):
            b._clock = lambda: at + sharded.QUIET + 1
            b.flush(None, 0)
            again = b.put(moves, b"k", ints(10), 5, "x1")  # claimed in the first stream, stored in the second
            claim = next(s for s in range(1, 10) if b.shards[0].kind_of(s, 5) == "claim")
            assert [e.dataset for e in b.shards[0].take(10, 5)] == [stays]  # the claim is no batch
            assert b.shards[0].position.describe(claim)["state"] == "durable"
            assert ids_in(b.shards[0]) == [("y0", False), ("x1", True)]  # still there
            nats.servers[0].stop()
            nats.servers[0].start()
            with pytest.raises(QueueFull, match="holds a claim of its id"):
                a.put(moves, b"k", ints(10), 30, "x1")  # its route: the first stream (before the moment)
            fresh = make_queue(one, role="ingest")
            try:
                assert fresh.shards[0].kind_of(claim, 5) == "claim"
                assert ids_in(fresh.shards[0]) == [("y0", False), ("x1", True)]
            finally:
                fresh.close()
            assert ids_in(b.shards[1]) == [("x1", False)] and again.seq % 4 == 1
    finally:
        nats.stop()


@pytest.mark.parametrize("ahead", [0.0, 30.0, 59.0])
def test_claims_cover_a_re_send_within_the_window_through_a_process_whose_clock_is_ahead(nats_server, ahead):
    """A batch with an id stored in the old stream just before the moment; the producer sends it again
    a moment before that batch's duplicate window ends, through a process whose clock is ``ahead`` s ahead:
    that process still claims (the claims last CLOCKS s beyond the window for such clocks) and finds it."""
    with added_live(nats_server) as (a, b, _, _, moves, at):
        a._clock = lambda: at - 0.1
        first = a.put(moves, b"k", ints(10), 5, "x1")
        assert first.seq % 4 == 0
        b._clock = lambda: at + b.shards[0].duplicate_window - 1 + ahead
        b.flush(None, 0)
        assert b.put(moves, b"k", ints(10), 5, "x1") == (first.seq, True)


def test_a_claim_given_back_early_is_kept_in_the_stream_all_the_same(data_root, monkeypatch):
    """Whichever way a claim comes to a writer again (here: its record was stored but its answer came too
    late, so the writer gave the claim back for a retry at once), the writer keeps it in the stream until
    its window is over, then acknowledges it: a restart of NATS before that still refuses the claimed id."""
    from flight_writer.queue.nats import sharded

    monkeypatch.setattr(sharded, "SWITCH_AFTER", 3600.0)
    nats = natsd.start()  # its own: this test restarts it
    try:
        with added_live(nats, role="all") as (a, b, _, _, moves, at):
            old = b.shards[0]
            records, feed = old._records, old._feed
            record, keep, kept = records.record_claims, feed._keep_claims, []

            def stored_then_late(seqs: list[int]) -> None:
                record(seqs)
                if not kept:
                    raise TimeoutError("the answer came too late")

            def counted(claims: list) -> None:
                keep(claims)
                kept.append(len(claims))

            records.record_claims, feed._keep_claims = stored_then_late, counted  # type: ignore[method-assign]
            b._clock = lambda: at + sharded.QUIET + 1
            b.flush(None, 0)
            assert b.put(moves, b"k", ints(10), 5, "x1").seq % 4 == 1  # claimed in the first stream
            wait_for(lambda: (old.take(10, 0.2), len(kept) >= 2)[1], "the claim to come again")
            old._link.run(old._link.nc.flush(), 10)  # whatever the writer answered has reached NATS
            nats.servers[0].stop()
            nats.servers[0].start()
            with pytest.raises(QueueFull, match="holds a claim of its id"):
                a.put(moves, b"k", ints(10), 30, "x1")  # its route: the first stream (before the moment)
    finally:
        nats.stop()


def test_a_stream_holding_only_claims_takes_a_process_of_another_stride(nats_server, monkeypatch):
    """A drained queue may still hold claims (durable, kept for their window): it counts as empty for a
    change of stride; a batch in it still refuses one."""
    from flight_writer.queue import make_queue
    from flight_writer.queue.nats import sharded

    monkeypatch.setattr(sharded, "SWITCH_AFTER", 3600.0)
    one = queue_settings(nats_server, stream_slots=4)
    a = make_queue(one)
    try:
        a.shards[0].claim("d", "x1", 5)  # a claim, taken by the writer and kept in the stream
        assert a.take(10, 1) == [] and a.position.durable_through == 4
        assert ids_in(a.shards[0]) == [("x1", True)]
    finally:
        a.close()
    other = make_queue(dataclasses.replace(one, stream_slots=8), role="ingest")  # not refused
    try:
        assert other.put("d", b"k", ints(3), 5).seq == 16  # stream seq 2, stride 8
    finally:
        other.close()
    with pytest.raises(ValueError, match="seqs have stride 8"):
        make_queue(one, role="ingest")


def test_a_claim_leaves_the_stream_once_its_window_is_over(nats_server):
    """A writer acknowledges a claim it took once ``claim_hold`` s have passed since it was stored (here
    half a second): it comes again after the time left, and goes."""
    from flight_writer.queue import make_queue

    a = make_queue(queue_settings(nats_server, stream_slots=4))
    try:
        a.shards[0]._feed.claim_hold = 0.5
        a.shards[0].claim("d", "x1", 5)
        wait_for(lambda: (a.take(10, 0.2), ids_in(a.shards[0]) == [])[1], "the claim to leave")
        assert a.shards[0].kind_of(1, 5) == "claim"  # from the records
    finally:
        a.close()


def test_claims_ahead_of_a_batch_neither_hide_it_from_a_take_nor_shrink_the_fetches(nats_server):
    """Claims (no batch) ahead of a batch: a take that does not wait (a flush's drain) still gets the
    batch, and the claims, 0 bytes each, do not make the writer take the batches behind them in larger
    fetches (sized by the largest message lately: NATS drops a consumer whose fetch passes max_pending)."""
    q = NatsQueue(queue_settings(nats_server))
    try:
        for k in range(300):
            q.claim("d", f"x{k}", 5)
        q.put("d", b"k", ints(10), 5)
        size = q._feed._msg_size
        assert [e.seq for e in q.take(1000, 0.0)] == [301]
        assert q._feed._msg_size >= size * 7 // 8  # one batch of 10 rows: shrunk once, not by each claim fetch
    finally:
        q.close()


def test_a_stream_taken_on_while_running_counts_as_committed_only_what_its_records_say(nats_server, monkeypatch):
    """At a start, what was durable before counts as committed (the service adopts what a crash left); a
    stream taken on while running is another process's work: its records (all kept, the stream is new) say
    what is committed, and a batch stored but waiting for its table commit is durable, not committed."""
    from flight_writer.queue import make_queue
    from flight_writer.queue.nats import sharded

    monkeypatch.setattr(sharded, "LOOK_AGAIN", 0.0)
    one = queue_settings(nats_server, stream_slots=4)
    a = make_queue(one, role="ingest")  # one stream
    b = make_queue(dataclasses.replace(one, streams=2))  # makes the second; ingest and write
    try:
        seq = b.put(in_shards(2, 2)[1], b"k", ints(10), 5).seq
        assert seq % 4 == 1
        [entry] = take_rows(b, 10)
        b.confirm([entry], "sh/part-1.parquet", table=True)  # stored; its table commit is still to come
        assert b.position.wait([seq], 30)
        assert a.position.describe(seq)["state"] == "durable"  # looked for, taken on
        assert a.position.committed_through < seq
        b.committed((seq,))
        assert a.position.wait_committed([seq], 30) and a.position.describe(seq)["state"] == "committed"
    finally:
        b.close()
        a.close()
