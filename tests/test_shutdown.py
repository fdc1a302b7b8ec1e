"""Graceful shutdown of a real `flight-writer serve` process under load."""

from __future__ import annotations

import signal
import threading
from collections import Counter

import pyarrow as pa
import pyarrow.flight as flight

from conftest import action, read_dataset, write_config

ROWS = 100


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
        write_config(tmp_path / "s.toml", root, "[writer]\nretry_initial_delay = 0.05\nretry_max_delay = 0.1\n")
    )
    with flight.connect(server.location) as c:
        writer, reader = c.do_put(flight.FlightDescriptor.for_path("stuck"), pa.schema([("x", pa.int64())]))
        writer.write_batch(pa.record_batch({"x": [1]}))
        assert reader.read() is not None
        writer.close()
        assert action(c, "status")["received_seq"] == 1
    server.proc.send_signal(signal.SIGTERM)  # graceful: the upload would be retried forever
    server.wait_for_log("retrying")
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(30) == 1
    server.wait_for_log("second SIGTERM: exiting now")
