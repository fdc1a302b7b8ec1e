"""The configuration reference page, generated: ``python -m flight_writer.config.reference`` prints
docs/reference/configuration.md (a test keeps the committed page equal to this output).

One source of truth: each setting's key, type and default come from the dataclasses in ``settings.py``, its
description from its comment in ``configs/settings.toml`` (the line after the value, and the comment lines
under it), whether a running server takes a change on SIGHUP from ``live.py``, and the environment variable
from ``load.py``'s prefix and seed variables. A setting without a comment in the file is an error, so the
page cannot leave one out.
"""

from __future__ import annotations

import dataclasses
import re
import sys
import tomllib
import typing
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from flight_writer.config.live import replaced, split_changes
from flight_writer.config.load import ENV_PREFIX, SEED_VARIABLES
from flight_writer.config.settings import ConfigError, DatasetRule, Settings
from flight_writer.config.values import parse_value

__all__ = ["Setting", "comments", "main", "render", "settings", "settings_file_text"]

REPO_FILE = Path(__file__).resolve().parents[2] / "configs" / "settings.toml"
# Live only in a case live.py cannot see: Service.reload passes it as also_live while auth stays on
ALSO_LIVE = {
    "auth.principals_file": "yes, while auth stays on: the file is read again on every SIGHUP (a new name too); "
    "setting it where it was empty, or emptying it, needs a restart",
}


@dataclasses.dataclass(frozen=True)
class Setting:
    """One row of the reference."""

    section: str  # "server", "storage.options", "datasets"
    key: str
    kind: str  # how a value is written
    default: str  # as TOML writes it
    env: str
    live: str
    description: str

    @property
    def name(self) -> str:
        return f"{self.section}.{self.key}"


def settings_file_text() -> str:
    """configs/settings.toml of this checkout, else the copy the package ships (an installed package)."""
    if REPO_FILE.is_file():
        return REPO_FILE.read_text(encoding="utf-8")
    return resources.files("flight_writer").joinpath("settings.toml").read_text(encoding="utf-8")


def comments(text: str) -> tuple[dict[str, str], dict[str, str], str]:
    """From the settings file: (section -> comment, ``section.key`` -> comment, the commented-out
    ``[[datasets.rules]]`` example as TOML). A comment goes on over the comment-only lines indented under it."""
    sections: dict[str, list[str]] = {}
    keys: dict[str, list[str]] = {}
    example: list[str] = []
    section = ""
    current: list[str] | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            current = None
            continue
        if line.startswith("#"):
            body = line[1:].strip()
            if example or body.startswith("[[datasets.rules]]"):
                example.append((line[2:] if line.startswith("# ") else line[1:]).rstrip())
            current = None
            continue
        if stripped.startswith("#"):  # an indented comment: the one above goes on
            if current is not None:
                current.append(stripped[1:].strip())
            continue
        value, comment = _split_comment(line)
        if value.startswith("["):
            section = value.strip("[] ")
            current = sections.setdefault(section, [])
        else:
            key = value.split("=", 1)[0].strip()
            current = keys.setdefault(f"{section}.{key}", [])
        if comment:
            current.append(comment)
    return (
        {k: " ".join(v) for k, v in sections.items()},
        {k: " ".join(v) for k, v in keys.items()},
        "\n".join(example),
    )


def _split_comment(line: str) -> tuple[str, str]:
    """``key = value  # comment`` -> (``key = value``, ``comment``): the first ``#`` outside the TOML value."""
    start = 0
    while (at := line.find("#", start)) >= 0:
        before = line[:at].strip()
        if (before.startswith("[") and before.endswith("]")) or _parses(before):
            return before, line[at + 1 :].strip()
        start = at + 1
    return line.strip(), ""


def _parses(text: str) -> bool:
    try:
        tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return False
    return True


