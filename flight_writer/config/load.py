"""Settings: read once at the edge, validated into frozen dataclasses, passed down.

Sources, lowest precedence first:

1. the defaults in ``settings.py`` (``configs/settings.toml`` lists the same values with a comment each; a test
   keeps the two in step);
2. a TOML file given with ``flight-writer serve --config FILE`` (or ``load_settings(config_file=...)``);
3. the seed's variables ``QUEUE_TYPE``, ``STORAGE_TYPE`` and ``STORAGE_PATH`` (queue.type, storage.type,
   storage.root), unless the matching variable of the next line is set;
4. ``FLIGHT_WRITER_<SECTION>__<KEY>``, e.g. ``FLIGHT_WRITER_QUEUE__MAX_BYTES=256MiB`` (values parsed as TOML,
   as dynaconf does);
5. ``overrides`` passed by a library user.

Sizes take an integer or a string with a unit (``"64MiB"``, ``"1GB"``); durations are seconds.
Any invalid value raises :class:`ConfigError` naming the setting; the CLI prints it as one line.

This module reads the sources into plain data (section -> key -> value) and builds :class:`Settings` from
it; ``settings.py`` holds the dataclasses, their defaults, ConfigError and masking, ``values.py`` parses one
value (sizes, booleans, numbers) and ``checks.py`` validates the whole.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from collections.abc import Mapping
from typing import Any

from flight_writer.config.checks import (
    COMPRESSIONS,
    FSYNC_POLICIES,
    LOG_LEVELS,
    QUEUE_TYPES,
    WAL_COMPRESSIONS,
    check_settings,
    local_only,
)
from flight_writer.config.settings import (
    SECRET_OPTION,
    AuthSettings,
    ConfigError,
    DatasetRule,
    DatasetSettings,
    FlightSqlSettings,
    LogSettings,
    MetricsSettings,
    MiB,
    QueueSettings,
    ServerSettings,
    Settings,
    StorageSettings,
    TableSettings,
    WriterSettings,
    without_password,
)
from flight_writer.config.values import parse_value

__all__ = [
    "COMPRESSIONS",
    "ENV_PREFIX",
    "FSYNC_POLICIES",
    "LOG_LEVELS",
    "QUEUE_TYPES",
    "SEED_VARIABLES",
    "WAL_COMPRESSIONS",
    "AuthSettings",
    "ConfigError",
    "DatasetRule",
    "DatasetSettings",
    "FlightSqlSettings",
    "LogSettings",
    "MetricsSettings",
    "MiB",
    "QueueSettings",
    "ServerSettings",
    "Settings",
    "StorageSettings",
    "TableSettings",
    "WriterSettings",
    "build_settings",
    "load_settings",
    "local_only",
    "without_password",
]

ENV_PREFIX = "FLIGHT_WRITER"
SEED_VARIABLES = {
    "QUEUE_TYPE": ("queue", "type"),
    "STORAGE_TYPE": ("storage", "type"),
    "STORAGE_PATH": ("storage", "root"),
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
        _merge(raw, {k: v for k, v in conf.as_dict().items() if not _client_variable(k, v)})
    except Exception as exc:  # dynaconf wraps TOML errors in several types
        raise ConfigError(f"config file {files[0] if files else ''!r} cannot be read: {exc}") from None
    for var, (section, key) in SEED_VARIABLES.items():
        # the seed's variables rank below our own prefixed ones
        if os.environ.get(var) and f"{ENV_PREFIX}_{section}__{key}".upper() not in os.environ:
            _merge(raw, {section: {key: os.environ[var]}})
    if overrides:
        _merge(raw, {s: dict(v) for s, v in overrides.items()})
    return build_settings(raw)


# FLIGHT_WRITER_URL, _TOKEN, _USER and _PASSWORD are the command-line clients' (status, top, send, check), not
# settings: a shell that has them set for the clients must still be able to run serve
CLIENT_VARIABLES = ("url", "token", "user", "password")


def _client_variable(name: str, value: Any) -> bool:
    return name.lower() in CLIENT_VARIABLES and not isinstance(value, Mapping)


def _refuse_secrets_in(path: str | os.PathLike[str]) -> None:
    """Secrets come from the environment only: a file is copied, committed and shown around."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError):
        return  # dynaconf reports unreadable files
    queue = data.get("queue", {})
    for key in ("password", "token"):
        if isinstance(queue, dict) and queue.get(key):
            var = f"{ENV_PREFIX}_QUEUE__{key.upper()}"
            raise ConfigError(f"queue.{key} is a secret: set it in the environment ({var}), not in {os.fspath(path)}")
    options = data.get("storage", {}).get("options", {})
    for key in options if isinstance(options, dict) else ():
        if SECRET_OPTION.search(key):
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
    check_settings(settings)
    return settings


def _build_section(section: str, cls: type, values: Mapping[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        key = key.lower()
        if key not in hints:
            raise ConfigError(f"unknown setting {section}.{key}")
        kwargs[key] = parse_value(f"{section}.{key}", hints[key], value)
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


def _merge(into: dict[str, Any], other: Mapping[str, Any]) -> None:
    for key, value in other.items():
        key = key.lower()
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = dict(value) if isinstance(value, Mapping) else value
