"""Local protocol servers for the cloud storage tests, each on a free 127.0.0.1 port, stopped by its PID.

- S3: ``moto_server`` (pip ``moto[s3] flask flask-cors``, in the dev extras)
- GCS: ``gcp-storage-emulator`` (pip, in the dev extras)
- Azure Blob: ``azurite-blob`` (npm ``azurite``; ``make emulators`` installs it under ``.emulators/``)

A missing server skips its tests with a reason saying how to install it, except under CI (``CI=true``),
where it fails them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from flight_writer.config import StorageSettings

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
# Azurite's published development account (not a secret: it is in Microsoft's documentation)
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
BUCKET = "flight-writer-tests"
INSTALL_HINTS = {
    "moto_server": "pip install 'moto[s3]' flask flask-cors (make test installs the dev extras)",
    "gcp-storage-emulator": "pip install gcp-storage-emulator (make test installs the dev extras)",
    "azurite-blob": "make emulators (npm install --prefix .emulators azurite)",
}


def suspend(pid: int) -> None:
    """SIGSTOP, returning once every thread of the process has stopped. The signal is delivered
    asynchronously: measured here, ``kill`` returned while a nats-server's main thread still ran 128 times
    in 300, and the server acknowledged 25 publishes sent right after it (which made a test that relies on a
    paused server fail now and then)."""
    os.kill(pid, signal.SIGSTOP)
    tasks = Path(f"/proc/{pid}/task")
    while True:
        states = []
        for task in tasks.iterdir():
            try:
                states.append((task / "stat").read_text().rsplit(")", 1)[1].split()[0])
            except (FileNotFoundError, ProcessLookupError):  # a thread that ended meanwhile
                continue
        if all(s in ("T", "t") for s in states):
            return
        time.sleep(0.001)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class HoldingProxy:
    """A TCP forwarder from a free 127.0.0.1 port to ``port`` whose client-to-server bytes can be held: after
    ``hold()`` what clients send waits in the proxy (the connection stays up, as behind a network that holds
    a connection's bytes) until ``release()``; ``holding`` is set once some bytes wait. ``close()`` stops it."""

    def __init__(self, port: int) -> None:
        self.port = free_port()
        self._target = port
        self._cond = threading.Condition()
        self._held = False
        self.holding = threading.Event()
        self._sockets: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, name="proxy", daemon=True).start()

    def hold(self) -> None:
        with self._cond:
            self._held = True

    def release(self) -> None:
        with self._cond:
            self._held = False
            self._cond.notify_all()

    def close(self) -> None:
        self.release()
        for s in [self._listener, *self._sockets]:
            with contextlib.suppress(OSError):
                s.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self._target))
            self._sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, to: socket.socket, outbound: bool) -> None:
        try:
            while data := source.recv(1 << 16):
                if outbound:
                    with self._cond:
                        if self._held:
                            self.holding.set()
                        self._cond.wait_for(lambda: not self._held)
                to.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, to):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"emulator exited with status {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)  # polling a port that has no readiness signal
    raise RuntimeError(f"emulator did not listen on port {port} within {timeout} s")


def find_binary(name: str) -> str | None:
    for candidate in (VENV_BIN / name, REPO / ".emulators" / "node_modules" / ".bin" / name):
        if candidate.exists():
            return str(candidate)
    return shutil.which(name)


def require_binary(name: str) -> str:
    path = find_binary(name)
    if path is None:
        message = f"{name} is not installed: {INSTALL_HINTS[name]}"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@dataclass
class Emulator:
    service: str
    proc: subprocess.Popen[bytes]
    port: int
    options: dict[str, str] = field(default_factory=dict)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}" + (f"/{AZURITE_ACCOUNT}" if self.service == "azblob" else "")

    def settings(self, endpoint: str | None = None, **overrides: Any) -> StorageSettings:
        """Settings for a fresh key prefix in the shared bucket, so tests do not see each other's objects."""
        values: dict[str, Any] = {
            "type": self.service,
            "root": f"/t-{uuid.uuid4().hex[:12]}/",
            "bucket": BUCKET,
            "endpoint": endpoint or self.endpoint,
            "options": dict(self.options),
        }
        if self.service == "s3":
            values["region"] = "us-east-1"
        values.update(overrides)
        return StorageSettings(**values)

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def start(service: str) -> Emulator:
    port = free_port()
    if service == "s3":
        cmd = [require_binary("moto_server"), "-H", "127.0.0.1", "-p", str(port)]
        options = {
            "access_key_id": "test",
            "secret_access_key": "test",
            "disable_config_load": "true",
            "disable_ec2_metadata": "true",
        }
    elif service == "gcs":
        cmd = [
            require_binary("gcp-storage-emulator"),
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--in-memory",
        ]
        options = {"skip_signature": "true"}
    elif service == "azblob":
        cmd = [
            require_binary("azurite-blob"),
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            str(port),
            "--inMemoryPersistence",
            "--skipApiVersionCheck",
            "--loose",
            "--disableTelemetry",
        ]
        options = {"account_name": AZURITE_ACCOUNT, "account_key": AZURITE_KEY}
    else:
        raise ValueError(service)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    emulator = Emulator(service, proc, port, options)
    try:
        wait_for_port(port, proc)
        create_bucket(emulator)
    except Exception:
        emulator.stop()
        raise
    return emulator


def create_bucket(emulator: Emulator, bucket: str = BUCKET) -> None:
    """A bucket (an Azure container) on the emulator, through the service's own API."""
    if emulator.service == "s3":
        s3_client(emulator).create_bucket(Bucket=bucket)
    elif emulator.service == "azblob":
        from azure.storage.blob import BlobServiceClient

        conn = (
            f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
            f"BlobEndpoint={emulator.endpoint};"
        )
        BlobServiceClient.from_connection_string(conn).create_container(bucket)
    elif emulator.service == "gcs":  # the JSON API's buckets.insert; the emulator takes any project
        request = urllib.request.Request(
            f"{emulator.endpoint}/storage/v1/b?project=flight-writer-tests",
            data=json.dumps({"name": bucket}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        urllib.request.urlopen(request, timeout=30).close()  # an error status raises HTTPError
    else:
        raise ValueError(emulator.service)


def s3_client(emulator: Emulator) -> Any:
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=emulator.endpoint,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )
