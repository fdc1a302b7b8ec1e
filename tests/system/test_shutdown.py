"""Graceful shutdown of a real `flight-writer serve` process under load."""

from __future__ import annotations

import os
import signal
import threading
from collections import Counter

import pyarrow as pa
import pyarrow.flight as flight
import pytest

from flight_writer.service import Service

from emulators import free_port
from helpers import action, read_dataset, settings_for, write_config

ROWS = 100


NO_WINDOW = {"FLIGHT_WRITER_SERVER__SAME_STOP_WINDOW": "0"}  # every later stop signal is a new one: exit at once
ONE_WINDOW = {"FLIGHT_WRITER_SERVER__SAME_STOP_WINDOW": "3600"}  # every later stop signal is the first one's copy


def stop_then_signal_again(server, second: signal.Signals, handled: str) -> None:
    """SIGTERM, then ``second`` once ``handled`` is logged; the server (started with NO_WINDOW) exits at
    once with status 1."""
    server.proc.send_signal(signal.SIGTERM)
    server.wait_for_log(handled)
    server.proc.send_signal(second)
    assert server.proc.wait(30) == 1
    server.wait_for_log(f"{second.name} again: exiting now")


def test_sigterm_under_load_keeps_every_acknowledged_batch(tmp_path, server_process):
    root = tmp_path / "data"
    server = server_process(write_config(tmp_path / "s.toml", root, "[writer]\nflush_interval = 0.5\n"))
    location = server.location
    acked: list[int] = []  # first row id of every acknowledged batch
    lock = threading.Lock()
    enough = threading.Event()

    def produce(p: int) -> None:
        n = 0
        try:
            with flight.connect(location) as c:
                while True:  # streams of 10 batches until the server stops taking calls
                    writer, reader = c.do_put(
                        flight.FlightDescriptor.for_path("load"), pa.schema([("row", pa.int64())])
                    )
                    for _ in range(10):
                        start = (p * 1_000_000 + n) * ROWS
                        n += 1
                        writer.write_batch(pa.record_batch({"row": pa.array(range(start, start + ROWS))}))
                        assert reader.read() is not None
                        with lock:
                            acked.append(start)
                            if len(acked) >= 400:
                                enough.set()
                    writer.close()
        except (flight.FlightError, AssertionError, OSError):
            return  # the server went away: what was acknowledged so far is what counts

    threads = [threading.Thread(target=produce, args=(p,)) for p in range(4)]
    for t in threads:
        t.start()
    assert enough.wait(60), "producers made no progress"
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(60) == 0
    for t in threads:
        t.join(30)
    log = server.log
    assert "SIGTERM: stopping gracefully" in log and "stopped: durable through seq" in log

    stored = Counter(read_dataset(root, "load").column("row").to_pylist())
    assert set(stored.values()) == {1}  # nothing twice
    missing = [s for s in acked if any(stored[r] != 1 for r in (s, s + ROWS - 1))]
    assert missing == []  # every acknowledged batch, whole
    assert len(acked) >= 400


def test_second_signal_exits_at_once_even_with_storage_down(tmp_path, server_process):
    root = tmp_path / "data"
    root.mkdir()
    (root / "stuck").write_text("blocks the dataset directory: every upload fails")
    server = server_process(
        write_config(tmp_path / "s.toml", root, "[writer]\nretry_initial_delay = 0.05\nretry_max_delay = 0.1\n"),
        NO_WINDOW,
    )
    with flight.connect(server.location) as c:
        writer, reader = c.do_put(flight.FlightDescriptor.for_path("stuck"), pa.schema([("x", pa.int64())]))
        writer.write_batch(pa.record_batch({"x": [1]}))
        assert reader.read() is not None
        writer.close()
        assert action(c, "status")["received_seq"] == 1
    stop_then_signal_again(server, signal.SIGTERM, "retrying")  # graceful would retry the upload forever


def test_a_duplicate_signal_is_the_same_graceful_stop(tmp_path, server_process):
    """make and shells forward the SIGTERM their process group got: the server sees it twice at once."""
    root = tmp_path / "data"
    config = write_config(tmp_path / "s.toml", root, "[writer]\nflush_interval = 600\n")
    server = server_process(config, ONE_WINDOW)
    with flight.connect(server.location) as c:
        writer, reader = c.do_put(flight.FlightDescriptor.for_path("dup"), pa.schema([("x", pa.int64())]))
        for k in range(20):
            writer.write_batch(pa.record_batch({"x": range(k * 100, k * 100 + 100)}))
            assert reader.read() is not None  # answered "queued": buffered, not yet in a file
        server.proc.send_signal(signal.SIGTERM)  # the open stream holds the stop until it closes
        server.wait_for_log("SIGTERM: stopping gracefully")  # the first is handled: the next one counts
        server.proc.send_signal(signal.SIGTERM)  # as make's forwarded copy does, milliseconds later
        server.wait_for_log("SIGTERM again within 3600 s: already stopping gracefully")
        writer.close()
    assert server.proc.wait(60) == 0
    assert read_dataset(root, "dup").column("x").to_pylist() == list(range(2000))


