"""The documentation site builds with ``mkdocs build --strict`` (a broken link or anchor is an error); its
configuration reference is what ``python -m flight_writer.config.reference`` prints, with every setting; every
command of ``flight-writer --help`` has a page naming each of its options; the README's links into docs/
resolve. Its code blocks are run by test_readme.py.

MkDocs and Material are the docs extras (``pip install mkdocs mkdocs-material``): without them the build is
skipped with the reason, except under ``CI=true``, where it fails."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys

import pytest

from flight_writer.config import Settings
from flight_writer.config import reference as ref
from flight_writer.config.live import flat
from flight_writer.config.settings import ConfigError

from helpers import REPO

PAGE = REPO / "docs" / "reference" / "configuration.md"
CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def test_site_builds_strict(tmp_path):
    absent = [name for name in ("mkdocs", "material") if importlib.util.find_spec(name) is None]
    if absent:
        reason = f"needs {' and '.join(absent)} (pip install mkdocs mkdocs-material) to build docs/"
        if CI:
            pytest.fail(reason)
        pytest.skip(reason)
    site = tmp_path / "site"
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(REPO / "mkdocs.yml"), "-d", str(site)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,  # the build must not depend on the folder it runs in
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "WARNING" not in done.stderr, done.stderr
    quick_start = (site / "quickstart" / "index.html").read_text()
    assert "It prints a progress bar" in quick_start  # README's quick start, included
    assert "server-location" in (site / "reference" / "configuration" / "index.html").read_text()


# -- the configuration reference ------------------------------------------------------------------------------
def test_configuration_page_is_what_the_generator_prints():
    assert PAGE.read_text(encoding="utf-8") == ref.render(), (
        "docs/reference/configuration.md differs from the generator's output: run "
        ".venv/bin/python -m flight_writer.config.reference > docs/reference/configuration.md"
    )


def test_generator_command_prints_the_page():
    done = subprocess.run(
        [sys.executable, "-m", "flight_writer.config.reference"], capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == PAGE.read_text(encoding="utf-8")


def test_configuration_page_has_every_setting():
    text = PAGE.read_text(encoding="utf-8")
    for name in flat(Settings()):
        section, key = name.split(".", 1)
        if name == "datasets.rules":
            heading, env = "### `[[datasets.rules]]`", "FLIGHT_WRITER_DATASETS__RULES"
        elif name == "storage.options":
            heading, env = "### `storage.options.<name>`", "FLIGHT_WRITER_STORAGE__OPTIONS__<NAME>"
        else:
            heading, env = f"### `{name}`", f"FLIGHT_WRITER_{section.upper()}__{key.upper()}"
        assert heading in text, f"{name} is missing from the configuration reference"
        entry = text.split(heading, 1)[1].split("\n### ", 1)[0]
        assert f"`{env}`" in entry, f"{name}: no environment variable {env}"
        assert "- Reloads on SIGHUP: " in entry and "- Default: " in entry and "- Type: " in entry, entry


def test_reference_says_what_reloads_as_live_py_decides():
    rows = {row.name: row for row in ref.settings()}
    assert rows["writer.compression"].live == rows["server.max_streams"].live == "yes"
    assert rows["log.level"].live == rows["metrics.ready_max_queue"].live == "yes"
    assert rows["writer.threads"].live.startswith("no")  # the pool is not rebuilt
    assert rows["storage.type"].live.startswith("no") and rows["queue.max_bytes"].live.startswith("no")
    assert rows["auth.principals_file"].live.startswith("yes, while auth stays on")


def test_reference_types_defaults_and_descriptions():
    rows = {row.name: row for row in ref.settings()}
    assert rows["queue.max_bytes"].kind.startswith("size") and rows["queue.max_bytes"].default == "536870912 (512 MiB)"
    assert rows["server.max_batch_bytes"].kind == "integer"  # no units: values.py does not take them there
    assert rows["server.location"].default == '"grpc://127.0.0.1:8815"'
    assert rows["queue.url"].default == '["nats://127.0.0.1:4222"]'
    assert rows["storage.startup_check"].kind == "boolean" and rows["storage.startup_check"].default == "true"
    assert rows["datasets.fields"].default == "[]" and rows["datasets.columns"].default == "{}"
    # a comment's continuation lines, and a comment going on from the setting above ("... or this many rows")
    assert rows["server.location"].description.endswith("needs auth.principals_file or allow_anonymous")
    assert rows["writer.max_file_rows"].description.startswith("a buffer is written as one file when")
    assert "<stream>" in rows["queue.stream"].description and "&lt;stream&gt;" in PAGE.read_text()
    assert "(see [security.md](../security.md))" in PAGE.read_text()  # the settings file's "docs/security.md"


def test_comment_parser():
    text = """# header
