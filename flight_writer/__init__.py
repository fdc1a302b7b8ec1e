"""flight-writer: an Arrow Flight ingestion server that writes Parquet to object storage via OpenDAL.

Logs: flight-writer logs through loguru and, as a library, is quiet until asked: importing it disables its
messages (loguru's advice for libraries), so a ``Service`` in your program prints nothing of its own. Turn them
on with::

    from loguru import logger
    logger.enable("flight_writer")  # to loguru's handlers: its default one writes to stderr

``flight-writer serve`` turns them on itself (``flight_writer.log.configure_logging``, which also sets the
format and ``log.level``).

The names below are imported when first used (PEP 562), so importing the package alone does not import
pyarrow: the command line chooses Arrow's allocator before pyarrow is loaded (``flight_writer.cli``)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from loguru import logger

from flight_writer._version import __version__

if TYPE_CHECKING:
    from flight_writer.config import ConfigError, Settings, load_settings
    from flight_writer.ingest.server import ACK_HEADER, FlightWriterServer
    from flight_writer.lake.storage import Storage, StorageError
    from flight_writer.queue import MemoryQueue, Queue, QueueFull
    from flight_writer.queue.tracker import DurabilityTracker
    from flight_writer.service import Service
    from flight_writer.write.writer import Writer

_HOMES = {
    "ConfigError": "flight_writer.config",
    "Settings": "flight_writer.config",
    "load_settings": "flight_writer.config",
    "ACK_HEADER": "flight_writer.ingest.server",
    "FlightWriterServer": "flight_writer.ingest.server",
    "Storage": "flight_writer.lake.storage",
    "StorageError": "flight_writer.lake.storage",
    "MemoryQueue": "flight_writer.queue",
    "Queue": "flight_writer.queue",
    "QueueFull": "flight_writer.queue",
    "DurabilityTracker": "flight_writer.queue.tracker",
    "Service": "flight_writer.service",
    "Writer": "flight_writer.write.writer",
}

logger.disable("flight_writer")  # nothing is logged at import: quiet from here until enabled


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES})


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'flight_writer' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value  # once
    return value


__all__ = [
    "ACK_HEADER",
    "ConfigError",
    "DurabilityTracker",
    "FlightWriterServer",
    "MemoryQueue",
    "Queue",
    "QueueFull",
    "Service",
    "Settings",
    "Storage",
    "StorageError",
    "Writer",
    "__version__",
    "load_settings",
]
