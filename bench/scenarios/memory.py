"""The memory part: the server's peak RSS while 10 x queue.max_bytes goes to a storage (S3 on moto)
paused 80% of the time, against the bound queue + 2 x file + 300 MB."""

from __future__ import annotations

import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.flight as flight

from bench import REPO
from bench.contenders import drain_replies, flight_writer_server, flush
from bench.workload import REPEAT, MiB


def peak_memory(base: pa.Table) -> dict:
    """10 x queue.max_bytes sent to a server whose storage (S3 on moto) is paused 80% of the time, REPEAT
    times, each with a new server."""
    sys.path.insert(0, str(REPO / "tests"))
    import emulators

    queue_mb, file_mb = 64, 32
    batches = base.combine_chunks().to_batches(max_chunksize=65536)
    per = sum(b.nbytes for b in batches) / len(batches)
    count = int(10 * queue_mb * MiB / per)
    s3 = emulators.start("s3")
    try:
        peaks = [_peak_memory_once(s3, f"run{i}", batches, count, queue_mb, file_mb) for i in range(REPEAT)]
    finally:
        s3.stop()
    bound = queue_mb + 2 * file_mb + 300
    result = {
        "queue_max_mb": queue_mb,
        "max_file_mb": file_mb,
        "sent_mb": round(count * per / MiB),
        "peak_rss_mb": round(statistics.median(peaks)),
        "peak_rss_mb_runs": [round(p) for p in peaks],
        "bound_mb": bound,
        "within": statistics.median(peaks) <= bound,
    }
    print(
        f"  memory: sent {result['sent_mb']} MiB, peak RSS median {result['peak_rss_mb']} MiB "
        f"(runs {result['peak_rss_mb_runs']}; bound {bound} MiB)"
    )
    return result


def _peak_memory_once(s3, prefix: str, batches: list, count: int, queue_mb: int, file_mb: int) -> float:
    stop = threading.Event()

    def slow_storage() -> None:
        while not stop.is_set():
            s3.proc.send_signal(signal.SIGSTOP)
            time.sleep(0.08)
            s3.proc.send_signal(signal.SIGCONT)
            time.sleep(0.02)

    storage = s3.settings()
    env = {
        "FLIGHT_WRITER_QUEUE__MAX_BYTES": f"{queue_mb}MiB",
        "FLIGHT_WRITER_WRITER__MAX_FILE_BYTES": f"{file_mb}MiB",
        "FLIGHT_WRITER_QUEUE__PUT_TIMEOUT": "600",
        "STORAGE_TYPE": "s3",
        "STORAGE_PATH": f"{storage.root}/{prefix}",
        "FLIGHT_WRITER_STORAGE__BUCKET": storage.bucket,
        "FLIGHT_WRITER_STORAGE__ENDPOINT": storage.endpoint,
        "FLIGHT_WRITER_STORAGE__REGION": storage.region,
        **{f"FLIGHT_WRITER_STORAGE__OPTIONS__{k.upper()}": v for k, v in storage.options.items()},
    }
    with tempfile.TemporaryDirectory(dir=REPO / "bench") as tmp:
        server = flight_writer_server(Path(tmp), "memory", env)
        throttle = threading.Thread(target=slow_storage)
        throttle.start()
        try:
            with flight.connect(server.location) as client:
                writer, reader = client.do_put(flight.FlightDescriptor.for_path("mem"), batches[0].schema)
                drain = threading.Thread(target=drain_replies, args=(reader,))
                drain.start()
                for i in range(count):
                    writer.write_batch(batches[i % len(batches)])
                writer.done_writing()
                drain.join()
                writer.close()
            stop.set()
            throttle.join()
            s3.proc.send_signal(signal.SIGCONT)
            flush(server.location)
            return server.peak_rss_mb()
        finally:
            stop.set()
            s3.proc.send_signal(signal.SIGCONT)
            server.stop()
