"""The benchmark: flight-writer against the limits around it, on the same data and the same disk.

Contenders, per scenario (batch rows x producers x datasets):
  discard  a Flight server that reads and drops every batch: the transport limit
  reply    the same, but it answers every batch with a PutResult as flight-writer does: the protocol's limit
  direct   the client writes Parquet itself with pyarrow (zstd, same row groups), one writer per dataset
  memory   flight-writer end to end (queue.type = memory): do_put, then `flush` until everything is durable
  wal      the same with queue.type = wal (fsync = always)

Servers run as separate processes on 127.0.0.1; producers are threads of this process. Throughput is Arrow
bytes (and rows) of the spans sent, per second of wall time. Every measurement runs BENCH_REPEAT times (3),
the contenders taking turns, and the median counts; CPU seconds of the client and the server are recorded.
Also: durable-ack latency at a steady load for a few flush intervals, and the server's peak RSS while
10 x queue.max_bytes goes through a slowed storage.

    make bench                                  # BENCH_SCALE=1: 1 GiB of Arrow data per measurement
    BENCH_SCALE=0.1 BENCH_REPEAT=1 make bench   # a quick run

Writes bench/results.json and bench/results.png, and prints the table.
"""

from __future__ import annotations

import json
import os
import platform
import re
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.flight as flight
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SCALE = float(os.environ.get("BENCH_SCALE", "1"))
BYTES_PER_RUN = int((1 << 30) * SCALE)
REPEAT = int(os.environ.get("BENCH_REPEAT", "3"))
LATENCY_BATCHES = 200  # per flush interval: enough for a p99 that is not simply the slowest one
ROW_GROUP_ROWS = 1_048_576
MiB = 1 << 20


# -- data ---------------------------------------------------------------------------------------------------
def make_spans(rows: int, seed: int = 7) -> pa.Table:
    """Observability spans: what our users send."""
    rng = np.random.default_rng(seed)
    services = np.array([f"service-{i}" for i in range(12)], dtype=object)
    names = np.array([f"GET /api/v1/resource/{i}" for i in range(200)], dtype=object)
    statuses = np.array(["OK", "ERROR", "UNSET"], dtype=object)
    start = 1_764_000_000_000_000_000
    keys = pa.array(np.tile(np.array(["http.method", "http.status_code", "host.name", "region"], dtype=object), rows))
    values = pa.array(
        np.stack(
            [
                rng.choice(np.array(["GET", "POST", "PUT"], dtype=object), rows),
                rng.choice(np.array(["200", "404", "500"], dtype=object), rows),
                np.char.add("host-", rng.integers(0, 500, rows).astype(str)).astype(object),
                rng.choice(np.array(["eu-west-1", "us-east-1"], dtype=object), rows),
            ],
            axis=1,
        ).reshape(-1)
    )
    attributes = pa.MapArray.from_arrays(pa.array(np.arange(0, 4 * rows + 1, 4, dtype=np.int32)), keys, values)
    return pa.table(
        {
            "timestamp": pa.array(start + np.cumsum(rng.integers(1_000, 1_000_000, rows)), pa.timestamp("ns", "UTC")),
            "service": pa.array(rng.choice(services, rows)),
            "trace_id": pa.FixedSizeBinaryArray.from_buffers(
                pa.binary(16), rows, [None, pa.py_buffer(rng.bytes(16 * rows))]
            ),
            "span_id": pa.FixedSizeBinaryArray.from_buffers(
                pa.binary(8), rows, [None, pa.py_buffer(rng.bytes(8 * rows))]
            ),
            "name": pa.array(rng.choice(names, rows)),
            "duration_ns": pa.array(rng.lognormal(13, 2, rows).astype(np.int64)),
            "status": pa.array(rng.choice(statuses, rows, p=[0.9, 0.05, 0.05])),
            "attributes": attributes,
        }
    )


def fixed_binary(rng: np.random.Generator, width: int, rows: int) -> pa.Array:
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), rows, [None, pa.py_buffer(rng.bytes(width * rows))])