def settings(text: str | None = None) -> list[Setting]:
    """Every setting, in the order of the dataclasses; ``ConfigError`` if one has no comment in the file."""
    section_notes, key_notes, _ = comments(settings_file_text() if text is None else text)
    defaults = Settings()
    rows: list[Setting] = []
    for section in dataclasses.fields(Settings):
        cls = type(getattr(defaults, section.name))
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if section.name == "datasets" and f.name == "rules":
                continue  # [[datasets.rules]] is a list of tables: its own part of the page
            name = f"{section.name}.{f.name}"
            # [storage.options] takes any key: its comment is the section's
            description = (section_notes if f.name == "options" else key_notes).get(name, "")
            if not description:
                raise ConfigError(f"{name} has no comment in configs/settings.toml: describe it there")
            if description.startswith("...") and rows and rows[-1].section == section.name:
                # "... or this many rows" goes on from the setting above: say both
                description = f"{rows[-1].description.removesuffix('...').rstrip()} ... {description[3:].lstrip()}"
            value = getattr(getattr(defaults, section.name), f.name)
            rows.append(
                Setting(
                    section=section.name,
                    key=f.name,
                    kind=_kind(name, hints[f.name]),
                    default=_toml(value, table=hints[f.name] == tuple[tuple[str, str], ...]),
                    env=_env(section.name, f.name),
                    live=_live(name),
                    description=description,
                )
            )
    return rows


def _kind(name: str, hint: Any) -> str:
    if hint is bool:
        return "boolean"
    if hint is int:
        try:  # a size takes a unit (values.py decides which settings are sizes)
            parse_value(name, hint, "1KiB")
            return "size: bytes, or a string with a unit"
        except ConfigError:
            return "integer"
    if hint is float:
        return "number"
    if hint is str:
        return "string"
    if hint == tuple[str, ...]:
        return "list of strings"
    if hint == tuple[tuple[str, str], ...]:
        return 'table of column = "type"'
    return "table of strings"


def _toml(value: Any, table: bool = False) -> str:
    """A default as TOML writes it (a size with its binary unit beside it); ``table``: pairs as a table."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, int):
        for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
            if value >= size and value % size == 0:
                return f"{value} ({value // size} {unit})"
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, Mapping):
        return "{}" if not value else "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    if table:
        return "{}" if not value else "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value) + " }"
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def _env(section: str, key: str) -> str:
    if key == "options":
        return f"{ENV_PREFIX}_{section.upper()}__OPTIONS__<NAME>"
    return f"{ENV_PREFIX}_{section.upper()}__{key.upper()}"


def _seed(name: str) -> str | None:
    for var, (section, key) in SEED_VARIABLES.items():
        if f"{section}.{key}" == name:
            return var
    return None


def _live(name: str) -> str:
    """Whether a running server takes a change of ``name`` on SIGHUP, as live.py decides it."""
    if name in ALSO_LIVE:
        return ALSO_LIVE[name]
    old = Settings()
    changed = replaced(old, {name: object()})  # any other value: split_changes only compares
    _, live, restart = split_changes(old, changed)
    if name in live:
        return "yes"
    assert name in restart, name
    return "no, needs a restart"


# -- the page --------------------------------------------------------------------------------------------
INTRO = """\
# Configuration reference

