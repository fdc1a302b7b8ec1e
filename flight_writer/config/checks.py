"""Validating built settings as a whole (``check_settings``): allowed values, positive limits, settings
that go together (TLS files, event partitioning), files that must exist, and refusing to listen beyond this
machine without principals unless ``auth.allow_anonymous`` says so. Each failure raises
:class:`ConfigError` naming the setting.
"""

from __future__ import annotations

import ipaddress
import os
import re

from flight_writer.config.columns import declared_columns
from flight_writer.config.settings import ConfigError, DatasetRule, Settings

COMPRESSIONS = ("zstd", "snappy", "lz4", "gzip", "none")
QUEUE_TYPES = ("memory", "wal", "nats")
NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")  # a JetStream stream or consumer name
FSYNC_POLICIES = ("always", "interval", "never")
WAL_COMPRESSIONS = ("lz4", "zstd", "none")
LOG_LEVELS = ("TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL")


TABLE_FORMATS = ("none", "iceberg", "delta")
MAX_STREAMS = 1024  # queue.streams and stream_slots (each stream is a connection and a consumer per process)


def check_settings(s: Settings) -> None:
    """Raise :class:`ConfigError` for the first invalid setting."""

    def positive(name: str, value: float) -> None:
        if value <= 0:
            raise ConfigError(f"{name} must be positive, got {value!r}")

    if not s.server.location.startswith(("grpc://", "grpc+tcp://", "grpc+tls://", "grpc+unix://")):
        raise ConfigError(f"server.location must be a grpc:// URI, got {s.server.location!r}")
    positive("server.ack_history", s.server.ack_history)
    for key in (
        "max_streams",
        "max_streams_per_principal",
        "max_batch_bytes",
        "max_columns",
        "max_nesting",
        "max_metadata_bytes",
    ):
        positive(f"server.{key}", getattr(s.server, key))
    tls = s.server.location.startswith("grpc+tls://")
    if tls and not (s.server.tls_cert_file and s.server.tls_key_file):
        raise ConfigError("a grpc+tls:// server.location needs server.tls_cert_file and server.tls_key_file")
    if not tls and (s.server.tls_cert_file or s.server.tls_key_file or s.server.tls_client_ca_file):
        raise ConfigError("server.tls_* files are set but server.location is not grpc+tls://")
    for key in ("tls_cert_file", "tls_key_file", "tls_client_ca_file"):
        path = getattr(s.server, key)
        if path and not os.path.isfile(path):
            raise ConfigError(f"server.{key}: no such file {path!r}")
    if s.queue.type not in QUEUE_TYPES:
        raise ConfigError(f"queue.type must be one of {', '.join(QUEUE_TYPES)}, got {s.queue.type!r}")
    for key in ("max_bytes", "dedupe_window", "segment_bytes", "fsync_interval_ms", "replicas", "ack_wait"):
        positive(f"queue.{key}", getattr(s.queue, key))
    positive("queue.streams", s.queue.streams)
    if s.queue.streams > 1 and s.queue.type != "nats":
        raise ConfigError(f"queue.streams = {s.queue.streams} shards NATS streams: queue.type must be nats")
    if s.queue.stream_slots < 0 or (s.queue.stream_slots and s.queue.stream_slots < s.queue.streams):
        raise ConfigError(
            f"queue.stream_slots must be 0 or at least queue.streams ({s.queue.streams}), got {s.queue.stream_slots}"
        )
    if s.queue.seq_stride > MAX_STREAMS:
        raise ConfigError(f"queue.streams and stream_slots must be at most {MAX_STREAMS}, got {s.queue.seq_stride}")
    if s.queue.stream_slots > 1 and s.queue.type != "nats":
        raise ConfigError(f"queue.stream_slots = {s.queue.stream_slots} shards NATS streams: queue.type must be nats")
    if s.queue.type == "nats":
        if not s.queue.url:
            raise ConfigError("queue.url must name at least one NATS server")
        if not NAME.fullmatch(s.queue.stream) or not NAME.fullmatch(s.queue.consumer):
            raise ConfigError(
                f"queue.stream and queue.consumer must be names of letters, digits, - and _, got "
                f"{s.queue.stream!r} and {s.queue.consumer!r}"
            )
    if s.queue.fsync not in FSYNC_POLICIES:
        raise ConfigError(f"queue.fsync must be one of {', '.join(FSYNC_POLICIES)}, got {s.queue.fsync!r}")
    if s.queue.compression not in WAL_COMPRESSIONS:
        raise ConfigError(
            f"queue.compression must be one of {', '.join(WAL_COMPRESSIONS)}, got {s.queue.compression!r}"
        )
    if s.server.shutdown_timeout < 0:
        raise ConfigError(f"server.shutdown_timeout must be >= 0, got {s.server.shutdown_timeout!r}")
    if s.server.same_stop_window < 0:
        raise ConfigError(f"server.same_stop_window must be >= 0, got {s.server.same_stop_window!r}")
    if s.queue.put_timeout < 0:
        raise ConfigError(f"queue.put_timeout must be >= 0, got {s.queue.put_timeout!r}")
    w = s.writer
    for key in (
        "max_file_bytes",
        "max_file_rows",
        "row_group_rows",
        "row_group_bytes",
        "flush_interval",
        "threads",
        "max_open_buffers",
        "retry_initial_delay",
        "retry_max_delay",
    ):
        positive(f"writer.{key}", getattr(w, key))
    if w.compression not in COMPRESSIONS:
        raise ConfigError(f"writer.compression must be one of {', '.join(COMPRESSIONS)}, got {w.compression!r}")
    if w.compression_level < 0:
        raise ConfigError(f"writer.compression_level must be >= 0 (0 = codec default), got {w.compression_level}")
    for key in ("upload_chunk_bytes", "upload_concurrency", "multipart_threshold", "timeout", "io_timeout"):
        positive(f"storage.{key}", getattr(s.storage, key))
    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", s.storage.type):
        raise ConfigError(
            f"storage.type must be an OpenDAL service name such as fs, s3, memory; got {s.storage.type!r}"
        )
    if s.flight_sql.ack not in ("durable", "queued"):
        raise ConfigError(f"flight_sql.ack must be durable or queued, got {s.flight_sql.ack!r}")
    if s.metrics.listen and not re.fullmatch(r"(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]*):\d{1,5}", s.metrics.listen):
        raise ConfigError(f"metrics.listen must be host:port (or empty for off), got {s.metrics.listen!r}")
    if not 0 < s.metrics.ready_max_queue <= 1:
        raise ConfigError(f"metrics.ready_max_queue must be in (0, 1], got {s.metrics.ready_max_queue!r}")
    if s.metrics.ready_max_error_s < 0:
        raise ConfigError(f"metrics.ready_max_error_s must be >= 0 (0: off), got {s.metrics.ready_max_error_s!r}")
    if not 0 <= s.metrics.datasets <= 1000:
        raise ConfigError(f"metrics.datasets must be from 0 to 1000, got {s.metrics.datasets!r}")
    for where, rule in [("datasets", s.datasets), *((f"datasets.rules {m!r}", r) for m, r in s.datasets.rules)]:
        _check_rule(where, rule)
    _check_tables(s)
    if not s.auth.principals_file and not s.auth.allow_anonymous and not local_only(s.server.location):
        raise ConfigError(
            f"server.location {s.server.location} takes connections from other machines and no "
            "auth.principals_file is set: anyone who reaches it could write any dataset. Set auth.principals_file, "
            "or auth.allow_anonymous = true to allow that, or listen on 127.0.0.1"
        )
    if s.auth.principals_file and not os.path.isfile(s.auth.principals_file):
        raise ConfigError(f"auth.principals_file: no such file {s.auth.principals_file!r}")
    if s.log.level.upper() not in LOG_LEVELS:
        raise ConfigError(f"log.level must be one of {', '.join(LOG_LEVELS)}, got {s.log.level!r}")


