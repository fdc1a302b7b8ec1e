"""The latency part: from sending a batch to its durable ack, at a steady load of one 8,192-row
batch every 50 ms, for flush intervals of 0.1, 0.5 and 1 s."""

from __future__ import annotations

import json
import tempfile
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.flight as flight

from bench import REPO
from bench.contenders import flight_writer_server

LATENCY_BATCHES = 200  # per flush interval: enough for a p99 that is not simply the slowest one


def wait_durable(location: str, seq: int, sent: float, waits: list[float], lock: threading.Lock) -> None:
    with flight.connect(location) as client:
        list(client.do_action(flight.Action("ack", json.dumps({"seq": seq, "wait_ms": 60_000}).encode())))
    with lock:
        waits.append(time.perf_counter() - sent)


def latency(base: pa.Table) -> list[dict]:
    """Send one 8,192-row batch every 50 ms, LATENCY_BATCHES of them (10 s); time each to its durable ack."""
    batches = base.combine_chunks().to_batches(max_chunksize=8192)
    results = []
    for interval in (0.1, 0.5, 1.0):
        with tempfile.TemporaryDirectory(dir=REPO / "bench") as tmp:
            server = flight_writer_server(Path(tmp), "memory", {"FLIGHT_WRITER_WRITER__FLUSH_INTERVAL": str(interval)})
            waits: list[float] = []
            lock = threading.Lock()
            try:
                with flight.connect(server.location) as client:
                    writer, reader = client.do_put(flight.FlightDescriptor.for_path("lat"), batches[0].schema)
                    waiters = []
                    for i in range(LATENCY_BATCHES):
                        batch = batches[i % len(batches)]
                        sent = time.perf_counter()
                        writer.write_batch(batch)
                        seq = json.loads(reader.read().to_pybytes())["seq"]

                        waiters.append(
                            threading.Thread(target=wait_durable, args=(server.location, seq, sent, waits, lock))
                        )
                        waiters[-1].start()
                        time.sleep(0.05)  # the steady load itself: one batch every 50 ms
                    writer.done_writing()
                    writer.close()
                    for t in waiters:
                        t.join()
            finally:
                server.stop()
        waits.sort()
        results.append(
            {
                "flush_interval": interval,
                "batches": len(waits),
                "p50_ms": round(1000 * waits[len(waits) // 2], 1),
                "p99_ms": round(1000 * waits[min(len(waits) - 1, int(len(waits) * 0.99))], 1),
            }
        )
        print(
            f"  latency flush_interval={interval}s p50={results[-1]['p50_ms']} ms p99={results[-1]['p99_ms']} ms",
            flush=True,
        )
    return results
