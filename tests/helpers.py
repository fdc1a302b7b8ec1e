"""What the tests share besides fixtures: a real server in this process (``running``) or as a process
(``ServerProcess``), its settings, Flight calls (``put``, ``send``, ``action``), the suite's plain batch
(``ints``), Parquet read back from disk, polling with a deadline, and a PostgreSQL server (``postgres_server``).
``tests/`` is on ``sys.path`` because ``tests/conftest.py`` lives there, so every test file, in whichever
folder, imports ``from helpers import ...``."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
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

from emulators import free_port

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


def take_rows(queue: Any, rows: int) -> list:
    """A queue's entries until they hold ``rows`` rows (a packed record is one entry of several batches)."""
    got: list = []
    while sum(e.batch.num_rows for e in got) < rows:
        got += queue.take(100, 30)
    return got


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
        try:
            line = self.wait_for_log(ready, 60)
        except BaseException:
            self.close()  # not handed to a fixture yet: nobody else would stop it
            raise
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


POSTGRES_USER = "flight_writer"


def table_server_config(tmp_path: Path, root: Path, fmt: str, max_file_rows: int, **tables: float) -> Path:
    """A server config whose datasets are ``fmt`` tables partitioned by ``service``: files only by size or
    flush, commits only on flush (the interval and count out of reach) unless ``tables`` says otherwise."""
    values = {"commit_interval": 3600, "commit_files": 1000, **tables}
    settings = "\n".join(f"{k} = {v}" for k, v in values.items())
    return write_config(
        tmp_path / "server.toml",
        root,
        f"""
[writer]
flush_interval = 600
max_file_rows = {max_file_rows}
[datasets]
table = "{fmt}"
fields = ["service"]
[tables]
{settings}
""",
    )


def postgres_binaries() -> tuple[str, str] | None:
    """``initdb`` and ``postgres``: from PATH, else the newest ``/usr/lib/postgresql/<major>/bin``, where
    Debian's package puts them (off PATH)."""
    initdb, postgres = shutil.which("initdb"), shutil.which("postgres")
    if initdb and postgres:
        return initdb, postgres
    found = [
        d for d in Path("/usr/lib/postgresql").glob("*/bin") if (d / "initdb").is_file() and (d / "postgres").is_file()
    ]
    if not found:
        return None
    newest = max(found, key=lambda d: [int(n) for n in re.findall(r"\d+", d.parent.name)])
    return str(newest / "initdb"), str(newest / "postgres")


@contextmanager
def postgres_server(tmp_path: Path) -> Iterator[str]:
    """A PostgreSQL server of its own on a free 127.0.0.1 port (trust auth, fsync off: test data only) with an
    empty database ``catalog``; yields its SQLAlchemy URI and stops the server by its PID. Its log is
    ``tmp_path/postgres.log``. Skipped where PostgreSQL is not installed, except under CI (``CI=true``), where
    that fails."""
    binaries = postgres_binaries()
    if binaries is None:
        message = "PostgreSQL (initdb, postgres) is not installed: apt-get install postgresql"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    initdb, postgres = binaries
    # initdb and postgres refuse to run as root: then they run as nobody, in a directory of nobody's outside
    # pytest's (whose base is root's alone, 0700); a short path also keeps the socket's under its 107 bytes
    account = pwd.getpwnam("nobody") if os.geteuid() == 0 else None
    as_user: dict[str, Any] = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []} if account else {}
    log_path = tmp_path / "postgres.log"
    with tempfile.TemporaryDirectory(prefix="fw-pg-") as home:
        if account:
            os.chown(home, account.pw_uid, account.pw_gid)
        data = str(Path(home) / "data")
        init = subprocess.run(
            [initdb, "-D", data, "-A", "trust", "-U", POSTGRES_USER, "--no-sync", "-E", "UTF8", "--locale=C"],
            capture_output=True,
            text=True,
            cwd=home,
            **as_user,
        )
        if init.returncode != 0:
            raise AssertionError(f"initdb failed with status {init.returncode}:\n{init.stdout}{init.stderr}")
        port = free_port()
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [postgres, "-D", data, "-h", "127.0.0.1", "-p", str(port), "-k", home, "-F"],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=home,
                start_new_session=True,  # its own group: pytest's Ctrl-C does not reach it before the stop does
                **as_user,
            )
        try:
            with _postgres_connection(proc, port, log_path) as admin:
                admin.execute("CREATE DATABASE catalog")
            yield f"postgresql+psycopg://{POSTGRES_USER}@127.0.0.1:{port}/catalog"
        finally:
            _stop_postgres(proc)


def _postgres_connection(proc: subprocess.Popen[bytes], port: int, log_path: Path, timeout: float = 60) -> Any:
    """The first connection the server accepts (to ``postgres``, autocommit): accepting one is its readiness,
    so connecting is polled, with a deadline; fails with the server's log if it exits or time runs out."""
    import psycopg  # the test extras'; imported here so that the suite collects without it

    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"postgres exited with status {proc.returncode}:\n{log_path.read_text()}")
        try:
            return psycopg.connect(
                host="127.0.0.1", port=port, user=POSTGRES_USER, dbname="postgres", autocommit=True, connect_timeout=5
            )
        except psycopg.OperationalError as e:  # not listening yet, or "the database system is starting up"
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"postgres accepted no connection in {timeout} s ({e}):\n{log_path.read_text()}"
                ) from None
        time.sleep(0.02)  # polling: the server's readiness is accepting a connection


def _stop_postgres(proc: subprocess.Popen[bytes]) -> None:
    """SIGINT to its PID (fast shutdown: sessions ended, then a checkpoint, quick with fsync off); SIGKILL if
    it is still running after 30 s."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


@contextmanager
def table_handle(settings: Any, dataset: str) -> Iterator[Any]:
    """The dataset's lake table through the seam (lake/tables), a handle of the test's own on the settings'
    storage and catalog; None if there is no table yet."""
    from flight_writer.lake.tables import make_tables

    tables = make_tables(settings.tables, settings.datasets, settings.storage)
    try:
        yield tables[settings.datasets.rule_for(dataset).table].open(dataset, None)
    finally:
        for t in tables.values():
            t.close()


def read_lake_table(root: Path, fmt: str, dataset: str, namespace: str = "flight_writer") -> tuple[pa.Table, list[str]]:
    """A dataset's lake table on a local root, read with the format's own reader (pyiceberg through the default
    SQLite catalog in the root; deltalake): its rows and the data files its current version lists, as listed
    (a file listed twice shows twice). An empty table and no files where there is no table."""
    if fmt == "iceberg":
        from pyiceberg.catalog.sql import SqlCatalog
        from pyiceberg.exceptions import NoSuchTableError

        catalog = SqlCatalog("flight_writer", uri=f"sqlite:///{root / '_catalog.db'}", warehouse=str(root))
        try:
            table = catalog.load_table((*namespace.split("."), *dataset.split("/")))
            return table.scan().to_arrow(), table.inspect.files().column("file_path").to_pylist()
        except NoSuchTableError:
            return pa.table({}), []
        finally:
            catalog.engine.dispose()
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    try:
        table = DeltaTable(str(root / dataset))
    except TableNotFoundError:
        return pa.table({}), []
    return table.to_pyarrow_table(), table.file_uris()
