"""Parsing one setting's value by the type its dataclass field declares (``parse_value``).

Values come from TOML files, environment variables (as dynaconf parses them) or ``overrides``, so a
number may arrive as a string. Booleans take true/false/1/0/yes/no; sizes (the ``*_bytes`` fields and
``multipart_threshold``) take an integer or a string with a unit (``"64MiB"``, ``"1GB"``); durations are
seconds; storage options become strings (OpenDAL wants them so). A value that does not fit raises
:class:`ConfigError` naming the setting.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from flight_writer.config.settings import ConfigError

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


def parse_value(name: str, hint: Any, value: Any) -> Any:
    """``value`` as the type ``hint`` of the setting ``name`` (``section.key``, used in the error)."""
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
        if isinstance(value, str):  # "a,b" (an environment variable): a list too
            value = [v.strip() for v in value.split(",") if v.strip()]
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
