"""Which settings a running server may change (SIGHUP, ``Service.reload``) and which need a restart.

``server.max_*``, ``queue.put_timeout``, ``writer.*`` (but ``writer.threads``: the pool is not rebuilt),
``flight_sql.*``, ``metrics.ready_*`` and ``log.*`` apply at once; ``auth.principals_file`` too while auth
stays on (the caller says so with ``also_live``). Everything else is kept as it was until a restart.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from flight_writer.config.settings import Settings

# a prefix matches a whole section
LIVE = (
    "log.",
    "writer.",
    "server.max_",
    "queue.put_timeout",
    "flight_sql.",
    "metrics.ready_",
)
NOT_LIVE = ("writer.threads",)  # the pool is not rebuilt


def split_changes(
    old: Settings, new: Settings, also_live: tuple[str, ...] = ()
) -> tuple[Settings, list[str], list[str]]:
    """``(settings to run with, names changed now, names changed that need a restart)``: ``new`` with every
    setting that cannot change live kept as it is in ``old``."""
    before, after = flat(old), flat(new)
    changed = [name for name, value in after.items() if before[name] != value]
    live_names = (*LIVE, *also_live)
    live = [n for n in changed if n.startswith(live_names) and n not in NOT_LIVE]
    restart = [n for n in changed if n not in live]
    return replaced(new, {name: before[name] for name in restart}), live, restart


def flat(settings: Settings) -> dict[str, Any]:
    """``{"section.key": value}`` of every setting (storage options as one value)."""
    return {
        f"{section.name}.{f.name}": getattr(getattr(settings, section.name), f.name)
        for section in dataclasses.fields(settings)
        for f in dataclasses.fields(getattr(settings, section.name))
    }


def replaced(settings: Settings, values: dict[str, Any]) -> Settings:
    """``settings`` with some ``section.key`` values replaced."""
    sections: dict[str, dict[str, Any]] = {}
    for name, value in values.items():
        section, key = name.split(".", 1)
        sections.setdefault(section, {})[key] = value
    return dataclasses.replace(
        settings,
        **{name: dataclasses.replace(getattr(settings, name), **keys) for name, keys in sections.items()},
    )