class Workload:
    """Batches of one size, cycled from a base table until ``BYTES_PER_RUN`` bytes have been handed out."""

    def __init__(self, base: pa.Table, batch_rows: int, nbytes: float = BYTES_PER_RUN) -> None:
        self.batches = base.combine_chunks().to_batches(max_chunksize=batch_rows)
        self.batch_bytes = sum(b.nbytes for b in self.batches) / len(self.batches)
        self.count = max(1, int(nbytes / self.batch_bytes))
        self.rows = sum(self.batches[i % len(self.batches)].num_rows for i in range(self.count))
        self.nbytes = sum(self.batches[i % len(self.batches)].nbytes for i in range(self.count))

    def share(self, producer: int, producers: int) -> list[pa.RecordBatch]:
        return [self.batches[i % len(self.batches)] for i in range(producer, self.count, producers)]


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
    processes and one ingest process, all on this machine; CPU seconds are theirs together."""

    def __init__(self, root: Path, writers: int) -> None:
        nats_port = _free_port()
        binary = str(Path(sys.executable).with_name("nats-server"))
        conf = str(REPO / "deploy" / "nats.conf")
        self.nats = subprocess.Popen(
            [binary, "-c", conf, "-js", "-a", "127.0.0.1", "-p", str(nats_port), "-sd", str(root / "nats")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        env = {
            "FLIGHT_WRITER_QUEUE__URL": f"nats://127.0.0.1:{nats_port}",
            "FLIGHT_WRITER_QUEUE__STREAM": "BENCH",
            # all on one machine: lz4 cost more CPU than the bytes it saved (167.6 vs 116.9 MB/s, 1 producer,
            # BENCH_SCALE=0.2; the server processes' CPU 2.3 vs 3.1 s); lz4 stays the default for networks
            "FLIGHT_WRITER_QUEUE__COMPRESSION": os.environ.get("FLIGHT_WRITER_QUEUE__COMPRESSION", "none"),
        }
        _wait_for_port(nats_port)
        self.writers = [flight_writer_server(root, "nats", env, role="write") for _ in range(writers)]
        self.ingest = flight_writer_server(root, "nats", env, role="ingest")
        self.location = self.ingest.location

    def cpu_seconds(self) -> float:
        nats = Path(f"/proc/{self.nats.pid}/stat").read_text().rsplit(")", 1)[1].split()
        own = (int(nats[11]) + int(nats[12])) / os.sysconf("SC_CLK_TCK")
        return own + sum(s.cpu_seconds() for s in [self.ingest, *self.writers])

    def stop(self) -> None:
        for server in [self.ingest, *self.writers]:
            server.stop()
        self.nats.terminate()
        self.nats.wait(60)


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
def run_producers(location: str, work: Workload, producers: int, datasets: int) -> None:
    def produce(p: int) -> None:
        with flight.connect(location) as client:
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

    @staticmethod
    def _client_cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    def stop(self) -> dict[str, float]:
        return {
            "seconds": time.perf_counter() - self.start,
            "client_cpu_s": self._client_cpu() - self.cpu,
            "server_cpu_s": self.server.cpu_seconds() - self.server_cpu if self.server else 0.0,
        }


def measure_server(start: Callable[[Path], Server], until_durable: bool):
    """Producers against a server process; with ``until_durable`` the clock stops when `flush` returns."""

    def measure(work: Workload, producers: int, datasets: int, tmp: Path) -> dict[str, float]:
        server = start(tmp)
        try:
            clock = Clock(server)
            run_producers(server.location, work, producers, datasets)
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
NATS_SCENARIOS = [(8192, 1, 1), (8192, 4, 4)]  # (batch rows, producers, datasets)
NATS_WRITERS = [1, 2]  # 1 ingest + K write processes


def nats(base: pa.Table) -> list[dict]:
    """The scale-out topology on this machine against the memory queue in one process: 1 ingest process
    and K write processes on one JetStream stream, until `flush` says everything is durable."""
    results = []
    for batch_rows, producers, datasets in NATS_SCENARIOS:
        contenders = {"memory": CONTENDERS["memory"]}
        for k in NATS_WRITERS:
            contenders[f"nats-{k}w"] = measure_server(lambda tmp, k=k: NatsTopology(tmp, k), until_durable=True)
        row = compare(Workload(base, batch_rows), producers, datasets, contenders)
        for k in NATS_WRITERS:
            row[f"nats_{k}w_vs_memory"] = round(row["memory"]["seconds"] / row[f"nats-{k}w"]["seconds"], 2)
        results.append(row)
    return results


SCENARIOS = [  # (batch rows, producers, datasets)
    (100, 1, 1),
    (8192, 1, 1),
    (65536, 1, 1),
    (8192, 4, 4),
    (65536, 4, 4),
    (8192, 4, 1),
]


def compare(
    work: Workload, producers: int, datasets: int, contenders: dict[str, Callable], repeat: int = REPEAT
) -> dict:
    """Each contender ``repeat`` times, taking turns (so a slow minute of the machine hits them all): medians,
    ranges, rows/s and CPU seconds per contender."""
    row: dict = {
        "batch_rows": work.batches[0].num_rows,
        "producers": producers,
        "datasets": datasets,
        "mb": round(work.nbytes / 1e6, 1),
        "rows": work.rows,
    }
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in contenders}
    for _ in range(repeat):
        for name, measure in contenders.items():
            with tempfile.TemporaryDirectory(dir=REPO / "bench") as tmp:
                runs[name].append(measure(work, producers, datasets, Path(tmp)))
    for name, measured in runs.items():
        seconds = sorted(m["seconds"] for m in measured)
        median = statistics.median(seconds)
        row[name] = {
            "seconds": round(median, 3),
            "mb_s": round(work.nbytes / 1e6 / median, 1),
            "rows_s": round(work.rows / median),
            "mb_s_range": [round(work.nbytes / 1e6 / seconds[-1], 1), round(work.nbytes / 1e6 / seconds[0], 1)],
            "client_cpu_s": round(statistics.median(m["client_cpu_s"] for m in measured), 2),
            "server_cpu_s": round(statistics.median(m["server_cpu_s"] for m in measured), 2),
        }
        low, high = row[name]["mb_s_range"]
        print(
            f"  {row['batch_rows']:>6} rows x{producers}p x{datasets}d {row['mb']:>7} MB  {name:<8} "
            f"{row[name]['mb_s']:>8.1f} MB/s  ({low}-{high})  cpu client {row[name]['client_cpu_s']} s, "
            f"server {row[name]['server_cpu_s']} s",
            flush=True,
        )
    return row


def throughput(base: pa.Table) -> list[dict]:
    results = []
    for batch_rows, producers, datasets in SCENARIOS:
        row = compare(Workload(base, batch_rows), producers, datasets, CONTENDERS)
        row["memory_vs_direct"] = round(row["direct"]["seconds"] / row["memory"]["seconds"], 2)
        row["memory_vs_discard"] = round(row["discard"]["seconds"] / row["memory"]["seconds"], 2)
        row["memory_vs_reply"] = round(row["reply"]["seconds"] / row["memory"]["seconds"], 2)
        row["wal_vs_memory"] = round(row["memory"]["seconds"] / row["wal"]["seconds"], 2)
        results.append(row)
    return results


# -- cores, bursts, the GIL ---------------------------------------------------------------------------------
def core_counts() -> list[int]:
    """1, 2, 4, ... up to the machine's cores (and the cores themselves)."""
    cores = os.cpu_count() or 1
    counts = [1 << i for i in range(cores.bit_length()) if 1 << i <= cores]
    return counts if counts[-1] == cores else [*counts, cores]


