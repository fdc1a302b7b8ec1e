"""Shared fixtures: a real server on a loopback port, real Flight clients, server processes, loguru's log, a
PostgreSQL server. The functions and classes behind them, and those the tests call, are in helpers.py."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow.flight as flight
import pytest
from loguru import logger

from flight_writer import Service

from helpers import LogCapture, ServerProcess, postgres_server, running

# flight_writer keeps its logs off as a library (flight_writer/__init__.py); the suite turns them on, as the
# command line does, so that a failing test shows the server's log and caplog_loguru sees it
logger.enable("flight_writer")


@pytest.fixture
def caplog_loguru() -> Iterator[LogCapture]:
    """What the code logged through loguru during the test."""
    logger.enable("flight_writer")  # the package is quiet as a library until enabled (done above too)
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


@pytest.fixture(scope="session")
def postgres_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One PostgreSQL server for the session, started on first use (for the Iceberg SQL catalog's tests):
    the SQLAlchemy URI of its database ``catalog``, which the tests share, so each uses names of its own."""
    with postgres_server(tmp_path_factory.mktemp("postgres")) as uri:
        yield uri
