"""The container for real: ``make image`` builds it with podman, the server runs in it as uid 10001, a pyarrow
client streams to it, the Parquet is read back from the mounted volume, the image's HEALTHCHECK passes, and
``podman stop`` (SIGTERM to PID 1) loses none of the acknowledged rows, also those of a stream still open.

Needs root, podman, runc and debootstrap (``.ci/run`` installs them). Without them the test is skipped, except
under CI (``CI=true``), where it fails. The container uses the host's network with both listeners on
127.0.0.1 (free ports picked here), so nothing leaves loopback; the image's defaults (0.0.0.0) are overridden
by environment variables, as an operator would.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.flight as flight
import pytest

from emulators import free_port
from helpers import REPO, action, parquet_files, read_dataset

PODMAN = str(REPO / "container" / "podman")
IMAGE = "localhost/flight-writer:latest"
DATASET = "demo/container"
BUILD_TIMEOUT = 900  # a cold build (debootstrap of the base) took ~2.5 min here


def _require(condition: bool, message: str) -> None:
    if condition:
        return
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message)
    pytest.skip(message)


def podman(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([PODMAN, *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} exited {result.returncode}:\n{result.stdout}{result.stderr}")
    return result


@pytest.fixture(scope="module")
def image() -> str:
    for tool in ("podman", "runc", "debootstrap"):
        _require(shutil.which(tool) is not None, f"{tool} is not installed: apt-get install podman runc debootstrap")
    _require(os.geteuid() == 0, "the container test needs root (debootstrap, rootful podman)")
    started = time.monotonic()
    build = subprocess.run(["make", "image"], cwd=REPO, capture_output=True, text=True, timeout=BUILD_TIMEOUT)
    assert build.returncode == 0, f"make image failed:\n{build.stdout}\n{build.stderr}"
    print(f"make image: {time.monotonic() - started:.1f} s")
    return IMAGE


class Container:
    def __init__(self, image: str, data: Path, env: dict[str, str]) -> None:
        self.name = f"flight-writer-test-{uuid.uuid4().hex[:8]}"
        self.data = data
        self.flight_port, self.metrics_port = free_port(), free_port()
        env = {
            "FLIGHT_WRITER_SERVER__LOCATION": f"grpc://127.0.0.1:{self.flight_port}",
            "FLIGHT_WRITER_METRICS__LISTEN": f"127.0.0.1:{self.metrics_port}",
            **env,
        }
        podman(
            "run", "--detach", "--name", self.name, "--network", "host",
            # no systemd here to run the HEALTHCHECK on a timer: the test runs it (podman healthcheck run)
            "--health-interval", "disable",
            # :U makes the volume the container user's (uid 10001), as the server does not run as root
            "--volume", f"{data}:/data:U",
            *[arg for key, value in env.items() for arg in ("--env", f"{key}={value}")],
            image,
        )  # fmt: skip
        self.location = f"grpc://127.0.0.1:{self.flight_port}"

    def logs(self) -> str:
        result = podman("logs", self.name, check=False)
        return result.stdout + result.stderr

    def state(self, field: str) -> str:
        return podman("inspect", "--format", f"{{{{.State.{field}}}}}", self.name).stdout.strip()

    def healthcheck(self) -> subprocess.CompletedProcess[str]:
        return podman("healthcheck", "run", self.name, check=False)

    def wait_healthy(self, timeout: float = 60) -> None:
        """The first passing HEALTHCHECK, within the deadline; fails early if the server exited."""
        deadline = time.monotonic() + timeout
        while True:
            if self.healthcheck().returncode == 0:
                return
            if self.state("Status") != "running":
                raise AssertionError(f"the container exited ({self.state('ExitCode')}):\n{self.logs()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no passing healthcheck within {timeout} s:\n{self.logs()}")
            time.sleep(0.2)  # the server's startup has no signal to wait on from outside but this check

    def remove(self) -> None:
        podman("rm", "--force", "--time", "0", self.name, check=False)


@pytest.fixture
def container(image: str, tmp_path: Path) -> Iterator[Container]:
    data = tmp_path / "data"
    data.mkdir()
    box = Container(
        image,
        data,
        {
            # only flush and the stop write files: the batches sent last are not durable when the stop comes
            "FLIGHT_WRITER_WRITER__FLUSH_INTERVAL": "600",
            # a stream left open is ended after 5 s of the stop instead of 20
            "FLIGHT_WRITER_SERVER__SHUTDOWN_TIMEOUT": "5",
        },
    )
    try:
        yield box
    finally:
        box.remove()


def rows(start: int, count: int) -> pa.RecordBatch:
    ids = list(range(start, start + count))
    return pa.record_batch(
        {
            "row": pa.array(ids, pa.int64()),
            "service": [f"svc-{i % 7}" for i in ids],
            "ts": pa.array([1_764_000_000_000_000 + i for i in ids], pa.timestamp("us", tz="UTC")),
        }
    )


def open_stream(client: flight.FlightClient) -> tuple[flight.FlightStreamWriter, flight.FlightMetadataReader]:
    return client.do_put(flight.FlightDescriptor.for_path(*DATASET.split("/")), rows(0, 1).schema)


def send_batch(writer, reader, batch: pa.RecordBatch, batch_id: str) -> dict:
    writer.write_with_metadata(batch, pa.py_buffer(json.dumps({"id": batch_id}).encode()))
    reply = json.loads(reader.read().to_pybytes())
    assert reply["rows"] == batch.num_rows and reply["id"] == batch_id, reply
    return reply


@pytest.mark.timeout(BUILD_TIMEOUT + 300)
def test_image_runs_writes_parquet_to_the_volume_and_stops_without_loss(container: Container) -> None:
    started = time.monotonic()
    container.wait_healthy()
    print(f"healthy after {time.monotonic() - started:.1f} s")

    # PID 1 is the server itself (exec form), and it is not root
    assert "flight-writer" in podman("exec", container.name, "cat", "/proc/1/cmdline").stdout
    assert podman("exec", container.name, "id", "-u").stdout.strip() == "10001"
    assert podman("exec", container.name, "stat", "-c", "%u", "/proc/1").stdout.strip() == "10001"
    assert container.healthcheck().returncode == 0
    health = json.loads(podman("inspect", "--format", "{{json .State.Health}}", container.name).stdout)
    assert health["Status"] == "healthy" and "/healthz: 200" in health["Log"][-1]["Output"], health
    with urllib.request.urlopen(f"http://127.0.0.1:{container.metrics_port}/readyz", timeout=5) as ready:
        assert ready.status == 200 and json.load(ready)["ready"] is True

    client = flight.connect(container.location)
    sent: list[pa.RecordBatch] = []
    seqs: list[int] = []

    # 1. batches made durable with flush: in Parquet on the host's side of the volume while the server runs
    writer, reader = open_stream(client)
    for i in range(5):
        sent.append(rows(i * 1000, 1000))
        seqs.append(send_batch(writer, reader, sent[-1], f"b-{i}")["seq"])
    writer.done_writing()
    assert reader.read() is None
    writer.close()
    assert action(client, "flush", {"dataset": DATASET})["durable_through"] >= max(seqs)
    acks = action(client, "ack", {"seqs": seqs})["acks"]
    assert {a["state"] for a in acks} == {"durable"}, acks
    for a in acks:
        assert (container.data / a["file"]).is_file(), a
    flushed = read_dataset(container.data, DATASET, sort_by="row")
    assert flushed.column("row").to_pylist() == list(range(5000))
    # written by the container's user, not root
    assert {f.stat().st_uid for f in parquet_files(container.data, DATASET)} == {10001}

    # 2. batches answered "queued" and not yet durable: a closed stream, and one left open across the stop
    writer, reader = open_stream(client)
    for i in range(5, 10):
        sent.append(rows(i * 1000, 1000))
        seqs.append(send_batch(writer, reader, sent[-1], f"b-{i}")["seq"])
    writer.done_writing()
    assert reader.read() is None
    writer.close()
    open_writer, open_reader = open_stream(client)
    for i in range(10, 13):
        sent.append(rows(i * 1000, 1000))
        seqs.append(send_batch(open_writer, open_reader, sent[-1], f"b-{i}")["seq"])
    pending = [a for a in action(client, "ack", {"seqs": seqs[5:]})["acks"] if a["state"] != "durable"]
    assert len(pending) == 8, "the stop is to write these: they must not be durable before it"

    # 3. podman stop: SIGTERM to PID 1; the server drains and exits 0 well before podman's SIGKILL
    started = time.monotonic()
    podman("stop", "--time", "60", container.name, timeout=90)
    stop_s = time.monotonic() - started
    print(f"podman stop: {stop_s:.1f} s")
    logs = container.logs()
    assert container.state("ExitCode") == "0", logs
    assert "SIGTERM: stopping gracefully" in logs, logs
    assert "ending the streams still open" in logs, logs  # the open stream was ended at server.shutdown_timeout
    assert stop_s < 30, f"the stop took {stop_s:.1f} s: {logs}"
    with contextlib.suppress(flight.FlightError, OSError):  # the server ended that stream when it exited
        open_writer.close()
    client.close()

    # every acknowledged row, exactly once, in the Parquet on the volume
    expected = pa.Table.from_batches(sent).sort_by("row")
    stored = read_dataset(container.data, DATASET, sort_by="row")
    assert stored.num_rows == 13_000
    assert stored.select(expected.column_names).equals(expected)


@pytest.mark.timeout(BUILD_TIMEOUT + 300)
def test_image_commits_lake_tables_with_a_setting(image: str, tmp_path: Path) -> None:
    """The image carries the tables extra: one environment variable makes the dataset a Delta table, whose
    rows the host reads with deltalake from the volume; Iceberg's packages (SQL catalog on SQLite or
    PostgreSQL) import in the image too."""
    from deltalake import DeltaTable

    data = tmp_path / "data"
    data.mkdir()
    box = Container(image, data, {"FLIGHT_WRITER_DATASETS__TABLE": "delta"})
    try:
        box.wait_healthy()
        imports = podman("exec", box.name, "python3", "-c", "import pyiceberg.catalog.sql, psycopg, deltalake")
        assert imports.returncode == 0, imports.stderr
        client = flight.FlightClient(f"grpc://127.0.0.1:{box.flight_port}")
        writer, reader = open_stream(client)
        sent = [rows(0, 1000), rows(1000, 500)]
        seqs = [send_batch(writer, reader, b, f"t-{i}")["seq"] for i, b in enumerate(sent)]
        writer.done_writing()
        assert reader.read() is None
        writer.close()
        done = action(client, "flush", {"dataset": DATASET, "until": "committed"})
        assert done["committed_through"] >= max(seqs), done
        client.close()
        table = DeltaTable(str(data / DATASET)).to_pyarrow_table().sort_by("row")
        expected = pa.Table.from_batches(sent).sort_by("row")
        assert table.select(expected.column_names).to_pylist() == expected.to_pylist()
    finally:
        box.remove()
