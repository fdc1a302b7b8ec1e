"""SIGHUP re-reads the settings file and the environment: live settings change at once, the others are
named and kept until a restart, an invalid file changes nothing, and the principals file is read again
(new principals, rotated secrets)."""

from __future__ import annotations

import signal

import pyarrow as pa
import pyarrow.flight as flight
import pytest

from flight_writer.ingest.auth import new_token

from helpers import read_dataset, send, write_config

HASHES = dict(new_token() for _ in range(3))  # machine token -> its stored hash
OLD, NEW, TEAM_B = HASHES
BATCH = pa.record_batch({"i": pa.array(range(10), pa.int64())})


def principal(name: str, *secrets: str) -> str:
    hashes = ", ".join(f'"{HASHES[s]}"' for s in secrets)
    return f'[principals.{name}]\nsecret = [{hashes}]\ndatasets = ["{name}/*"]\nactions = ["ack", "status", "flush"]\n'


def bearer(secret: str) -> list[tuple[bytes, bytes]]:
    return [(b"authorization", f"Bearer {secret}".encode())]


def call(client: flight.FlightClient, name: str, secret: str, body: bytes = b"") -> dict:
    import json

    [result] = client.do_action(flight.Action(name, body), flight.FlightCallOptions(headers=bearer(secret)))
    return json.loads(result.body.to_pybytes())


def test_sighup_applies_live_settings_and_principals_and_names_the_rest(tmp_path, server_process):
    root = tmp_path / "data"
    principals = tmp_path / "principals.toml"
    principals.write_text(principal("team-a", OLD))
    auth = f'[auth]\nprincipals_file = "{principals}"\n'
    config = write_config(tmp_path / "s.toml", root, f"[writer]\nflush_interval = 600\n{auth}")
    server = server_process(config)
    c = flight.connect(server.location)
    send(c, flight.FlightDescriptor.for_path("team-a", "spans"), BATCH, headers=bearer(OLD))
    assert call(c, "ack", OLD, b'{"seq": 1}')["acks"][0]["state"] != "durable"  # 600 s until it is written

    # live: flush_interval; the principals file again: team-a's secret rotated, team-b added
    config.write_text(config.read_text().replace("flush_interval = 600", "flush_interval = 0.2"))
    principals.write_text(principal("team-a", NEW) + principal("team-b", TEAM_B))
    server.proc.send_signal(signal.SIGHUP)
    line = server.wait_for_log("SIGHUP: settings reloaded")
    assert f"principals read again from {principals}" in line and "changed now: writer.flush_interval" in line
    assert call(c, "ack", NEW, b'{"seq": 1, "wait_ms": 30000}')["acks"][0]["state"] == "durable"
    with pytest.raises(flight.FlightUnauthenticatedError):
        call(c, "status", OLD)  # remembered from before the reload, and no longer valid
    send(c, flight.FlightDescriptor.for_path("team-b", "logs"), BATCH, headers=bearer(TEAM_B))

    # an invalid file changes nothing
    good = config.read_text()
    config.write_text(good.replace("flush_interval = 0.2", 'flush_interval = 0.2\ncompression = "bogus"'))
    server.proc.send_signal(signal.SIGHUP)
    assert "writer.compression must be one of" in server.wait_for_log("SIGHUP: nothing changed")
    principals.write_text("not toml [")
    config.write_text(good)
    server.proc.send_signal(signal.SIGHUP)
    server.wait_for_log(f"SIGHUP: nothing changed: auth.principals_file '{principals}'")
    assert call(c, "status", TEAM_B)["received_seq"] == 2  # the principals read before still hold
    principals.write_text(principal("team-a", NEW) + principal("team-b", TEAM_B))

    # a setting that needs a restart is named and kept
    config.write_text(good + "[queue]\nmax_bytes = 1000000\n")
    server.proc.send_signal(signal.SIGHUP)
    server.wait_for_log("SIGHUP: queue.max_bytes changed but needs a restart: kept as it was")
    status = call(c, "status", TEAM_B)
    assert status["queue_max_bytes"] == 512 * 1024 * 1024 and status["received_seq"] == 2
    assert call(c, "flush", TEAM_B, b'{"dataset": "team-b/logs"}')["durable_through"] == 2
    c.close()
    assert read_dataset(root, "team-a/spans").num_rows == 10 and read_dataset(root, "team-b/logs").num_rows == 10


def test_a_settings_file_that_is_not_text_changes_nothing_and_the_server_goes_on(tmp_path, server_process):
    root = tmp_path / "data"
    config = write_config(tmp_path / "s.toml", root, "[writer]\nflush_interval = 600\n")
    server = server_process(config)
    c = flight.connect(server.location)
    send(c, flight.FlightDescriptor.for_path("kept"), BATCH)  # queued: 600 s until written
    config.write_bytes(config.read_bytes() + b"# caf\xe9\n")  # not UTF-8
    server.proc.send_signal(signal.SIGHUP)
    assert "UnicodeDecodeError" in server.wait_for_log("SIGHUP: nothing changed")
    server.proc.send_signal(signal.SIGTERM)  # still serving, and its stop writes what it holds
    assert server.proc.wait(60) == 0
    c.close()
    assert read_dataset(root, "kept").num_rows == 10
