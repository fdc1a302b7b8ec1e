"""Shared fixtures: a real server on a loopback port, real Flight clients, server processes, loguru's log.
The functions and classes behind them, and those the tests call, are in helpers.py."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow.flight as flight
import pytest

from flight_writer import Service

from helpers import LogCapture, ServerProcess, running


@pytest.fixture
def caplog_loguru() -> Iterator[LogCapture]:
    """What the code logged through loguru during the test."""
    from loguru import logger

    capture = LogCapture()
    sink = logger.add(capture.lines.append, format="{level} {message}", level="DEBUG")
    yield capture
    logger.remove(sink)


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def service(data_root: Path) -> Iterator[Service]:
    with running(data_root) as svc:
        yield svc


@pytest.fixture
def client(service: Service) -> Iterator[flight.FlightClient]:
    with flight.connect(service.location) as c:
        yield c


@pytest.fixture
def server_process() -> Iterator[Callable[..., ServerProcess]]:
    started: list[ServerProcess] = []

    def start(
        config: Path | None, env: dict[str, str] | None = None, cmd: list[str] | None = None, ready: str = "(port "
    ) -> ServerProcess:
        started.append(ServerProcess(config, env, cmd, ready))
        return started[-1]

    yield start
    for server in started:
        server.close()
