"""What the tests share besides fixtures: a real server in this process (``running``) or as a process
(``ServerProcess``), its settings, Flight calls (``put``, ``send``, ``action``), the suite's plain batch
(``ints``), Parquet read back from disk, and polling with a deadline. ``tests/`` is on ``sys.path`` because
``tests/conftest.py`` lives there, so every test file, in whichever folder, imports ``from helpers import ...``."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.flight as flight
import pyarrow.parquet as pq
import pytest

from flight_writer import ACK_HEADER, Service
from flight_writer.config import build_settings

REPO = Path(__file__).resolve().parent.parent


def settings_for(root: Path, **sections: dict[str, Any]):
    raw: dict[str, dict[str, Any]] = {
        "server": {"location": "grpc://127.0.0.1:0"},
        "storage": {"type": "fs", "root": str(root)},
        # long enough that only flush/size/shutdown write files, unless a test says otherwise
        "writer": {"flush_interval": 600, "retry_initial_delay": 0.05, "retry_max_delay": 0.2},
    }
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return build_settings(raw)


STOP_TIMEOUT = 60  # a test that fails while storage is blocked must not leave the stop retrying forever


@contextmanager
def running(root: Path, **sections: dict[str, Any]) -> Iterator[Service]:
    service = Service(settings_for(root, **sections)).start()
    try:
        yield service
    finally:
        service.stop(STOP_TIMEOUT)


class LogCapture:
    def __init__(self) -> None:
        self.lines: list[str] = []

    @property
    def text(self) -> str:
        return "".join(self.lines)


def put(
    client: flight.FlightClient,
    dataset: str | Sequence[str],
    batches: Sequence[pa.RecordBatch],
    ids: Sequence[str] | None = None,
    ack: str | None = None,
    schema: pa.Schema | None = None,
) -> list[dict[str, Any]]:
    """One do_put stream; returns every PutResult's JSON, in order."""
    path = dataset.split("/") if isinstance(dataset, str) else list(dataset)
    options = flight.FlightCallOptions(headers=[(ACK_HEADER.encode(), ack.encode())] if ack else [])
    schema = schema or batches[0].schema
    writer, reader = client.do_put(flight.FlightDescriptor.for_path(*path), schema, options=options)
    replies = []
    for i, batch in enumerate(batches):
        if ids is None:
            writer.write_batch(batch)
        else:
            writer.write_with_metadata(batch, pa.py_buffer(json.dumps({"id": ids[i]}).encode()))
        reply = reader.read()
        if reply is None:  # the server ended the stream: close() raises its error
            writer.close()
            raise AssertionError("the server ended the stream without an error")
        replies.append(json.loads(reply.to_pybytes()))
    writer.done_writing()
    while (buf := reader.read()) is not None:
        replies.append(json.loads(buf.to_pybytes()))
    writer.close()
    return replies


def send(
    client: flight.FlightClient,
    descriptor: flight.FlightDescriptor,
    batch: pa.RecordBatch,
    headers: list[tuple[bytes, bytes]] | None = None,
    metadata: bytes | None = None,
) -> None:
    """One batch in a stream, replies drained: for calls expected to fail (the error comes with a reply or
    at the close) or whose replies do not matter."""
    options = flight.FlightCallOptions(headers=headers or [])
    writer, reader = client.do_put(descriptor, batch.schema, options=options)
    if metadata is None:
        writer.write_batch(batch)
    else:
        writer.write_with_metadata(batch, pa.py_buffer(metadata))
    writer.done_writing()
    while reader.read() is not None:
        pass
    writer.close()


def answered_then_refused(
    client: flight.FlightClient,
    dataset: str,
    first: pa.RecordBatch,
    second: pa.RecordBatch,
    match: str,
    metadata: tuple[bytes | None, bytes | None] = (None, None),
) -> dict[str, Any]:
    """One stream: ``first`` is answered (its reply is returned), then ``second`` ends the stream with a
    ``FlightServerError`` matching ``match``."""
    writer, reader = client.do_put(flight.FlightDescriptor.for_path(*dataset.split("/")), first.schema)
    for k, (batch, meta) in enumerate(zip((first, second), metadata, strict=True)):
        if meta is None:
            writer.write_batch(batch)
        else:
            writer.write_with_metadata(batch, pa.py_buffer(meta))
        if k == 0:
            reply = json.loads(reader.read().to_pybytes())
    with pytest.raises(flight.FlightServerError, match=match):
        writer.done_writing()
        reader.read()
        writer.close()
    return reply


def ints(n: int, start: int = 0) -> pa.RecordBatch:
    """``n`` int64 values ``start, start+1, ...`` in a column ``i``: the suite's plain batch."""
    return pa.record_batch({"i": pa.array(range(start, start + n), pa.int64())})


def action(client: flight.FlightClient, name: str, body: Any = None) -> dict[str, Any]:
    raw = b"" if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
    results = list(client.do_action(flight.Action(name, raw)))
    assert len(results) == 1
    return json.loads(results[0].body.to_pybytes())


def wait_for(predicate, what: str, timeout: float = 30.0):
    """Poll server state that no action can wait on (an error appearing), with a deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def parquet_files(root: Path, dataset: str = "") -> list[Path]:
    return sorted((root / dataset).rglob("*.parquet")) if (root / dataset).exists() else []


def read_dataset(root: Path, dataset: str, sort_by: str | None = None) -> pa.Table:
    files = parquet_files(root, dataset)
    assert files, f"no Parquet files for {dataset!r} under {root}"
    table = pa.concat_tables([pq.read_table(f).replace_schema_metadata(None) for f in files])
    return table.sort_by(sort_by) if sort_by else table


def without_metadata(table: pa.Table) -> pa.Table:
    return table.replace_schema_metadata(None)


class ServerProcess:
    """``flight-writer serve`` in a subprocess; its port is read from the startup line and its stderr is
    drained by a thread (so the server never blocks on a full pipe) into ``lines``."""

    def __init__(
        self,
        config: Path | None,
        env: dict[str, str] | None = None,
        cmd: list[str] | None = None,
        ready: str = "(port ",
    ) -> None:
        self.proc = subprocess.Popen(
            cmd or [sys.executable, "-m", "flight_writer.cli", "serve", "--config", str(config)],
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
            env={**os.environ, **(env or {})},
            start_new_session=True,  # a process group of its own: tests can signal it as a supervisor does
        )
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()
        line = self.wait_for_log(ready, 60)
        found = re.search(r"\(port (\d+)\)", line)
        self.port = int(found.group(1)) if found else 0  # a write process has none
        self.location = f"grpc://127.0.0.1:{self.port}"

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self.lines.append("")  # EOF marker
            self._changed.notify_all()

    def wait_for_log(self, text: str, timeout: float = 30) -> str:
        """The first log line containing ``text``; fails if the process exits or time runs out first."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines:
                    if text in line:
                        return line
                if self.lines and self.lines[-1] == "":
                    raise AssertionError(f"server exited without logging {text!r}:\n{self.log}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"no log line with {text!r} in {timeout} s:\n{self.log}")
                self._changed.wait(remaining)

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):  # its group: make's child too, when started by make
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self._reader.join(10)
        assert self.proc.stderr is not None
        self.proc.stderr.close()


def write_config(path: Path, root: Path, extra: str = "") -> Path:
    path.write_text(f"""
[server]
location = "grpc://127.0.0.1:0"
[storage]
type = "fs"
root = "{root}"
{extra}
""")
    return path
