"""The settings: frozen dataclasses holding every setting and its default, and ConfigError.

``load.py`` reads them from a file and the environment (``load_settings``); ``values.py`` parses
each value; ``checks.py`` validates the whole. ``configs/settings.toml`` lists the same defaults
with a comment each (a test keeps the two in step). ``Settings.masked()`` is what logs and ``status`` show:
secret-looking storage options and endpoint passwords hidden.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

MiB = 1024 * 1024


class ConfigError(ValueError):
    """A setting is missing, unknown or invalid; the message names it."""


@dataclass(frozen=True)
class ServerSettings:
    location: str = "grpc://127.0.0.1:8815"
    ack_history: int = 100_000
    tls_cert_file: str = ""  # PEM certificate chain for grpc+tls:// locations
    tls_key_file: str = ""  # its PEM private key
    tls_client_ca_file: str = ""  # PEM CA bundle: when set, clients must present a certificate it signed (mTLS)
    shutdown_timeout: float = 20.0  # seconds a stop waits for open calls before it ends them
    same_stop_window: float = 1.0  # a 2nd SIGTERM/SIGINT this soon after the 1st is the same stop request
    max_streams: int = 1000  # do_put calls open at once; each holds a server thread
    max_streams_per_principal: int = 100  # ... of them by one principal (with auth; a principal may set its own)
    max_batch_bytes: int = 256 * MiB  # Arrow bytes of one record batch
    max_columns: int = 10_000  # fields in a stream's schema, nested ones included
    max_nesting: int = 32  # levels of nested types in a stream's schema
    max_metadata_bytes: int = 65_536  # a batch's app_metadata ({"id": ...})


@dataclass(frozen=True)
class QueueSettings:
    type: str = "memory"
    max_bytes: int = 512 * MiB
    put_timeout: float = 30.0
    dedupe_window: int = 100_000
    path: str = "./wal"
    segment_bytes: int = 64 * MiB
    fsync: str = "always"
    fsync_interval_ms: int = 100
    compression: str = "lz4"
    # type = "nats" (queue/nats.py): ingest and write processes sharing one JetStream stream
    url: tuple[str, ...] = ("nats://127.0.0.1:4222",)  # one or more servers of the cluster
    stream: str = "FLIGHT_WRITER"  # its subjects are <stream>.data, <stream>.records, <stream>.flush
    replicas: int = 1  # JetStream replicas of the streams (3 on a 3-node cluster)
    consumer: str = "writers"  # the durable pull consumer the write processes share
    streams: int = 1  # N > 1: the data path sharded over N streams (<stream>, <stream>-1, ...; nats/sharded.py)
    stream_slots: int = 0  # seqs leave room for this many streams: streams may be added live up to it (0: streams)
    ack_wait: float = 30.0  # seconds: a write process silent for this long has its batches redelivered
    duplicate_window: float = 120.0  # seconds JetStream remembers a batch id (Nats-Msg-Id)
    user: str = ""
    password: str = ""  # secrets from the environment only (FLIGHT_WRITER_QUEUE__PASSWORD)
    token: str = ""  # FLIGHT_WRITER_QUEUE__TOKEN
    creds_file: str = ""  # a NATS credentials file (JWT + nkey seed)

    @property
    def seq_stride(self) -> int:
        """nats: a stream's sequence s is seq ``s * stride + k`` (k: its shard); 1 for one unsharded stream."""
        return max(self.streams, self.stream_slots)


@dataclass(frozen=True)
class WriterSettings:
    max_file_bytes: int = 128 * MiB
    max_file_rows: int = 10_000_000
    row_group_rows: int = 1_048_576
    row_group_bytes: int = 32 * MiB
    flush_interval: float = 10.0
    compression: str = "zstd"
    compression_level: int = 0
    threads: int = 2
    max_open_buffers: int = 1000  # (dataset, schema, hour) buffers filling at once; more: the oldest is sealed
    retry_initial_delay: float = 0.2
    retry_max_delay: float = 30.0


@dataclass(frozen=True)
class StorageSettings:
    type: str = "fs"
    root: str = "./data"
    bucket: str = ""  # the bucket (s3, gcs) or container (azblob)
    endpoint: str = ""
    region: str = ""
    upload_chunk_bytes: int = 8 * MiB
    upload_concurrency: int = 4
    multipart_threshold: int = 256 * MiB
    timeout: float = 30.0
    io_timeout: float = 60.0
    startup_check: bool = True
    options: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class FlightSqlSettings:
    ack: str = "durable"
    allow_schema_change: bool = False


@dataclass(frozen=True)
class LogSettings:
    level: str = "INFO"
    json: bool = False


@dataclass(frozen=True)
class AuthSettings:
    principals_file: str = ""  # TOML file of principals (auth.py); "" = every call is anonymous
    allow_anonymous: bool = False  # without principals, listening beyond loopback needs this to be true