def _check_tables(s: Settings) -> None:
    t = s.tables
    for name in ("commit_interval", "adopt_interval"):
        if not getattr(t, name) > 0:
            raise ConfigError(f"tables.{name} must be positive, got {getattr(t, name)!r}")
    for name in ("commit_files", "keep_snapshots"):
        if getattr(t, name) < 1:
            raise ConfigError(f"tables.{name} must be at least 1, got {getattr(t, name)!r}")
    for name in ("maintain_every", "compact_every"):
        if getattr(t, name) < 0:
            raise ConfigError(f"tables.{name} must be 0 (never) or more, got {getattr(t, name)!r}")
    if t.compact_target_bytes < 1 << 20:
        raise ConfigError(f"tables.compact_target_bytes must be at least 1 MiB, got {t.compact_target_bytes!r}")
    if t.catalog_type not in ("sql", "rest"):
        raise ConfigError(f"tables.catalog_type must be sql or rest, got {t.catalog_type!r}")
    if not 0 < t.retry_initial_delay <= t.retry_max_delay:
        raise ConfigError("tables.retry_initial_delay must be positive and at most tables.retry_max_delay")
    rules = [s.datasets, *(r for _, r in s.datasets.rules)]
    iceberg = any(r.table == "iceberg" for r in rules)
    if iceberg and t.catalog_type == "sql" and not t.catalog_uri and s.storage.type != "fs":
        raise ConfigError(
            "tables.catalog_uri is needed for Iceberg tables on storage.type = "
            f"{s.storage.type!r} (the default SQLite catalog lives in a local storage.root), e.g. "
            '"postgresql+psycopg://user@host/catalog"'
        )
    if iceberg and t.catalog_type == "rest" and not t.catalog_options.get("uri"):
        raise ConfigError('tables.catalog_type = "rest" needs tables.catalog_options.uri (the REST server)')


