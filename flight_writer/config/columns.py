"""Declared column types (``[[datasets.rules]] columns``): a pyarrow type from its name, parsed at load time."""

from __future__ import annotations

import re
from collections.abc import Iterable

import pyarrow as pa

from flight_writer.config.settings import ConfigError

_TIMESTAMP = re.compile(r"timestamp\[(s|ms|us|ns)(?:,\s*tz=([^\]]+))?\]")
_DECIMAL = re.compile(r"decimal(128|256)?\((\d+),\s*(\d+)\)")
_LIST = re.compile(r"(large_)?list<(.+)>")


def parse_type(text: str) -> pa.DataType:
    """A pyarrow type from its name (``ConfigError`` if it is none)."""
    text = text.strip()
    if m := _TIMESTAMP.fullmatch(text):
        return pa.timestamp(m.group(1), m.group(2))
    if m := _DECIMAL.fullmatch(text):
        return (pa.decimal256 if m.group(1) == "256" else pa.decimal128)(int(m.group(2)), int(m.group(3)))
    if m := _LIST.fullmatch(text):
        return (pa.large_list if m.group(1) else pa.list_)(parse_type(m.group(2)))
    try:
        return pa.type_for_alias(text)
    except (ValueError, KeyError):
        raise ConfigError(f"unknown type {text!r} (int64, string, timestamp[us, tz=UTC], ...)") from None


def declared_columns(columns: Iterable[tuple[str, str]]) -> pa.Schema | None:
    """``(name, "type [not null]")`` pairs as a schema; None when there are none."""
    fields = []
    for name, spec in columns:
        text = spec.strip()
        not_null = text.lower().endswith(" not null")
        kind = parse_type(text[: -len(" not null")] if not_null else text)
        fields.append(pa.field(name, kind, nullable=not not_null))
    return pa.schema(fields) if fields else None
