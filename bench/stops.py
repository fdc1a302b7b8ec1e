"""Stop stress: N group SIGTERMs to `make serve` (make forwards the signal, so the server gets it twice) with
one idle stream open each time, while two processes burn both CPUs. Each round must end with every
acknowledged batch durable ("stopped: durable through seq 5") and no "exiting now"; a round that does not
exit within 60 s is a hang (killed and counted).

    .venv/bin/python bench/stops.py 200
"""

from __future__ import annotations

import multiprocessing
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.flight as flight

REPO = Path(__file__).resolve().parent.parent


def burn() -> None:
    while True:
        pass


def one_round(root: str) -> str:
    """ok, hang or bad (with the log)."""
    env = {
        **os.environ,
        "STORAGE_PATH": root,
        "FLIGHT_WRITER_SERVER__LOCATION": "grpc://127.0.0.1:0",
        "FLIGHT_WRITER_SERVER__SHUTDOWN_TIMEOUT": "1",
        "FLIGHT_WRITER_WRITER__FLUSH_INTERVAL": "600",
    }
    proc = subprocess.Popen(
        ["make", "--no-print-directory", "serve"],
        env=env,
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert proc.stderr is not None
    lines: list[str] = []
    port = None
    for line in proc.stderr:
        lines.append(line)
        if found := re.search(r"\(port (\d+)\)", line):
            port = int(found.group(1))
            break
    if port is None:
        return "bad: no port\n" + "".join(lines)
    reader_thread = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)  # type: ignore[arg-type]
    reader_thread.start()
    client = flight.connect(f"grpc://127.0.0.1:{port}")
    writer, reader = client.do_put(flight.FlightDescriptor.for_path("idle"), pa.schema([("x", pa.int64())]))
    for k in range(5):
        writer.write_batch(pa.record_batch({"x": range(k * 100, k * 100 + 100)}))
        assert reader.read() is not None
    os.killpg(proc.pid, signal.SIGTERM)  # as a supervisor does: make and the server
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return "hang"
    reader_thread.join(10)
    log = "".join(lines)
    return "ok" if "stopped: durable through seq 5" in log and "exiting now" not in log else "bad\n" + log[-2000:]


def main(rounds: int) -> int:
    burners = [multiprocessing.Process(target=burn, daemon=True) for _ in range(os.cpu_count() or 2)]
    for b in burners:
        b.start()
    counts = {"ok": 0, "hang": 0, "bad": 0}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            result = one_round(f"{tmp}/data{r}")
            kind = result.split("\n", 1)[0].split(":")[0]
            counts[kind] += 1
            if kind != "ok":
                print(f"round {r}: {result}", flush=True)
            if (r + 1) % 20 == 0:
                print(f"{r + 1} rounds: {counts}", flush=True)
    print(f"{rounds} group SIGTERMs with an idle stream, under load: {counts}")
    return 0 if counts["ok"] == rounds else 1


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 200))