def _check_rule(where: str, rule: DatasetRule) -> None:
    if rule.types not in ("compatible", "exact"):
        raise ConfigError(f"{where}: types must be compatible or exact, got {rule.types!r}")
    if rule.partition not in ("received", "event"):
        raise ConfigError(f"{where}: partition must be received or event, got {rule.partition!r}")
    if (rule.partition == "event") != bool(rule.time_column):
        raise ConfigError(f'{where}: partition = "event" and time_column go together (the timestamp column)')
    if rule.granularity not in ("hour", "day"):
        raise ConfigError(f"{where}: granularity must be hour or day, got {rule.granularity!r}")
    for name in rule.fields:
        if name.lower() in ("date", "hour") or not name or "/" in name or "=" in name:
            raise ConfigError(f"{where}: {name!r} cannot be a partition field")
    if len(set(rule.fields)) != len(rule.fields) or rule.time_column in rule.fields:
        raise ConfigError(f"{where}: fields must be distinct columns, other than time_column")
    if rule.schema not in ("separate", "evolve", "strict"):
        raise ConfigError(f"{where}: schema must be separate, evolve or strict, got {rule.schema!r}")
    try:
        declared_columns(rule.columns)
    except ConfigError as exc:
        raise ConfigError(f"{where}: columns: {exc}") from None
    if rule.table not in TABLE_FORMATS:
        raise ConfigError(f"{where}: table must be one of {', '.join(TABLE_FORMATS)}, got {rule.table!r}")
    if rule.table != "none" and rule.schema == "separate":
        raise ConfigError(
            f"{where}: table = {rule.table!r} needs schema = evolve or strict (a table has one schema; "
            "separate keeps files of unrelated schemas side by side)"
        )
    if rule.max_partitions <= 0:
        raise ConfigError(f"{where}: max_partitions must be positive, got {rule.max_partitions}")


def local_only(location: str) -> bool:
    """Whether a server location takes connections from this machine only (loopback or a unix socket)."""
    scheme, _, rest = location.partition("://")
    if scheme == "grpc+unix":
        return True
    host = rest.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # 0.0.0.0 and :: are addresses (not loopback); other names may resolve anywhere
        return False
