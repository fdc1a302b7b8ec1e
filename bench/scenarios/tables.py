"""The tables part: what committing the stored files to lake tables (``datasets.table``) costs, for Iceberg
(SQLite catalog, the default for ``storage.type = fs``) and Delta:

  ingest        plain files against table mode on the same data: the same server settings but
                ``datasets.table``, the same producers and batches (compare: taking turns, BENCH_REPEAT
                times). Before the clock, one small batch per dataset flushed until committed (the tables
                made, the libraries loaded, as in a server that has run a while); the clock stops when
                ``flush`` with ``"until": "committed"`` returns, so the last commits count. MB/s, server
                CPU-s per GiB, table/plain, and the last flush's seconds (where the commits show)
  lag           a steady load (one 8,192-row batch every 50 ms, LAG_BATCHES) with ``tables.commit_interval
                = 2`` and ``writer.flush_interval = 0.5``: per batch, from its durable ack to its committed
                ack (``ack`` with ``wait_ms``, ``until`` durable then committed, seen by the client),
                p50/p99; the server's own stored -> committed ``lag_s_p99`` (status) beside it
  commit        the table seam called directly (``make_tables``, ``Table.append``): commit latency with
                1, 10 and 100 real small Parquet files per commit, on a table with a history (KEEP one-file
                commits first, and ``maintain(KEEP)`` before each size, as a live table has)
  over_time     N one-file commits (10,000 x BENCH_SCALE, at least 200; BENCH_TABLE_COMMITS sets N) with
                ``Table.maintain(keep=100)`` after every 100th, as the committer does with
                ``tables.maintain_every = 100``: the p50 of commits 1-100 against the last 100, commits/s

A commit is timed as the committer times it (``commit_s`` in status): plan (the paths the table holds,
``Table.paths``) and ``Table.append``; maintenance is timed apart and counted in commits/s. The results go
into results.json under "tables" (merged: the other parts' results stay), as well as where the run writes
its own (results-partial.json for BENCH_ONLY); the code measured and the machine's load average at the
start and the end are recorded with them: on a busy machine the numbers are rough.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.flight as flight
import pyarrow.parquet as pq

from bench import HERE, REPO
from bench.compare import compare
from bench.contenders import Clock, flight_writer_server, run_producers
from bench.workload import REPEAT, SCALE, Workload

FORMATS = ("iceberg", "delta")
INGEST_SCENARIOS = [(8192, 1, 1), (8192, 4, 4)]  # (batch rows, producers, datasets), as in the throughput part
INGEST_TARGET = 0.95  # table / plain throughput

LAG_COMMIT_INTERVAL = 2.0  # tables.commit_interval in the lag measurement
LAG_FLUSH_INTERVAL = 0.5  # writer.flush_interval there: ~4 files per commit
LAG_BATCHES = 400  # one every 50 ms: 20 s, ~10 commits per format
LAG_SLACK = 2.0  # target: p99 <= commit_interval + this

COMMIT_SIZES = {1: 30, 10: 30, 100: 10}  # files per commit: commits measured
FILE_ROWS = 1000  # rows of one small file (~50 KB of Parquet)
SOURCE_FILES = 8  # distinct files written; every other path is a hard link to one of them
OVER_TIME_COMMITS = int(os.environ.get("BENCH_TABLE_COMMITS", max(200, int(10_000 * SCALE))))
MAINTAIN_EVERY, KEEP = 100, 20  # tables.maintain_every, tables.keep_snapshots (the defaults)
OVER_TIME_RATIO = 2.0  # target: p50 of the last 100 commits <= this x the p50 of the first 100
COMMITS_PER_S = {"iceberg": 5.0, "delta": 20.0}  # targets

TABLE_ENV = "FLIGHT_WRITER_DATASETS__TABLE"


def tables(base: pa.Table) -> dict:
    """Every measurement of the part for both formats; merged into results.json under "tables"."""
    missing = [m for m in ("pyiceberg", "deltalake", "sqlalchemy") if not _importable(m)]
    if missing:
        print(f"  tables: {', '.join(missing)} not installed (pip install 'flight-writer[tables]')")
        return {"available": False}
    started = time.perf_counter()
    result: dict[str, Any] = {
        "available": True,
        "scale": SCALE,
        "repeat": REPEAT,
        "code": _code_version(),
        "cpus": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    result["ingest"] = [_ingest(base, *s) for s in INGEST_SCENARIOS]
    result["lag"] = [_lag(base, fmt) for fmt in FORMATS]
    result["commit"] = [_commit_latency(base, fmt) for fmt in FORMATS]
    result["over_time"] = [_over_time(base, fmt) for fmt in FORMATS]
    result["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result["seconds"] = round(time.perf_counter() - started)
    result["targets"] = [{"target": t, "measured": v, "met": ok} for t, v, ok in targets(result)]
    print_summary(result)
    _merge(result)
    return result


# -- 1. ingest: table mode against plain files ---------------------------------------------------------------
def _ingest(base: pa.Table, batch_rows: int, producers: int, datasets: int) -> dict:
    """plain, iceberg and delta taking turns (compare), BENCH_REPEAT times each; each run's table stats from
    status after the clock stopped."""
    stats: dict[str, list[dict]] = {"plain": [], **{fmt: [] for fmt in FORMATS}}
    contenders = {name: _measure_ingest(name, stats[name]) for name in stats}
    work = Workload(base, batch_rows)
    row = compare(work, producers, datasets, contenders)
    gib = work.nbytes / (1 << 30)
    for name, runs in stats.items():
        row[name]["server_cpu_s_per_gib"] = round(row[name]["server_cpu_s"] / gib, 2)
        row[name]["warmup_s"] = round(statistics.median(r["warmup_s"] for r in runs), 3)
        row[name]["flush_s"] = round(statistics.median(r["flush_s"] for r in runs), 3)
        if name != "plain":
            row[name]["commits"] = statistics.median(r["commits"] for r in runs)
            row[name]["files_committed"] = statistics.median(r["files"] for r in runs)
            row[f"{name}_vs_plain"] = round(row["plain"]["seconds"] / row[name]["seconds"], 3)
    return row


def _measure_ingest(table: str, runs: list[dict]):
    """A flight-writer server (memory queue, the bench's settings) with ``datasets.table = table``. Before the
    clock: one small batch per dataset, flushed until committed, so that the tables exist and the libraries
    are loaded (what a server that has run a while has done); the clock then runs from the first batch to
    the return of ``flush`` with ``"until": "committed"``."""

    def measure(work: Workload, producers: int, datasets: int, tmp: Path) -> dict[str, float]:
        server = flight_writer_server(tmp, "memory", {TABLE_ENV: "none" if table == "plain" else table})
        try:
            warm = time.perf_counter()
            for d in range(datasets):
                _put(server.location, f"ds{d}", [work.batches[0].slice(0, 100)])
            _flush_committed(server.location)
            warmup_s = time.perf_counter() - warm
            clock = Clock(server)
            run_producers(server.location, work, producers, datasets)
            flushed = time.perf_counter()
            reply = _flush_committed(server.location)
            measured = clock.stop()
            flush_s = time.perf_counter() - flushed
            status = _status(server.location)
        finally:
            server.stop()
        if reply["committed_through"] < status["received_seq"]:
            raise RuntimeError(f"{table}: flush until committed returned before every seq was committed: {reply}")
        found = status["tables"]
        incomplete = len(found) != datasets or any(t["pending_files"] or t["errors"] for t in found.values())
        if table != "plain" and incomplete:
            raise RuntimeError(f"{table}: not every file committed, or errors: {found}")
        warm_commits = datasets  # the warm-up's one commit per table
        runs.append(
            {
                "warmup_s": warmup_s,
                "flush_s": flush_s,  # the last flush: durable, and for a table the commits it waits for
                "commits": sum(t["commits"] for t in found.values()) - warm_commits,
                "files": sum(t["files_committed"] for t in found.values()) - warm_commits,
            }
        )
        return measured

    return measure


# -- 2. durable -> committed lag ------------------------------------------------------------------------------
def _lag(base: pa.Table, fmt: str) -> dict:
    """One 8,192-row batch every 50 ms, LAG_BATCHES of them, commit_interval = LAG_COMMIT_INTERVAL; a thread
    per batch asks ``ack`` to wait until it is durable, then until it is committed."""
    batches = base.combine_chunks().to_batches(max_chunksize=8192)
    env = {
        TABLE_ENV: fmt,
        "FLIGHT_WRITER_TABLES__COMMIT_INTERVAL": str(LAG_COMMIT_INTERVAL),
        "FLIGHT_WRITER_WRITER__FLUSH_INTERVAL": str(LAG_FLUSH_INTERVAL),
    }
    times: list[tuple[float, float]] = []  # (sent -> durable, sent -> committed) per batch
    lock = threading.Lock()
    with tempfile.TemporaryDirectory(dir=REPO / "bench") as tmp:
        server = flight_writer_server(Path(tmp), "memory", env)
        try:
            _put(server.location, "lag", [batches[0].slice(0, 100)])  # the table made, the libraries loaded
            _flush_committed(server.location)
            with flight.connect(server.location) as client:
                writer, reader = client.do_put(flight.FlightDescriptor.for_path("lag"), batches[0].schema)
                waiters = []
                for i in range(LAG_BATCHES):
                    sent = time.perf_counter()
                    writer.write_batch(batches[i % len(batches)])
                    seq = json.loads(reader.read().to_pybytes())["seq"]
                    waiters.append(
                        threading.Thread(target=_wait_committed, args=(server.location, seq, sent, times, lock))
                    )
                    waiters[-1].start()
                    time.sleep(0.05)
                writer.done_writing()
                writer.close()
                for t in waiters:
                    t.join()
            table = _status(server.location)["tables"]["lag"]
        finally:
            server.stop()
    durable = sorted(d for d, _ in times)
    committed = sorted(c for _, c in times)
    lags = sorted(c - d for d, c in times)
    result = {
        "format": fmt,
        "commit_interval": LAG_COMMIT_INTERVAL,
        "flush_interval": LAG_FLUSH_INTERVAL,
        "batches": len(times),
        "durable_ms_p50": round(1000 * _q(durable, 0.5), 1),
        "durable_ms_p99": round(1000 * _q(durable, 0.99), 1),
        "committed_ms_p50": round(1000 * _q(committed, 0.5), 1),
        "committed_ms_p99": round(1000 * _q(committed, 0.99), 1),
        "lag_s_p50": round(_q(lags, 0.5), 3),
        "lag_s_p99": round(_q(lags, 0.99), 3),
        "lag_s_max": round(lags[-1], 3),
        "server_lag_s_p99": table["lag_s_p99"],  # stored -> committed per file, the server's clock
        "commits": table["commits"] - 1,
        "files_committed": table["files_committed"] - 1,
        "server_commit_s_p50": table["commit_s_p50"],  # the warm-up's commit (the table made) among them
        "server_commit_s_p99": table["commit_s_p99"],
        "errors": table["errors"],
        "conflicts": table["conflicts"],
    }
    print(
        f"  tables lag {fmt}: durable -> committed p50 {result['lag_s_p50']} s, p99 {result['lag_s_p99']} s "
        f"(commit_interval {LAG_COMMIT_INTERVAL} s; server's stored -> committed p99 {result['server_lag_s_p99']} "
        f"s; {result['commits']} commits of {result['files_committed']} files)",
        flush=True,
    )
    return result


def _wait_committed(location: str, seq: int, sent: float, times: list, lock: threading.Lock) -> None:
    with flight.connect(location) as client:
        _ack(client, seq, "durable")
        durable = time.perf_counter() - sent
        _ack(client, seq, "committed")
        committed = time.perf_counter() - sent
    with lock:
        times.append((durable, committed))


def _ack(client: flight.FlightClient, seq: int, until: str) -> None:
    body = json.dumps({"seq": seq, "wait_ms": 120_000, "until": until}).encode()
    (state,) = _answer(client, "ack", body)["acks"]
    if state["state"] != until:
        raise RuntimeError(f"seq {seq}: {state} after waiting until {until}")


# -- 3. commit latency by files per commit ----------------------------------------------------------------
def _commit_latency(base: pa.Table, fmt: str) -> dict:
    """COMMIT_SIZES: for each number of files per commit, that many commits to one table that has a history:
    KEEP one-file commits made first (not timed), and ``maintain(KEEP)`` before each size, so that every size
    starts from the KEEP snapshots a live table holds (Iceberg's commit time grows with the snapshots kept)."""
    result: dict[str, Any] = {"format": fmt, "history_commits": KEEP, "by_files": []}
    with tempfile.TemporaryDirectory(dir=REPO / "bench") as tmp:
        files = _SmallFiles(base, Path(tmp))
        made = _make_tables(fmt, Path(tmp))
        try:
            dataset = "commit"
            table = _warm_table(made, files, dataset)
            for _ in range(KEEP):
                _timed_commit(table, files.take(dataset, 1))
            for per_commit, commits in COMMIT_SIZES.items():
                table.maintain(KEEP)
                files.prepare(dataset, per_commit * commits)  # the links made before the clock
                seconds = [_timed_commit(table, files.take(dataset, per_commit)) for _ in range(commits)]
                seconds.sort()
                row = {
                    "files_per_commit": per_commit,
                    "commits": commits,
                    "ms_p50": round(1000 * _q(seconds, 0.5), 1),
                    "ms_p99": round(1000 * _q(seconds, 0.99), 1),
                    "ms_max": round(1000 * seconds[-1], 1),
                }
                result["by_files"].append(row)
                print(
                    f"  tables commit {fmt}: {per_commit:>3} files per commit, {commits} commits: "
                    f"p50 {row['ms_p50']} ms, p99 {row['ms_p99']} ms",
                    flush=True,
                )
        finally:
            made.close()
    return result


# -- 4. commits over time, with maintenance --------------------------------------------------------------
def _over_time(base: pa.Table, fmt: str) -> dict:
    """OVER_TIME_COMMITS one-file commits to one table, ``maintain(KEEP)`` after every MAINTAIN_EVERY (the
    committer's order: commit, then maintain when its count is a multiple)."""
    with tempfile.TemporaryDirectory(dir=REPO / "bench") as tmp:
        files = _SmallFiles(base, Path(tmp))
        made = _make_tables(fmt, Path(tmp))
        try:
            dataset = "overtime"
            table = _warm_table(made, files, dataset)
            files.prepare(dataset, OVER_TIME_COMMITS)  # the links made before the clock
            seconds: list[float] = []
            maintain: list[float] = []
            started = time.perf_counter()
            for n in range(1, OVER_TIME_COMMITS + 1):
                seconds.append(_timed_commit(table, files.take(dataset, 1)))
                if n % MAINTAIN_EVERY == 0:
                    t = time.perf_counter()
                    table.maintain(KEEP)
                    maintain.append(time.perf_counter() - t)
                if n % 1000 == 0:
                    print(f"  tables over time {fmt}: {n} commits, {time.perf_counter() - started:.0f} s", flush=True)
            total = time.perf_counter() - started
            metadata = _metadata_files(Path(tmp) / "data" / dataset, fmt)
            held = len(table.paths())
        finally:
            made.close()
    first, last = sorted(seconds[:100]), sorted(seconds[-100:])
    # "at commit 100": commits 101-200, the first hundred made on a table that already has a history
    at_100 = sorted(seconds[100:200]) or first
    result = {
        "format": fmt,
        "commits": len(seconds),
        "maintain_every": MAINTAIN_EVERY,
        "keep": KEEP,
        "first_100_ms_p50": round(1000 * _q(first, 0.5), 1),
        "last_100_ms_p50": round(1000 * _q(last, 0.5), 1),
        "last_vs_first": round(_q(last, 0.5) / _q(first, 0.5), 2),
        "at_100_ms_p50": round(1000 * _q(at_100, 0.5), 1),
        "last_vs_100": round(_q(last, 0.5) / _q(at_100, 0.5), 2),
        "ms_p99": round(1000 * _q(sorted(seconds), 0.99), 1),
        "ms_max": round(1000 * max(seconds), 1),
        "maintain_ms_p50": round(1000 * statistics.median(maintain), 1) if maintain else None,
        "maintain_ms_max": round(1000 * max(maintain), 1) if maintain else None,
        "seconds": round(total, 1),
        "commits_per_s": round(len(seconds) / total, 1),
        "p50_ms_by_hundred": [
            round(1000 * statistics.median(seconds[i : i + 100]), 1) for i in range(0, len(seconds), 100)
        ],
        "metadata_files": metadata,  # in _iceberg/ or _delta_log/ at the end
        "files_in_table": held,
    }
    print(
        f"  tables over time {fmt}: {result['commits']} commits in {result['seconds']} s "
        f"({result['commits_per_s']}/s); p50 first 100 {result['first_100_ms_p50']} ms, 101-200 "
        f"{result['at_100_ms_p50']} ms, last 100 "
        f"{result['last_100_ms_p50']} ms ({result['last_vs_100']} x 101-200); "
        f"maintain p50 {result['maintain_ms_p50']} ms; "
        f"{metadata} metadata files",
        flush=True,
    )
    return result


# -- the table seam's helpers ------------------------------------------------------------------------------
class _SmallFiles:
    """Small Parquet files as the writer stores spans (stored types, zstd) in one hour's partition folder of a
    dataset: SOURCE_FILES distinct files written once, every path handed out a hard link to one of them (a
    real file with a real footer, for the price of a link)."""

    FOLDERS = "date=2026-12-01/hour=12"

    def __init__(self, base: pa.Table, root: Path) -> None:
        from flight_writer.config import DatasetSettings
        from flight_writer.lake.layout import Shape, partition_values

        self.data = root / "data"
        source = root / "source"
        source.mkdir()
        shape = Shape.of(base.schema, DatasetSettings())
        self.sources: list[tuple[Path, int, pq.FileMetaData]] = []
        for i in range(SOURCE_FILES):
            path = source / f"{i}.parquet"
            pq.write_table(shape.apply(base.slice(i * FILE_ROWS, FILE_ROWS)), path, compression="zstd")
            self.sources.append((path, path.stat().st_size, pq.read_metadata(path)))
        self.schema = self.sources[0][2].schema.to_arrow_schema()
        self.partition = partition_values(self.FOLDERS)
        self.made: dict[str, int] = {}  # links made, per dataset
        self.used: dict[str, int] = {}  # paths handed out, per dataset

    def prepare(self, dataset: str, count: int) -> None:
        """Make the next ``count`` links of the dataset now (not while a clock runs)."""
        folder = self.data / dataset / self.FOLDERS
        folder.mkdir(parents=True, exist_ok=True)
        start = self.made.get(dataset, 0)
        for k in range(start, self.used.get(dataset, 0) + count):
            os.link(self.sources[k % SOURCE_FILES][0], folder / self._name(k))
            self.made[dataset] = k + 1

    def take(self, dataset: str, count: int) -> list:
        from flight_writer.lake.tables import DataFile

        self.prepare(dataset, count)
        start = self.used.get(dataset, 0)
        self.used[dataset] = start + count
        found = []
        for k in range(start, start + count):
            _, size, footer = self.sources[k % SOURCE_FILES]
            path = f"{self.FOLDERS}/{self._name(k)}"
            found.append(DataFile(path, size, footer.num_rows, self.schema, dict(self.partition), footer))
        return found

    @staticmethod
    def _name(k: int) -> str:
        return f"part-{k:08d}-bench.parquet"


def _make_tables(fmt: str, root: Path) -> Any:
    from flight_writer.config import DatasetSettings, StorageSettings, TableSettings
    from flight_writer.lake.tables import make_tables

    storage = StorageSettings(type="fs", root=str(root / "data"))
    (root / "data").mkdir(exist_ok=True)
    return make_tables(TableSettings(), DatasetSettings(table=fmt), storage)[fmt]


def _warm_table(made: Any, files: _SmallFiles, dataset: str) -> Any:
    """The dataset's table, made and given one commit (not timed: the first loads what the library loads)."""
    table = made.open(dataset, files.schema)
    _timed_commit(table, files.take(dataset, 1))
    return table


def _timed_commit(table: Any, batch: list) -> float:
    """One commit as the committer makes it: the plan (files the table does not hold yet), then append."""
    started = time.perf_counter()
    known = table.paths()
    plan = [f for f in batch if f.path not in known]
    table.append(plan)
    return time.perf_counter() - started


def _metadata_files(folder: Path, fmt: str) -> int:
    meta = folder / ("_iceberg" if fmt == "iceberg" else "_delta_log")
    return sum(1 for p in meta.rglob("*") if p.is_file()) if meta.exists() else 0


# -- Flight calls ---------------------------------------------------------------------------------------------
def _put(location: str, dataset: str, batches: list[pa.RecordBatch]) -> None:
    with flight.connect(location) as client:
        writer, reader = client.do_put(flight.FlightDescriptor.for_path(dataset), batches[0].schema)
        for batch in batches:
            writer.write_batch(batch)
            reader.read()
        writer.done_writing()
        writer.close()


def _flush_committed(location: str) -> dict:
    with flight.connect(location) as client:
        return _answer(client, "flush", json.dumps({"until": "committed"}).encode())


def _status(location: str) -> dict:
    with flight.connect(location) as client:
        return _answer(client, "status", b"")


def _answer(client: flight.FlightClient, action: str, body: bytes) -> dict:
    (result,) = client.do_action(flight.Action(action, body))
    return json.loads(result.body.to_pybytes())


# -- the report -------------------------------------------------------------------------------------------
def targets(result: dict) -> list[tuple[str, str, bool]]:
    rows = []
    for r in result.get("ingest", []):
        for fmt in FORMATS:
            ratio = r[f"{fmt}_vs_plain"]
            rows.append(
                (
                    f"{r['batch_rows']:,} rows, {r['producers']}p/{r['datasets']}d: {fmt} >= {INGEST_TARGET} x plain",
                    str(ratio),
                    ratio >= INGEST_TARGET,
                )
            )
    for r in result.get("lag", []):
        bound = r["commit_interval"] + LAG_SLACK
        rows.append(
            (
                f"{r['format']}: durable -> committed p99 <= commit_interval + {LAG_SLACK:g} s = {bound:g} s",
                f"{r['lag_s_p99']} s",
                r["lag_s_p99"] <= bound,
            )
        )
    for r in result.get("over_time", []):
        rows.append(
            (
                f"{r['format']}: p50 of the last 100 of {r['commits']:,} commits <= {OVER_TIME_RATIO:g} x "
                "commits 101-200's",
                f"{r['last_vs_100']} x",
                r["last_vs_100"] <= OVER_TIME_RATIO,
            )
        )
        want = COMMITS_PER_S[r["format"]]
        rows.append(
            (
                f"{r['format']}: >= {want:g} one-file commits/s with maintenance",
                f"{r['commits_per_s']}/s",
                r["commits_per_s"] >= want,
            )
        )
    return rows


def print_summary(result: dict) -> None:
    print(
        f"\nLake tables (BENCH_SCALE={result['scale']}, {result['repeat']} runs each; load average "
        f"{result['load_average_at_start'][0]} at the start, {result['load_average_at_end'][0]} at the end, "
        f"{result['cpus']} CPUs)"
    )
    print(
        "\n| batch rows, producers/datasets | plain MB/s | iceberg MB/s | delta MB/s | iceberg/plain | delta/plain "
        "| server CPU-s/GiB plain, iceberg, delta | last flush s plain, iceberg, delta | commits iceberg, delta "
        "|\n|---|---|---|---|---|---|---|---|---|"
    )
    for r in result["ingest"]:
        print(
            f"| {r['batch_rows']}, {r['producers']}/{r['datasets']} | {r['plain']['mb_s']} | {r['iceberg']['mb_s']} | "
            f"{r['delta']['mb_s']} | {r['iceberg_vs_plain']} | {r['delta_vs_plain']} | "
            f"{r['plain']['server_cpu_s_per_gib']}, {r['iceberg']['server_cpu_s_per_gib']}, "
            f"{r['delta']['server_cpu_s_per_gib']} | {r['plain']['flush_s']}, {r['iceberg']['flush_s']}, "
            f"{r['delta']['flush_s']} | {r['iceberg']['commits']}, {r['delta']['commits']} |"
        )
    print(
        "\n| format | durable -> committed p50 | p99 | max | server stored -> committed p99 "
        "| sent -> committed p50, p99 | commits | server commit p50, p99 (warm-up's among them) "
        "|\n|---|---|---|---|---|---|---|---|"
    )
    for r in result["lag"]:
        print(
            f"| {r['format']} | {r['lag_s_p50']} s | {r['lag_s_p99']} s | {r['lag_s_max']} s | "
            f"{r['server_lag_s_p99']} s | "
            f"{r['committed_ms_p50']}, {r['committed_ms_p99']} ms | {r['commits']} | "
            f"{_ms(r['server_commit_s_p50'])}, {_ms(r['server_commit_s_p99'])} ms |"
        )
    print("\n| format | files per commit | commits | p50 | p99 |\n|---|---|---|---|---|")
    for r in result["commit"]:
        for b in r["by_files"]:
            print(f"| {r['format']} | {b['files_per_commit']} | {b['commits']} | {b['ms_p50']} ms | {b['ms_p99']} ms |")
    print(
        "\n| format | one-file commits | p50 first 100 | p50 101-200 | p50 last 100 | last/101-200 | p99 | "
        "maintain p50, max | commits/s | metadata files at the end |\n|---|---|---|---|---|---|---|---|---|---|"
    )
    for r in result["over_time"]:
        print(
            f"| {r['format']} | {r['commits']:,} | {r['first_100_ms_p50']} ms | {r['at_100_ms_p50']} ms | "
            f"{r['last_100_ms_p50']} ms | "
            f"{r['last_vs_100']} | {r['ms_p99']} ms | {r['maintain_ms_p50']}, {r['maintain_ms_max']} ms | "
            f"{r['commits_per_s']} | {r['metadata_files']} |"
        )
    print("\n| target | measured | |\n|---|---|---|")
    for t in result["targets"]:
        print(f"| {t['target']} | {t['measured']} | {'met' if t['met'] else 'missed'} |")
    print(f"\ntables part: {result['seconds']} s", flush=True)


def _merge(result: dict) -> None:
    """results.json with "tables" replaced, every other part's results as they were."""
    path = HERE / "results.json"
    report = json.loads(path.read_text()) if path.exists() else {}
    report["tables"] = result
    path.write_text(json.dumps(report, indent=2))
    print("merged the tables part into bench/results.json", flush=True)


# -- small things ------------------------------------------------------------------------------------------
def _q(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{1000 * seconds:.0f}"


def _importable(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def _code_version() -> str:
    """The commit measured, and whether the tree had changes beside it."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()

    try:
        rev, dirty = git("rev-parse", "--short", "HEAD"), git("status", "--porcelain", "--", "flight_writer")
    except OSError:
        return "unknown"
    return rev + (" (flight_writer/ changed)" if dirty else "")
