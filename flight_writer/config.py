"""Settings: read once at the edge, validated into frozen dataclasses, passed down.

Sources, lowest precedence first:

1. the defaults below (``configs/settings.toml`` lists the same values with a comment each; a test
   keeps the two in step);
2. a TOML file given with ``flight-writer serve --config FILE`` (or ``load_settings(config_file=...)``);
3. the seed's variables ``QUEUE_TYPE``, ``STORAGE_TYPE`` and ``STORAGE_PATH`` (queue.type, storage.type,
   storage.root), unless the matching variable of the next line is set;
4. ``FLIGHT_WRITER_<SECTION>__<KEY>``, e.g. ``FLIGHT_WRITER_QUEUE__MAX_BYTES=256MiB`` (values parsed as TOML,
   as dynaconf does);
5. ``overrides`` passed by a library user.

Sizes take an integer or a string with a unit (``"64MiB"``, ``"1GB"``); durations are seconds.
Any invalid value raises :class:`ConfigError` naming the setting; the CLI prints it as one line.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import ipaddress
import os
import re
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

COMPRESSIONS = ("zstd", "snappy", "lz4", "gzip", "none")
QUEUE_TYPES = ("memory", "wal")
FSYNC_POLICIES = ("always", "interval", "never")
WAL_COMPRESSIONS = ("lz4", "zstd", "none")
LOG_LEVELS = ("TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL")
ENV_PREFIX = "FLIGHT_WRITER"
SEED_VARIABLES = {
    "QUEUE_TYPE": ("queue", "type"),
    "STORAGE_TYPE": ("storage", "type"),
    "STORAGE_PATH": ("storage", "root"),
}
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
    ready_max_error_s: float = 60.0  # ... or while storage has failed for longer than this
    datasets: int = 20  # per-dataset figures in status and /metrics: this many busiest datasets; 0 = none


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
    datasets: DatasetSettings = field(default_factory=DatasetSettings)

    def masked(self) -> dict[str, Any]:
        """The settings as plain data with secret-looking storage options replaced by ``***`` and a
        password in the endpoint URL hidden."""
        data = dataclasses.asdict(self)
        data["storage"]["options"] = {
            k: ("***" if _MASKED_KEY.search(k) else v) for k, v in self.storage.options.items()
        }
        data["storage"]["endpoint"] = without_password(self.storage.endpoint)
        return data


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


def without_password(url: str) -> str:
    """``https://user:pass@host`` -> ``https://user:***@host``: URLs are logged and shown by ``status``."""
    return _USERINFO.sub(lambda m: f"//{m.group(1)}:***@", url)


_SECRET_KEY = re.compile(r"secret|password|token|credential|account_key|sas|private_key", re.IGNORECASE)
# shown as *** (README): any name with "key" too, e.g. access_key_id, server_side_encryption_customer_key
_MASKED_KEY = re.compile(_SECRET_KEY.pattern + "|key", re.IGNORECASE)
_USERINFO = re.compile(r"//([^/@:]*):[^/@]*@")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)\s*$", re.IGNORECASE)
_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1024**3,
    "t": 1000**4,
    "tb": 1000**4,
    "tib": 1024**4,
}
_SIZE_FIELDS = {
    "max_bytes",
    "max_file_bytes",
    "row_group_bytes",
    "segment_bytes",
    "upload_chunk_bytes",
    "multipart_threshold",
}


