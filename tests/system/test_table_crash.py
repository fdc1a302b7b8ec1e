"""kill -9 around a table commit, again and again: every row acknowledged durable ends up in the lake table
exactly once, whichever side of the commit the process died on.

Two points, ``ITERATIONS`` times each (20 unless CRASH_TABLE_ITERATIONS says otherwise), alternating, on one
server process after another over the same storage root:

- ``before_commit``: the batch is durable (the writer sealed its file by size and the ack says ``durable``)
  and no commit has started (the commit interval is an hour away, no flush asked for one): the next start
  finds the file in no table and adopts it.
- ``after_commit``: a smaller batch (no file by size) is sent with the ack header ``durable``: its flush
  writes the file, the durable answer comes, and the flush starts the commit at once; the process is killed
  as soon as the table shows the new version (Delta: the next log entry exists; Iceberg: the catalog's
  metadata pointer moved), before or just after the process confirmed the commit (an ``ack`` waiting
  ``until: committed`` in a thread says which): the next start must not commit the file again.

A process cannot be stopped at a line from outside, so the kill follows a real condition (the durable ack, the
table's version) by however long the poll takes. Each start adopts before it serves: once it listens, the
table must hold every durable row once (a count by id, and no data file listed twice).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.flight as flight
import pytest

from helpers import action, put, read_lake_table, table_server_config

ITERATIONS = int(os.environ.get("CRASH_TABLE_ITERATIONS", "20"))
ROWS = 50
DATASET = "crash/spans"


def batch_for(k: int, rows: int = ROWS) -> pa.RecordBatch:
    """Batch ``k``: ids from ``k*ROWS``, one service (one partition: one file)."""
    return pa.record_batch(
        {
            "id": pa.array(range(k * ROWS, k * ROWS + rows), pa.int64()),
            "service": pa.array([("api", "db", "web")[k % 3]] * rows),
        }
    )


class Version:
    """The table's current version as its metadata says it, read without the table libraries (fast enough to
    poll): Delta's latest log entry, Iceberg's metadata pointer in the SQLite catalog."""

    def __init__(self, root: Path, fmt: str) -> None:
        self.fmt = fmt
        self.log = root / DATASET / "_delta_log"
        self.catalog = root / "_catalog.db"

    def __call__(self) -> Any:
        if self.fmt == "delta":
            versions = [int(p.stem) for p in self.log.glob("*.json")] if self.log.exists() else []
            return max(versions, default=None)
        if not self.catalog.exists():
            return None
        with sqlite3.connect(f"file:{self.catalog}?mode=ro", uri=True, timeout=30) as db:
            try:
                row = db.execute(
                    "SELECT metadata_location FROM iceberg_tables WHERE table_name = ?", (DATASET.split("/")[-1],)
                ).fetchone()
            except sqlite3.OperationalError:  # the catalog's tables are not made yet
                return None
            return row[0] if row else None

    def wait_past(self, old: Any, timeout: float = 60) -> None:
        """Poll until the version differs from ``old``: the commit landed (the bound is on a failure)."""
        deadline = time.monotonic() + timeout
        while self() == old:
            if time.monotonic() > deadline:
                raise AssertionError(f"no new table version in {timeout} s")
            time.sleep(0.001)


def check_table(root: Path, fmt: str, acked: set[int]) -> int:
    """Every acknowledged row once; nothing else but rows sent; no file listed twice. Returns the rows."""
    table, files = read_lake_table(root, fmt, DATASET)
    assert len(files) == len(set(files)), "a data file listed twice in the table"
    ids = Counter(table.column("id").to_pylist()) if table.num_rows else Counter()
    twice = sorted(i for i, n in ids.items() if n > 1)
    assert twice == [], f"rows in the table twice: {twice[:10]}"
    missing = sorted(acked - set(ids))
    assert missing == [], f"durable rows missing from the table: {missing[:10]}"
    return table.num_rows


def durable_unflushed(client: flight.FlightClient, k: int) -> list[int]:
    """Batch ``k`` sent and made durable without a flush (the writer seals a file of ``max_file_rows`` by
    itself), so no commit starts; the ids acknowledged."""
    b = batch_for(k)
    [reply] = put(client, DATASET, [b])
    acks = action(client, "ack", {"seq": reply["seq"], "wait_ms": 60_000})["acks"]
    assert acks[0]["state"] == "durable", acks
    return b.column("id").to_pylist()


def durable_flushed(client: flight.FlightClient, k: int) -> tuple[list[int], int]:
    """Half a batch ``k`` sent with the ack header ``durable``: its flush writes the file and starts the
    commit; the ids acknowledged and the seq."""
    b = batch_for(k, ROWS // 2)
    replies = put(client, DATASET, [b], ack="durable")
    assert replies[-1]["state"] == "durable", replies
    return b.column("id").to_pylist(), replies[0]["seq"]


@pytest.mark.parametrize("fmt", ["iceberg", "delta"])
def test_kill_around_the_commit_every_durable_row_once(tmp_path: Path, fmt: str, server_process) -> None:
    root = tmp_path / "data"
    config = table_server_config(tmp_path, root, fmt, ROWS, adopt_interval=3600)
    version = Version(root, fmt)
    acked: set[int] = set()
    k = 0
    answered_first = 0  # after_commit kills that came after the process confirmed the commit
    starts: list[float] = []
    began = time.monotonic()
    for n in range(2 * ITERATIONS):
        point = ("before_commit", "after_commit")[n % 2]
        t0 = time.monotonic()
        server = server_process(config)
        starts.append(time.monotonic() - t0)
        check_table(root, fmt, acked)  # what the start adopted: every durable row once
        # the point was the one meant: the file the last process stored, committed or not
        adopted = [line for line in server.lines if "uncommitted files into table" in line]
        if n > 0:
            assert len(adopted) == (1 if point == "after_commit" else 0), (point, adopted)
        with flight.connect(server.location) as client:
            if point == "before_commit":
                acked.update(durable_unflushed(client, k))
            else:
                before = version()
                ids, seq = durable_flushed(client, k)
                acked.update(ids)
                answers: list[Any] = []

                def confirmed(location: str = server.location, seq: int = seq, answers: list[Any] = answers) -> None:
                    try:
                        with flight.connect(location) as c:
                            body = {"seq": seq, "until": "committed", "wait_ms": 60_000}
                            answers.append(action(c, "ack", body)["acks"][0]["state"])
                    except (flight.FlightError, OSError) as exc:
                        answers.append(exc)

                waiter = threading.Thread(target=confirmed)
                waiter.start()
                version.wait_past(before)
            k += 1
        server.proc.kill()
        server.proc.wait()
        if point == "after_commit":
            waiter.join(60)
            answered_first += answers == ["committed"]
        server.close()
        (tmp_path / f"round{n:02d}-{point}.log").write_text(server.log)  # for a post-mortem
    server = server_process(config)
    rows = check_table(root, fmt, acked)
    assert not [line for line in server.lines if "uncommitted files into table" in line]
    server.proc.terminate()
    assert server.proc.wait(60) == 0
    assert check_table(root, fmt, acked) == rows == len(acked)
    elapsed = time.monotonic() - began
    print(
        json.dumps(
            {
                "format": fmt,
                "iterations_per_point": ITERATIONS,
                "seconds": round(elapsed, 1),
                "seconds_per_iteration": round(elapsed / (2 * ITERATIONS + 1), 2),
                "start_s_median": round(sorted(starts)[len(starts) // 2], 2),
                "after_commit_kills_after_the_confirmation": answered_first,
            }
        )
    )