def cores(base: pa.Table) -> list[dict]:
    """N producers into N datasets with writer.threads = N, against N direct writer threads and the
    discard server, 8,192-row batches, BYTES_PER_RUN / 2 per producer."""
    results = []
    for n in core_counts():
        contenders = {
            "discard": CONTENDERS["discard"],
            "direct": measure_direct,
            "memory": measure_server(
                lambda tmp, n=n: flight_writer_server(tmp, "memory", {"FLIGHT_WRITER_WRITER__THREADS": str(n)}),
                until_durable=True,
            ),
        }
        row = compare(Workload(base, 8192, n * BYTES_PER_RUN / 2), n, n, contenders)
        row["memory_vs_direct"] = round(row["direct"]["seconds"] / row["memory"]["seconds"], 2)
        results.append(row)
    return results


BURST_BYTES = 50e6


def burst(base: pa.Table) -> dict:
    """50 MB (less than a file) from one producer, then `flush`: how much of the encoding overlaps the
    receiving and how many threads share one file."""
    contenders = {"direct": measure_direct, "memory": CONTENDERS["memory"]}
    # a measurement takes ~0.3 s, where one hiccup of the machine shows: three times as many runs
    row = compare(Workload(base, 8192, BURST_BYTES), 1, 1, contenders, repeat=3 * REPEAT)
    row["memory_vs_direct"] = round(row["direct"]["seconds"] / row["memory"]["seconds"], 2)
    return row


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


# -- latency and memory -------------------------------------------------------------------------------------
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


