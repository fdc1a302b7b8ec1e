"""The gil part: the share of wall time the server holds the GIL during the 8,192-row single-producer
run, sampled by py-spy, and the code that holds it most."""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa

from bench import REPO
from bench.contenders import flight_writer_server, flush, run_producers
from bench.workload import Workload

GIL_RATE = 500  # py-spy samples per second


def gil_share(base: pa.Table) -> dict:
    """The 8,192-row single-producer run under ``py-spy record --gil``: samples are taken only while a
    thread holds the GIL, so samples / (rate x seconds) is the share of wall time the GIL was held."""
    spy = Path(sys.executable).with_name("py-spy")
    if not spy.exists():
        print("  gil: py-spy is not installed (pip install py-spy)")
        return {"available": False}
    work = Workload(base, 8192)
    with tempfile.TemporaryDirectory(dir=REPO / "bench") as tmp:
        server = flight_writer_server(Path(tmp), "memory")
        out = Path(tmp) / "gil.txt"
        try:
            args = ["record", "--gil", "--nonblocking", "-r", str(GIL_RATE), "-f", "raw", "-o", str(out)]
            sampler = subprocess.Popen(
                [str(spy), *args, "--pid", str(server.proc.pid)],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            time.sleep(1.0)  # py-spy attaches
            if sampler.poll() is not None:
                print(f"  gil: py-spy could not attach: {sampler.stdout.read().strip()[-200:]}")  # type: ignore[union-attr]
                return {"available": False}
            started = time.perf_counter()
            run_producers(server.location, work, 1, 1)
            flush(server.location)
            seconds = time.perf_counter() - started
            sampler.send_signal(signal.SIGINT)
            sampler.communicate(timeout=60)
        finally:
            server.stop()
        holders: dict[str, int] = {}
        total = 0
        for line in out.read_text().splitlines() if out.exists() else []:
            stack, _, count = line.rpartition(" ")
            frames = [f.split(" (")[0] for f in stack.split(";") if "flight_writer/" in f]
            key = " > ".join(dict.fromkeys([frames[0], frames[-1]])) if frames else stack.split(";")[-1].split(" (")[0]
            holders[key] = holders.get(key, 0) + int(count)
            total += int(count)
    # GIL seconds over the run's seconds; the samples include the idle second before the clock started,
    # which can only make the share look larger
    share = total / GIL_RATE / seconds
    result = {
        "available": True,
        "mb_s": round(work.nbytes / 1e6 / seconds, 1),
        "seconds": round(seconds, 2),
        "samples": total,
        "gil_share": round(share, 3),
        "gil_s_per_gb": round(total / GIL_RATE / (work.nbytes / 1e9), 3),
        "top": [[k, round(v / total, 3)] for k, v in sorted(holders.items(), key=lambda kv: -kv[1])[:8]]
        if total
        else [],
    }
    print(
        f"  gil: held {100 * share:.1f}% of wall time ({result['gil_s_per_gb']} s per GB) at {result['mb_s']} MB/s; "
        f"top: {result['top'][:3]}",
        flush=True,
    )
    return result