def load_settings(
    config_file: str | os.PathLike[str] | None = None,
    *,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Settings:
    """Read the file, the environment and ``overrides`` into a validated :class:`Settings`."""
    from dynaconf import Dynaconf

    files = []
    if config_file is not None:
        if not os.path.isfile(config_file):
            raise ConfigError(f"config file {os.fspath(config_file)!r} does not exist")
        files.append(os.fspath(config_file))
        _refuse_secrets_in(config_file)
    try:
        # dynaconf merges the file with FLIGHT_WRITER_<SECTION>__<KEY> variables (parsed as TOML values)
        conf = Dynaconf(settings_files=files, environments=False, envvar_prefix=ENV_PREFIX, merge_enabled=True)
        raw: dict[str, Any] = {}
        _merge(raw, conf.as_dict())
    except Exception as exc:  # dynaconf wraps TOML errors in several types
        raise ConfigError(f"config file {files[0] if files else ''!r} cannot be read: {exc}") from None
    for var, (section, key) in SEED_VARIABLES.items():
        # the seed's variables rank below our own prefixed ones
        if os.environ.get(var) and f"{ENV_PREFIX}_{section}__{key}".upper() not in os.environ:
            _merge(raw, {section: {key: os.environ[var]}})
    if overrides:
        _merge(raw, {s: dict(v) for s, v in overrides.items()})
    return build_settings(raw)


def _refuse_secrets_in(path: str | os.PathLike[str]) -> None:
    """Secrets come from the environment only: a file is copied, committed and shown around."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError):
        return  # dynaconf reports unreadable files
    options = data.get("storage", {}).get("options", {})
    for key in options if isinstance(options, dict) else ():
        if _SECRET_KEY.search(key):
            var = f"{ENV_PREFIX}_STORAGE__OPTIONS__{key.upper()}"
            raise ConfigError(
                f"storage.options.{key} is a secret: set it in the environment ({var}), not in {os.fspath(path)}"
            )


def build_settings(raw: Mapping[str, Mapping[str, Any]]) -> Settings:
    """Validate plain data (section -> key -> value) into :class:`Settings`."""
    sections = {f.name: f for f in dataclasses.fields(Settings)}
    built: dict[str, Any] = {}
    for name, values in raw.items():
        name = name.lower()
        if name not in sections:
            raise ConfigError(f"unknown settings section [{name}] (known: {', '.join(sections)})")
        if not isinstance(values, Mapping):
            raise ConfigError(f"[{name}] must be a table of settings, got {values!r}")
        if name == "datasets":
            built[name] = _build_datasets(values)
            continue
        built[name] = _build_section(name, sections[name].default_factory, values)  # type: ignore[misc]
    settings = Settings(**built)
    _check(settings)
    return settings


def _build_section(section: str, cls: type, values: Mapping[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        key = key.lower()
        if key not in hints:
            raise ConfigError(f"unknown setting {section}.{key}")
        kwargs[key] = _coerce(f"{section}.{key}", hints[key], value)
    return cls(**kwargs)


def _build_datasets(values: Mapping[str, Any]) -> DatasetSettings:
    """[datasets] and its [[datasets.rules]]: each rule starts from the defaults and needs a ``match``."""
    values = {k.lower(): v for k, v in values.items()}
    rules = values.pop("rules", [])
    defaults = _build_section("datasets", DatasetRule, values)
    if not isinstance(rules, list) or not all(isinstance(r, Mapping) for r in rules):
        raise ConfigError("datasets.rules must be a list of tables ([[datasets.rules]] with match = ...)")
    built = []
    for k, rule in enumerate(rules):
        rule = {key.lower(): v for key, v in rule.items()}
        match = rule.pop("match", None)
        if not isinstance(match, str) or not match:
            raise ConfigError(f"datasets.rules[{k}] needs match = a dataset name or glob pattern")
        override = _build_section(f"datasets.rules[{k}]", DatasetRule, rule)
        given = {key: getattr(override, key) for key in rule}
        built.append((match, dataclasses.replace(DatasetRule(**dataclasses.asdict(defaults)), **given)))
    return DatasetSettings(**dataclasses.asdict(defaults), rules=tuple(built))


def _coerce(name: str, hint: Any, value: Any) -> Any:
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    if hint is int:
        return _to_int(name, value)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ConfigError(f"{name} must be a number of seconds, got {value!r}")
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{name} must be a number of seconds, got {value!r}") from None
    if hint is str:
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise ConfigError(f"{name} must be a string, got {value!r}")
        return str(value)
    if hint == tuple[tuple[str, str], ...]:  # declared columns: names keep their case
        if not isinstance(value, Mapping) or not all(isinstance(v, str) for v in value.values()):
            raise ConfigError(f'{name} must be a table of column = "type", got {value!r}')
        return tuple((str(k), v) for k, v in value.items())
    if hint == tuple[str, ...]:
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{name} must be a list of strings, got {value!r}")
        return tuple(value)
    # Mapping[str, str]: OpenDAL wants every option value as a string.
    if not isinstance(value, Mapping):
        raise ConfigError(f"{name} must be a table of key = value, got {value!r}")
    return {str(k).lower(): _option_str(v) for k, v in value.items()}


def _option_str(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _to_int(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        if re.fullmatch(r"\s*-?\d+\s*", value):
            return int(value)
        if name.rsplit(".", 1)[-1] in _SIZE_FIELDS and (m := _SIZE.match(value)):
            unit = m.group(2).lower()
            if unit in _UNITS:
                return int(float(m.group(1)) * _UNITS[unit])
    raise ConfigError(f"{name} must be an integer, got {value!r}")


def _check(s: Settings) -> None:
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
    for key in ("max_bytes", "dedupe_window", "segment_bytes", "fsync_interval_ms"):
        positive(f"queue.{key}", getattr(s.queue, key))
    if s.queue.fsync not in FSYNC_POLICIES:
        raise ConfigError(f"queue.fsync must be one of {', '.join(FSYNC_POLICIES)}, got {s.queue.fsync!r}")
    if s.queue.compression not in WAL_COMPRESSIONS:
        raise ConfigError(
            f"queue.compression must be one of {', '.join(WAL_COMPRESSIONS)}, got {s.queue.compression!r}"
        )
    if s.server.shutdown_timeout < 0:
        raise ConfigError(f"server.shutdown_timeout must be >= 0, got {s.server.shutdown_timeout!r}")
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
    positive("metrics.ready_max_error_s", s.metrics.ready_max_error_s)
    if not 0 <= s.metrics.datasets <= 1000:
        raise ConfigError(f"metrics.datasets must be from 0 to 1000, got {s.metrics.datasets!r}")
    for where, rule in [("datasets", s.datasets), *((f"datasets.rules {m!r}", r) for m, r in s.datasets.rules)]:
        _check_rule(where, rule)
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
    from flight_writer.schemas import SchemaError, declared_schema

    try:
        declared_schema(rule.columns)
    except SchemaError as exc:
        raise ConfigError(f"{where}: columns: {exc}") from None
    if rule.max_partitions <= 0:
        raise ConfigError(f"{where}: max_partitions must be positive, got {rule.max_partitions}")


def _merge(into: dict[str, Any], other: Mapping[str, Any]) -> None:
    for key, value in other.items():
        key = key.lower()
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = dict(value) if isinstance(value, Mapping) else value