# -- report -------------------------------------------------------------------------------------------------
def chart(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['batch_rows']} rows\n{r['producers']}p/{r['datasets']}d" for r in results]
    x = np.arange(len(results))
    fig, ax = plt.subplots(figsize=(11, 5.5))
    for i, name in enumerate(["direct", "memory", "wal"]):
        medians = [r[name]["mb_s"] for r in results]
        spread = np.array(
            [
                [m - r[name]["mb_s_range"][0], r[name]["mb_s_range"][1] - m]
                for m, r in zip(medians, results, strict=True)
            ]
        )
        ax.bar(x + (i - 1) * 0.27, medians, 0.27, yerr=spread.T, capsize=3, label=name)
    ax.plot(x, [r["discard"]["mb_s"] for r in results], "k_", markersize=40, mew=2, label="discard (transport limit)")
    ax.plot(x, [r["reply"]["mb_s"] for r in results], "r_", markersize=40, mew=2, label="discard + PutResult per batch")
    ax.set_xticks(x, labels)
    ax.set_ylabel("MB/s of Arrow data (median; bars: min-max)")
    ax.set_title(
        f"flight-writer vs writing Parquet directly ({os.cpu_count()} cores, BENCH_SCALE={SCALE}, {REPEAT} runs each)"
    )
    ax.legend(loc="upper center", ncol=5, bbox_to_anchor=(0.5, -0.14), fontsize="small", markerscale=0.4)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def targets(report: dict) -> list[tuple[str, str, bool]]:
    """The benchmark issue's targets, each with what this run measured."""
    by = {(r["batch_rows"], r["producers"], r["datasets"]): r for r in report.get("throughput", [])}
    rows = []
    for batch_rows in (8192, 65536):
        r = by.get((batch_rows, 1, 1))
        if r:
            rows.append(
                (
                    f"{batch_rows:,} rows, 1 producer, 1 dataset: memory >= 0.9 x direct",
                    str(r["memory_vs_direct"]),
                    r["memory_vs_direct"] >= 0.9,
                )
            )
        r4, r1 = by.get((batch_rows, 4, 4)), by.get((batch_rows, 1, 1))
        if r4 and r1:
            ratio = round(r1["direct"]["seconds"] / r4["memory"]["seconds"], 2)
            rows.append(
                (
                    f"{batch_rows:,} rows, 4 producers, 4 datasets: memory >= 1.0 x one direct writer",
                    str(ratio),
                    ratio >= 1.0,
                )
            )
    r = by.get((100, 1, 1))
    if r:
        rows.append(
            ("100-row batches: memory >= 0.5 x discard", str(r["memory_vs_discard"]), r["memory_vs_discard"] >= 0.5)
        )
    if m := report.get("memory"):
        rows.append(
            (
                f"peak RSS <= queue + 2 x file + 300 MB = {m['bound_mb']} MiB",
                f"{m['peak_rss_mb']} MiB (median)",
                m["within"],
            )
        )
    if by:
        worst = min(r["wal_vs_memory"] for r in report["throughput"])
        rows.append(("wal >= 0.85 x memory (every scenario)", f"{worst} (lowest)", worst >= 0.85))
    for r in report.get("nats", []):
        if (r["batch_rows"], r["producers"]) == (8192, 1):
            rows.append(
                (
                    "8,192 rows, 1 producer: nats (1 ingest, 1 writer) >= 0.4 x memory",
                    str(r["nats_1w_vs_memory"]),
                    r["nats_1w_vs_memory"] >= 0.4,
                )
            )
    if "burst" in report:
        b = report["burst"]
        rows.append(
            (
                f"{b['mb']:.0f} MB burst then flush: memory >= 0.8 x direct",
                str(b["memory_vs_direct"]),
                b["memory_vs_direct"] >= 0.8,
            )
        )
    by_n = {r["producers"]: r for r in report.get("cores", [])}
    if 16 in by_n:  # the cores issue's targets, for a machine with 16 cores or more
        rows.append(
            (
                "16 producers, 16 datasets, writer.threads = 16: memory >= 0.85 x 16 direct threads",
                str(by_n[16]["memory_vs_direct"]),
                by_n[16]["memory_vs_direct"] >= 0.85,
            )
        )
        rows.append(
            (
                "1 producer, writer.threads = 1 (16 cores): memory >= 0.9 x direct",
                str(by_n[1]["memory_vs_direct"]),
                by_n[1]["memory_vs_direct"] >= 0.9,
            )
        )
    g = report.get("gil", {})
    if g.get("available"):
        rows.append(
            (
                "8,192 rows, 1 producer: GIL held <= 15% of wall time",
                f"{100 * g['gil_share']:.1f}% ({g['gil_s_per_gb']} s per GB)",
                g["gil_share"] <= 0.15,
            )
        )
    return rows