def test_a_later_signal_exits_at_once_while_a_stream_is_open(tmp_path, server_process):
    """The graceful stop waits for open streams; a second signal after the window still ends it."""
    server = server_process(write_config(tmp_path / "s.toml", tmp_path / "data"), NO_WINDOW)
    with flight.connect(server.location) as c:
        writer, reader = c.do_put(flight.FlightDescriptor.for_path("open"), pa.schema([("x", pa.int64())]))
        writer.write_batch(pa.record_batch({"x": [1]}))
        assert reader.read() is not None  # the stream stays open
        stop_then_signal_again(server, signal.SIGINT, "stopping: finishing calls in flight")


def test_group_sigterm_through_make_serve_loses_nothing(tmp_path, server_process):
    """systemd, a terminal and many supervisors signal the process group: make gets SIGTERM and forwards
    it, so the server gets it twice. It used to take the second as "exit now" and lose every queued batch."""
    for round_ in range(3):
        root = tmp_path / f"data{round_}"
        env = {
            "STORAGE_PATH": str(root),
            "FLIGHT_WRITER_SERVER__LOCATION": "grpc://127.0.0.1:0",
            **ONE_WINDOW,  # make's forwarded copy, however late the loaded machine delivers it
            "FLIGHT_WRITER_WRITER__FLUSH_INTERVAL": "600",  # everything stays buffered until the stop
        }
        server = server_process(None, env, cmd=["make", "--no-print-directory", "serve"])
        with flight.connect(server.location) as c:
            writer, reader = c.do_put(flight.FlightDescriptor.for_path("make"), pa.schema([("x", pa.int64())]))
            for k in range(50):
                writer.write_batch(pa.record_batch({"x": range(k * 1000, k * 1000 + 1000)}))
                assert reader.read() is not None
            writer.close()
        os.killpg(server.proc.pid, signal.SIGTERM)  # make and the server, as a supervisor does
        server.proc.wait(60)  # make re-raises the signal on itself once its child has exited
        assert "stopped: durable through seq 50" in server.log and "exiting now" not in server.log
        assert read_dataset(root, "make").column("x").to_pylist() == list(range(50_000)), f"round {round_}"


def test_a_stop_ends_streams_still_open_at_shutdown_timeout_and_writes_what_was_answered(data_root):
    svc = Service(settings_for(data_root, server={"shutdown_timeout": "0.5"})).start()
    with flight.connect(svc.location) as c:
        writer, reader = c.do_put(flight.FlightDescriptor.for_path("idle"), pa.schema([("x", pa.int64())]))
        writer.write_batch(pa.record_batch({"x": range(10)}))
        assert reader.read() is not None  # answered; the producer then holds the stream open, idle
        stopping = threading.Thread(target=svc.stop)
        stopping.start()
        stopping.join(60)
        assert not stopping.is_alive() and svc.calls_open
        assert read_dataset(data_root, "idle").column("x").to_pylist() == list(range(10))
        writer.write_batch(pa.record_batch({"x": [99]}))  # the stream is told, and the batch not taken
        with pytest.raises(flight.FlightUnavailableError, match="server is shutting down: the batches before"):
            reader.read()
            writer.close()
    assert read_dataset(data_root, "idle").num_rows == 10


def test_group_sigterm_through_make_serve_with_an_idle_stream_stops_at_the_deadline(tmp_path, server_process):
    root = tmp_path / "data"
    env = {
        "STORAGE_PATH": str(root),
        "FLIGHT_WRITER_SERVER__LOCATION": "grpc://127.0.0.1:0",
        **ONE_WINDOW,
        "FLIGHT_WRITER_SERVER__SHUTDOWN_TIMEOUT": "1",
        "FLIGHT_WRITER_WRITER__FLUSH_INTERVAL": "600",
    }
    server = server_process(None, env, cmd=["make", "--no-print-directory", "serve"])
    c = flight.connect(server.location)
    writer, reader = c.do_put(flight.FlightDescriptor.for_path("idle"), pa.schema([("x", pa.int64())]))
    for k in range(5):
        writer.write_batch(pa.record_batch({"x": range(k * 100, k * 100 + 100)}))
        assert reader.read() is not None
    os.killpg(server.proc.pid, signal.SIGTERM)  # the stream stays open: the stop must not wait for it
    server.proc.wait(60)
    log = server.log
    assert "1 streams still open after server.shutdown_timeout (1 s)" in log and "exiting now" not in log
    assert "stopped: durable through seq 5" in log
    assert read_dataset(root, "idle").column("x").to_pylist() == list(range(500))
    with pytest.raises((flight.FlightError, OSError)):  # the process is gone
        writer.write_batch(pa.record_batch({"x": [1]}))
        writer.close()
    c.close()


def test_stop_signals_during_a_long_start_are_handled(tmp_path, server_process):
    """A start may take long (a NATS server that does not answer: up to 15 s): the main thread handles
    signals meanwhile; a second stop signal after the window exits at once."""
    port = free_port()  # nothing listens there
    config = write_config(
        tmp_path / "s.toml",
        tmp_path / "data",
        f'[queue]\ntype = "nats"\nurl = ["nats://127.0.0.1:{port}"]\n[log]\nlevel = "debug"\n',
    )
    server = server_process(config, NO_WINDOW, ready="starting: queue nats")
    server.proc.send_signal(signal.SIGTERM)
    server.wait_for_log("SIGTERM: stopping gracefully")
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(30) == 1
    server.wait_for_log("SIGTERM again: exiting now")
