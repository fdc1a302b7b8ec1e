"""ack, status, flush, list_actions and the durable ack level, against a live server."""

from __future__ import annotations

import threading

import pyarrow.flight as flight
import pytest

from helpers import action, ints, parquet_files, put, read_dataset, running


def test_list_actions_names_each_action_with_a_description(client):
    actions = {a.type: a.description for a in client.list_actions()}
    assert set(actions) == {"ack", "status", "flush", "CloseSession"}
    assert all(actions.values())


def test_ack_reports_queued_then_durable_with_file(client, data_root):
    replies = put(client, "acked", [ints(5), ints(5, 5)], ids=["a", "b"])
    assert [r["id"] for r in replies] == ["a", "b"]
    seqs = [r["seq"] for r in replies]

    before = action(client, "ack", {"seqs": seqs})
    assert [a["state"] for a in before["acks"]] == ["queued", "queued"]
    assert before["durable_through"] < seqs[0]

    action(client, "flush")
    after = action(client, "ack", {"seqs": [*seqs, seqs[-1] + 1000, 0]})
    states = [(a["seq"], a["state"]) for a in after["acks"]]
    assert states == [
        (seqs[0], "durable"),
        (seqs[1], "durable"),
        (seqs[-1] + 1000, "unknown"),
        (0, "unknown"),
    ]
    [f] = parquet_files(data_root, "acked")
    assert after["acks"][0]["file"] == f.relative_to(data_root).as_posix()
    assert after["durable_through"] == seqs[-1]
    assert action(client, "ack", {"seq": seqs[0]})["acks"][0]["state"] == "durable"


def test_ack_wait_ms_returns_when_durable(data_root):
    # a short flush interval makes the writer store the data on its own while ack waits
    with running(data_root, writer={"flush_interval": 0.3}) as svc, flight.connect(svc.location) as c:
        [r] = put(c, "waited", [ints(3)])
        got = action(c, "ack", {"seq": r["seq"], "wait_ms": 60_000})
        assert got["acks"][0]["state"] == "durable"
        assert got["durable_through"] >= r["seq"]


def test_ack_wait_ms_gives_up_at_the_deadline(client):
    [r] = put(client, "notyet", [ints(3)])  # flush_interval is 600 s in tests: nothing writes it
    got = action(client, "ack", {"seqs": [r["seq"]], "wait_ms": 200})
    assert got["acks"][0]["state"] == "queued"


def test_flush_for_one_dataset_leaves_the_others_buffered(client, data_root):
    [a] = put(client, "one", [ints(3)])
    [b] = put(client, "two", [ints(3)])
    got = action(client, "flush", {"dataset": "one"})
    assert got["durable_through"] == a["seq"]
    states = {x["seq"]: x["state"] for x in action(client, "ack", {"seqs": [a["seq"], b["seq"]]})["acks"]}
    assert states == {a["seq"]: "durable", b["seq"]: "queued"}
    assert parquet_files(data_root, "two") == []
    assert action(client, "flush")["durable_through"] == b["seq"]


def test_status_counts_what_happened(client, service, data_root):
    s0 = action(client, "status")
    assert s0["received_seq"] == 0 and s0["durable_through"] == 0 and s0["files_written"] == 0
    assert s0["queue"] == "memory"
    assert s0["storage"] == {"service": "fs", "root": str(data_root)}
    assert s0["last_error"] is None and s0["uptime_s"] >= 0

    put(client, "st", [ints(10), ints(20)])
    s1 = action(client, "status")
    assert s1["received_seq"] == 2
    assert s1["pending_batches"] == 2 and s1["pending_bytes"] == 240
    action(client, "flush")
    s2 = action(client, "status")
    assert s2["durable_through"] == 2 and s2["pending_batches"] == 0 and s2["pending_bytes"] == 0
    assert s2["files_written"] == 1 and s2["rows_written"] == 30
    [f] = parquet_files(data_root, "st")
    assert s2["bytes_written"] == f.stat().st_size


def test_durable_ack_level_returns_after_storage_has_the_data(client, data_root):
    replies = put(client, "dur", [ints(4), ints(4, 4)], ack="durable")
    *queued, final = replies
    assert [r["state"] for r in queued] == ["queued", "queued"]
    assert final["state"] == "durable"
    assert final["durable_through"] >= queued[-1]["seq"]
    assert final["files"] == [f.relative_to(data_root).as_posix() for f in parquet_files(data_root, "dur")]
    assert read_dataset(data_root, "dur", sort_by="i").column("i").to_pylist() == list(range(8))


def test_durable_stream_waits_only_for_itself(client, data_root):
    """A durable stream on one dataset flushes that dataset, not the others."""
    put(client, "other", [ints(2)])
    put(client, "mine", [ints(2)], ack="durable")
    assert parquet_files(data_root, "other") == []


def test_many_concurrent_ack_waiters_all_wake(client, service):
    replies = put(client, "waiters", [ints(1, i) for i in range(10)])
    results: list[str] = []

    def wait_one(seq: int) -> None:
        with flight.connect(service.location) as c:
            results.append(action(c, "ack", {"seq": seq, "wait_ms": 60_000})["acks"][0]["state"])

    threads = [threading.Thread(target=wait_one, args=(r["seq"],)) for r in replies]
    for t in threads:
        t.start()
    action(client, "flush")
    for t in threads:
        t.join(60)
    assert results == ["durable"] * 10


def test_oversized_action_bodies_and_acks_are_refused_and_cost_nothing(client, data_root):
    """An ack listing ~5 million seqs once built a >2 GB reply and aborted the process."""
    replies = put(client, "keep", [ints(10)])
    with pytest.raises(flight.FlightServerError, match="at most 10000"):
        action(client, "ack", {"seqs": list(range(1, 10_002))})
    with pytest.raises(flight.FlightServerError, match=r"action body of \d+ bytes is over the limit of 1048576"):
        action(client, "ack", b"[" + b"1," * 600_000 + b"1]")
    assert len(action(client, "ack", {"seqs": list(range(1, 10_001))})["acks"]) == 10_000  # the limit itself
    action(client, "flush")
    assert action(client, "ack", {"seq": replies[0]["seq"]})["acks"][0]["state"] == "durable"
    assert read_dataset(data_root, "keep").num_rows == 10