def print_tables(report: dict) -> None:
    """The Markdown tables of BENCHMARKS.md (``python bench/run.py --tables`` prints them again): throughput,
    CPU seconds per GiB sent (client + server), the targets."""
    print(
        "\n| batch rows | producers | datasets | discard MB/s | reply MB/s | direct MB/s | memory MB/s | wal MB/s | "
        "memory rows/s | memory/direct | memory/discard | memory/reply | wal/memory |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in report.get("throughput", []):
        print(
            f"| {r['batch_rows']} | {r['producers']} | {r['datasets']} | {r['discard']['mb_s']} | "
            f"{r['reply']['mb_s']} | {r['direct']['mb_s']} | {r['memory']['mb_s']} | {r['wal']['mb_s']} | "
            f"{r['memory']['rows_s']:,} | {r['memory_vs_direct']} | {r['memory_vs_discard']} | "
            f"{r['memory_vs_reply']} | {r['wal_vs_memory']} |"
        )
    print("\n| batch rows, producers/datasets | discard | reply | direct | memory | wal |\n|---|---|---|---|---|---|")
    for r in report.get("throughput", []):
        gib = r["mb"] * 1e6 / (1 << 30)
        cells = [
            f"{r[n]['client_cpu_s'] / gib:.1f} + {r[n]['server_cpu_s'] / gib:.1f}"
            if n != "direct"
            else f"{r[n]['client_cpu_s'] / gib:.1f}"
            for n in CONTENDERS
        ]
        print(f"| {r['batch_rows']}, {r['producers']}/{r['datasets']} | {' | '.join(cells)} |")
    if report.get("cores"):
        print(
            "\n| producers = datasets = writer.threads | discard MB/s | direct MB/s (that many threads) | memory MB/s "
            "| memory/direct |\n|---|---|---|---|---|"
        )
        for r in report["cores"]:
            print(
                f"| {r['producers']} | {r['discard']['mb_s']} | {r['direct']['mb_s']} | {r['memory']['mb_s']} | "
                f"{r['memory_vs_direct']} |"
            )
    if "burst" in report:
        b = report["burst"]
        print(
            f"\nBurst of {b['mb']} MB then flush: direct {b['direct']['mb_s']} MB/s, memory {b['memory']['mb_s']} "
            f"MB/s ({b['memory_vs_direct']} x direct)."
        )
    g = report.get("gil", {})
    if g.get("available"):
        print(
            f"\nGIL (py-spy --gil, 8,192 rows, 1 producer, {g['mb_s']} MB/s): held {100 * g['gil_share']:.1f}% of "
            f"wall time, {g['gil_s_per_gb']} s per GB. Held most by:"
        )
        for name, share in g["top"]:
            print(f"- {100 * share:.0f}% {name}")
    print("\n| target | measured | |\n|---|---|---|")
    for t in report["targets"]:
        print(f"| {t['target']} | {t['measured']} | {'met' if t['met'] else 'missed'} |")


def main() -> None:
    started = time.perf_counter()
    print(
        f"BENCH_SCALE={SCALE}: {BYTES_PER_RUN / MiB:.0f} MiB of Arrow data per measurement, {REPEAT} runs each",
        flush=True,
    )
    base = make_spans(262_144)
    print(f"spans: {base.num_rows} rows, {base.nbytes / MiB:.1f} MiB ({base.nbytes / base.num_rows:.0f} B/row)")
    report = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "pyarrow": pa.__version__,
            "platform": platform.platform(),
        },
        "scale": SCALE,
        "repeat": REPEAT,
        "bytes_per_run": BYTES_PER_RUN,
    }
    parts = {
        "throughput": throughput,
        "cores": cores,
        "burst": burst,
        "nats": nats,
        "gil": gil_share,
        "latency": latency,
        "memory": peak_memory,
    }
    only = [p for p in os.environ.get("BENCH_ONLY", "").split(",") if p]
    for name, measure in parts.items():
        if not only or name in only:
            report[name] = measure(base)
    report["targets"] = [{"target": t, "measured": v, "met": ok} for t, v, ok in targets(report)]
    report["seconds"] = round(time.perf_counter() - started)
    if only:  # a partial run does not replace the full one
        (HERE / "results-partial.json").write_text(json.dumps(report, indent=2))
        print_tables(report)
        return
    (HERE / "results.json").write_text(json.dumps(report, indent=2))
    chart(report["throughput"], HERE / "results.png")
    print_tables(report)
    print(f"\nwrote bench/results.json and bench/results.png in {report['seconds']} s")


if __name__ == "__main__":
    if sys.argv[1:] == ["--tables"]:
        print_tables(json.loads((HERE / "results.json").read_text()))
    else:
        main()
