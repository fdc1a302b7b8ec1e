"""flight-writer: an Arrow Flight ingestion server that writes Parquet to object storage via OpenDAL.

Logs: flight-writer logs through loguru and, as a library, is quiet until asked: importing it disables its
messages (loguru's advice for libraries), so a ``Service`` in your program prints nothing of its own. Turn them
on with::

    from loguru import logger
    logger.enable("flight_writer")  # to loguru's handlers: its default one writes to stderr

``flight-writer serve`` turns them on itself (``flight_writer.log.configure_logging``, which also sets the
format and ``log.level``)."""

from __future__ import annotations

from loguru import logger

from flight_writer._version import __version__
from flight_writer.config import ConfigError, Settings, load_settings
from flight_writer.ingest.server import ACK_HEADER, FlightWriterServer
from flight_writer.lake.storage import Storage, StorageError
from flight_writer.queue import MemoryQueue, Queue, QueueFull
from flight_writer.queue.tracker import DurabilityTracker
from flight_writer.service import Service
from flight_writer.write.writer import Writer

logger.disable("flight_writer")  # nothing is logged at import: quiet from here until enabled

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