@dataclass(frozen=True)
class MetricsSettings:
    listen: str = ""  # host:port of the HTTP listener for /metrics, /healthz, /readyz; "" = off
    ready_max_queue: float = 0.9  # /readyz fails while the queue holds more than this share of max_bytes
    ready_max_error_s: float = 0.0  # > 0: also while storage has failed for longer than this (0: storage never)
    datasets: int = 20  # per-dataset figures in status and /metrics: this many busiest datasets; 0 = none


@dataclass(frozen=True)
class TableSettings:
    """Commits of stored files to lake tables (``datasets.table = "iceberg"`` or ``"delta"``; lake/tables)."""

    commit_interval: float = 5.0  # seconds: stored files wait at most this long for their table commit
    commit_files: int = 100  # ... or until this many files wait for one table
    adopt_interval: float = 30.0  # seconds between looks for files a dead write process left uncommitted
    namespace: str = "flight_writer"  # Iceberg: the catalog namespace the tables go in
    catalog_uri: str = ""  # Iceberg SQL catalog (SQLAlchemy URL); "": SQLite in <storage.root>/_catalog.db (fs)
    catalog_type: str = "sql"  # sql (SQLite, PostgreSQL) or rest
    catalog_options: Mapping[str, str] = field(default_factory=dict)  # rest: uri, token, warehouse, ...
    maintain_every: int = 100  # commits to a table between maintenance runs (expiry, checkpoints); 0 = never
    compact_every: int = 0  # commits to a table between compactions of its small files; 0 = never (command only)
    compact_target_bytes: int = 64 * MiB  # files below this size are compacted, into files of about this size
    keep_snapshots: int = 20  # Iceberg snapshots a maintenance run keeps (Delta keeps its log by age)
    retry_initial_delay: float = 0.5
    retry_max_delay: float = 30.0


@dataclass(frozen=True)
class DatasetRule:
    """How the datasets a rule matches are stored (layout.py): ``[datasets]`` holds the defaults, each
    ``[[datasets.rules]]`` with a ``match`` glob overrides some of them; the first rule that matches wins."""

    types: str = "compatible"  # compatible: what every lake reader reads; exact: the Arrow types as sent
    partition: str = "received"  # received: the time a batch arrived; event: time_column's value
    time_column: str = ""  # partition = "event": a timestamp column
    granularity: str = "hour"  # hour (date=/hour= folders) or day (date= only)
    fields: tuple[str, ...] = ()  # columns to partition by after the time (low cardinality: service, region)
    max_partitions: int = 100  # partitions one batch may fall in (more: refused) and buffers open at once
    schema: str = "evolve"  # separate, evolve or strict (schemas.py)
    columns: tuple[tuple[str, str], ...] = ()  # declared columns: (name, "type [not null]")
    table: str = "none"  # none: loose Parquet files; iceberg or delta: the files are also committed to a table


@dataclass(frozen=True)
class DatasetSettings(DatasetRule):
    rules: tuple[tuple[str, DatasetRule], ...] = ()  # (match, rule)

    def rule_for(self, dataset: str) -> DatasetRule:
        for pattern, rule in self.rules:
            if fnmatch.fnmatchcase(dataset, pattern):
                return rule
        return self


@dataclass(frozen=True)
class Settings:
    server: ServerSettings = field(default_factory=ServerSettings)
    queue: QueueSettings = field(default_factory=QueueSettings)
    writer: WriterSettings = field(default_factory=WriterSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    flight_sql: FlightSqlSettings = field(default_factory=FlightSqlSettings)
    log: LogSettings = field(default_factory=LogSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    tables: TableSettings = field(default_factory=TableSettings)
    datasets: DatasetSettings = field(default_factory=DatasetSettings)

    def masked(self) -> dict[str, Any]:
        """The settings as plain data with secret-looking storage options replaced by ``***`` and a
        password in the endpoint URL hidden."""
        data = dataclasses.asdict(self)
        data["storage"]["options"] = {
            k: ("***" if _MASKED_KEY.search(k) else v) for k, v in self.storage.options.items()
        }
        data["storage"]["endpoint"] = without_password(self.storage.endpoint)
        for key in ("password", "token"):
            data["queue"][key] = "***" if data["queue"][key] else ""
        data["queue"]["url"] = [without_password(u) for u in self.queue.url]
        data["tables"]["catalog_uri"] = without_password(self.tables.catalog_uri)
        data["tables"]["catalog_options"] = {
            k: ("***" if _MASKED_KEY.search(k) else v) for k, v in self.tables.catalog_options.items()
        }
        return data


def without_password(url: str) -> str:
    """``https://user:pass@host`` -> ``https://user:***@host``: URLs are logged and shown by ``status``."""
    return _USERINFO.sub(lambda m: f"//{m.group(1)}:***@", url)


# storage option names that hold a secret: refused in a config file (config.py), shown as ***
SECRET_OPTION = re.compile(r"secret|password|token|credential|account_key|sas|private_key", re.IGNORECASE)
# shown as *** (README): any name with "key" too, e.g. access_key_id, server_side_encryption_customer_key
_MASKED_KEY = re.compile(SECRET_OPTION.pattern + "|key", re.IGNORECASE)
_USERINFO = re.compile(r"//([^/@:]*):[^/@]*@")
