"""flight-writer: an Arrow Flight ingestion server that writes Parquet to object storage via OpenDAL."""

from __future__ import annotations

from flight_writer._version import __version__
from flight_writer.config import ConfigError, Settings, load_settings
from flight_writer.ingest.server import ACK_HEADER, FlightWriterServer
from flight_writer.lake.storage import Storage, StorageError
from flight_writer.queue import MemoryQueue, Queue, QueueFull
from flight_writer.queue.tracker import DurabilityTracker
from flight_writer.service import Service
from flight_writer.write.writer import Writer

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