<!-- Generated by `python -m flight_writer.config.reference > docs/reference/configuration.md` from the
settings dataclasses (flight_writer/config/settings.py), the comments in configs/settings.toml and
flight_writer/config/live.py. Do not edit by hand: change those and run the command again
(tests/system/test_docs.py fails while the page and the command's output differ). -->

Every setting of `flight-writer serve`, with its type, its default, the environment variable that sets it,
and whether a running server takes a new value when it gets SIGHUP. `flight-writer config` prints the same
settings as a commented TOML file to start from.

## Where settings come from

Settings are read once at startup into one validated, typed object (`flight_writer.config.Settings`).
Sources, later ones winning:

1. the defaults below;
2. a TOML file: `flight-writer serve --config FILE` (`make serve` passes `configs/settings.toml`);
3. the variables {seeds} (for {seed_names}), unless the setting's own variable is set too;
4. `{prefix}_<SECTION>__<KEY>`, e.g. `{prefix}_WRITER__COMPRESSION=snappy`: each value is parsed as TOML
   (`true`, `1.5`, `["a", "b"]`, `{{ id = "int64" }}`), and a string that is not TOML stays a string. A list
   of strings also takes `a,b,c`;
5. `overrides={{...}}`, for a library user (`load_settings`, see [Library API](library.md)).

The client commands' variables (`{prefix}_URL`, `{prefix}_TOKEN`, `{prefix}_USER`, `{prefix}_PASSWORD`)
are not settings: the server ignores them, so one shell can run both.

Values:

- **size**: an integer number of bytes, or a string with a unit, in any case: `"64MiB"`, `"1.5GiB"`,
  `"1GB"`. `KB`, `MB`, `GB`, `TB` (also `k`, `m`, `g`, `t`) count in 1000s, `KiB`, `MiB`, `GiB`, `TiB` in
  1024s. Only the settings whose type says *size* take a unit; the other byte counts
  (`server.max_batch_bytes`, `server.max_metadata_bytes`) take integers.
- **number**: durations are in seconds (`30`, `0.5`).
- **boolean**: `true` or `false` (from the environment also `1`, `0`, `yes`, `no`).

An unknown setting or an invalid value stops startup with one line naming it and exit status 2, e.g.
`flight-writer: invalid configuration: writer.compression must be one of zstd, snappy, lz4, gzip, none, got
'brotli2'`.

**Secrets** come from the environment only: a settings file holding `queue.password`, `queue.token` or a
`storage.options` key that names a secret (`secret`, `password`, `token`, `credential`, `account_key`,
`sas`, `private_key`) is refused. Logs and `status` show secret-looking storage options (also any name with
`key`) and the password of a URL as `***`.

**Live reload**: `kill -HUP <pid>` reads the file and the environment again. Settings marked *yes* under "Reloads on
SIGHUP" change at once (files already filling keep the writer settings they started with); any other change is logged by
name, "needs a restart", and kept as it was. An invalid file changes nothing. See
[Running the server](../operations/running.md#live-reload-sighup).
"""


def render(text: str | None = None) -> str:
    """The whole page."""
    source = settings_file_text() if text is None else text
    section_notes, _, example = comments(source)
    seeds = ", ".join(f"`{var}`" for var in SEED_VARIABLES)
    seed_names = ", ".join(f"`{s}.{k}`" for s, k in SEED_VARIABLES.values())
    out = [INTRO.format(prefix=ENV_PREFIX, seeds=seeds, seed_names=seed_names)]
    rows = settings(source)
    for section in dict.fromkeys(row.section for row in rows):
        out.append(f"\n## [{section}]\n")
        if note := section_notes.get(section):
            out.append(f"\n{_markdown(note)}\n")
        for row in (r for r in rows if r.section == section):
            out.append(_entry(row))
        if section == "datasets":
            out.append(_rules(example))
    return "".join(out)


def _entry(row: Setting) -> str:
    env = f"`{row.env}`"
    if seed := _seed(row.name):
        env += f", or `{seed}`"
    key = f"{row.section}.options.<name>" if row.key == "options" else row.name
    anchor = row.name.replace(".", "-").replace("_", "-")
    return (
        f"\n### `{key}` {{ #{anchor} }}\n\n"
        f"{_markdown(row.description)}\n\n"
        f"- Type: {row.kind}\n"
        f"- Default: `{row.default}`\n"
        f"- Environment: {env}\n"
        f"- Reloads on SIGHUP: {row.live}\n"
    )


def _rules(example: str) -> str:
    fields = [f.name for f in dataclasses.fields(DatasetRule)]
    keys = ", ".join(f"`{name}`" for name in fields)
    return (
        "\n### `[[datasets.rules]]` { #datasets-rules }\n\n"
        "Settings for the datasets whose name matches a glob: each rule has `match` (a dataset name or glob "
        f"pattern, `*` matching `/` too) and any of {keys}; the keys it leaves out come from `[datasets]`. "
        "The first rule that matches a dataset wins. In the environment, "
        f"`{ENV_PREFIX}_DATASETS__RULES` takes them as a TOML array of inline tables "
        '(`[{ match = "team-a/*", schema = "strict" }]`), replacing the file\'s rules. What each key does: '
        "[Datasets and partitions](../concepts/datasets.md).\n\n"
        "- Type: list of tables\n"
        "- Default: none\n"
        f"- Environment: `{ENV_PREFIX}_DATASETS__RULES`\n"
        f"- Reloads on SIGHUP: {_live('datasets.rules')}\n\n"
        f"```toml\n{example}\n```\n"
    )


def _markdown(text: str) -> str:
    """A comment as Markdown text: ``<``, ``>`` and ``&`` outside code spans escaped, so that ``<stream>`` shows
    and ``> 0`` is no quote; a pointer to a docs page (``docs/security.md``) becomes a link to it."""
    parts = text.split("`")
    for i in range(0, len(parts), 2):  # even parts are outside code spans
        part = parts[i].replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        parts[i] = re.sub(r"docs/([\w/.-]+\.md(?:#[\w-]+)?)", lambda m: f"see [{m.group(1)}](../{m.group(1)})", part)
    return "`".join(parts)


def main() -> int:
    sys.stdout.write(render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