[server]
location = "grpc://h:1#x" # where # it listens;
                          # beyond loopback too
ack_history = 5           # ack's history

[storage.options]         # anything else
"""
    sections, keys, example = ref.comments(text)
    assert keys == {"server.location": "where # it listens; beyond loopback too", "server.ack_history": "ack's history"}
    assert sections == {"server": "", "storage.options": "anything else"}
    assert example == ""


def test_a_setting_without_a_comment_is_an_error():
    text = ref.settings_file_text().replace("# Arrow bytes of one record batch", "")
    with pytest.raises(ConfigError, match=r"server\.max_batch_bytes has no comment"):
        ref.settings(text)


# -- the command line ------------------------------------------------------------------------------------------
def _help(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "flight_writer.cli", *args, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def commands() -> list[str]:
    listing = _help().split("positional arguments:", 1)[1].split("options:", 1)[0]
    return re.findall(r"^ {4}(\S+)", listing, re.M)


def test_every_command_has_a_page_with_its_options():
    names = commands()
    assert {"serve", "check", "hash-secret", "new-token", "status", "top", "send"} <= set(names), names
    nav = (REPO / "mkdocs.yml").read_text()
    index = (REPO / "docs" / "cli" / "index.md").read_text()
    for name in names:
        page = REPO / "docs" / "cli" / f"{name}.md"
        assert page.is_file(), f"flight-writer {name} has no page docs/cli/{name}.md"
        assert f"cli/{name}.md" in nav, f"docs/cli/{name}.md is not in mkdocs.yml's nav"
        assert f"({name}.md)" in index, f"docs/cli/index.md does not link {name}"
        text = page.read_text()
        assert text.startswith(f"# flight-writer {name}\n"), page
        options = _help(name).split("\noptions:\n", 1)[1]  # the option lines, not the description's examples
        for option in set(re.findall(r"^ {2}(?:-\w[ ,\w]*, )?(--[a-z][\w-]*)", options, re.M)) - {"--help"}:
            where = text
            if option in ("--location", "--tls-ca", "--token") and "(index.md#reaching-a-server)" in text:
                where = index  # the connection options, said once for every command that reaches a server
            assert f"`{option}" in where, f"docs/cli/{name}.md does not say what {option} does"


# -- the README ---------------------------------------------------------------------------------------------------
def test_readme_links_resolve():
    text = (REPO / "README.md").read_text()
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [link for link in links if "://" not in link]
    assert local, "the README links into docs/"
    for link in local:
        assert (REPO / link).exists(), f"README.md links {link}, which does not exist"
    nav = (REPO / "mkdocs.yml").read_text()
    for link in local:
        if link.startswith("docs/") and link.endswith(".md"):
            assert link.removeprefix("docs/") in nav, f"README.md links {link}, which is not in the site's nav"


def test_readme_keeps_the_queue_package_reason_findable():
    readme, development = (REPO / "README.md").read_text(), (REPO / "docs" / "development.md").read_text()
    assert "not a top-level `queue` package" in readme
    assert "would shadow\nPython's standard-library `queue` module" in development


def test_settings_dataclass_fields_are_documented_in_order():
    """The page follows the dataclasses' order (settings.toml's too)."""
    order = [name for name in flat(Settings()) if name != "datasets.rules"]
    assert [row.name for row in ref.settings()] == order
