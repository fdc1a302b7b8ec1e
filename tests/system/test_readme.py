"""The code blocks of README.md and docs/ that say they run, run as written against `flight-writer serve`.

A block right after a line ``<!-- test: NAME -->`` is run (``<!-- test: NAME needs=java -->``: only where
``java`` is installed). A page's marked blocks run in order, in a fresh folder, against a fresh server whose
storage is ``./data`` of that folder (as ``make serve`` writes ``./data`` of the repository), with
``FLIGHT_WRITER_URL`` set to the server and ``.venv`` linked to this suite's virtual environment, so blocks
work as pasted: ``python`` blocks run with this Python, ``sh`` blocks with ``bash -e -o pipefail``. Then the
page's checks below look at what the blocks printed. Every page with a marked block is run here; a block
whose needs are missing is skipped with a reason (failed under ``CI=true``).
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers import REPO, write_config

MARKED = re.compile(
    r"^<!-- test: (?P<name>[\w-]+)(?: needs=(?P<needs>[\w,-]+))? -->\n```(?P<lang>\w+)\n(?P<code>.*?)^```[ \t]*$",
    re.M | re.S,
)
MARKER_LINE = re.compile(r"^<!-- test: ", re.M)  # a marker opens a line; one inside a sentence is not one
LANGUAGES = ("python", "sh")
BLOCK_TIMEOUT = 180  # seconds; Spark's first start is the slowest
CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@dataclass(frozen=True)
class Block:
    page: str  # relative to the repository
    name: str
    lang: str
    code: str
    needs: tuple[str, ...]


def marked_blocks(page: str) -> list[Block]:
    """The blocks of ``page`` marked to run, in order."""
    text = (REPO / page).read_text(encoding="utf-8")
    blocks = [
        Block(page, m["name"], m["lang"], m["code"], tuple(filter(None, (m["needs"] or "").split(","))))
        for m in MARKED.finditer(text)
    ]
    markers = len(MARKER_LINE.findall(text))
    assert markers == len(blocks), f"{page}: a '<!-- test: ' marker is not right before a code block"
    names = [b.name for b in blocks]
    assert len(names) == len(set(names)), f"{page}: test names repeat: {names}"
    for b in blocks:
        assert b.lang in LANGUAGES, f"{page}: block {b.name!r} is {b.lang}; the runner takes {LANGUAGES}"
    return blocks


def pages_with_blocks() -> list[str]:
    pages = ["README.md", *sorted(str(p.relative_to(REPO)) for p in (REPO / "docs").rglob("*.md"))]
    return [page for page in pages if MARKER_LINE.search((REPO / page).read_text(encoding="utf-8"))]


def missing(needs: tuple[str, ...]) -> list[str]:
    absent = []
    for need in needs:
        if need == "java":
            if not shutil.which("java"):
                absent.append("java (apt-get install openjdk-17-jre-headless)")
            try:
                import pyspark  # noqa: F401
            except ImportError:
                absent.append("pyspark (the test extras)")
        else:
            raise AssertionError(f"unknown need {need!r}")
    return absent


def run_block(block: Block, folder: Path, location: str | None) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(folder),
        "LANG": "C.UTF-8",
        **({"FLIGHT_WRITER_URL": location} if location else {}),
        "SPARK_LOCAL_IP": "127.0.0.1",  # Spark binds to loopback, whatever the host's name resolves to
        **{k: v for k, v in os.environ.items() if k == "JAVA_HOME"},
    }
    if block.lang == "python":
        script = folder / f"block_{block.name}.py"  # not duckdb.py: it would shadow the module it imports
        script.write_text(block.code)
        cmd = [sys.executable, str(script)]
    else:
        cmd = ["bash", "-e", "-o", "pipefail", "-c", block.code]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=BLOCK_TIMEOUT, cwd=folder, env=env)
    assert done.returncode == 0, (
        f"{block.page}, block {block.name!r} exited {done.returncode}\n{done.stdout}\n{done.stderr}"
    )
    return done


# -- what the pages' blocks must print ------------------------------------------------------------------------
Outputs = dict[str, subprocess.CompletedProcess[str]]


def check_quick_start(out: Outputs) -> None:
    assert "sent 3 rows" in out["send"].stdout and "seqs 1" in out["send"].stdout, out["send"].stdout
    table = out["query"].stdout
    assert re.search(r"api\s*│\s*2\s*│\s*10\.25\s*│\s*2025-11-2[45] ", table), table  # shown in the local time zone
    assert re.search(r"db\s*│\s*1\s*│\s*3\.1\s*│", table), table


def check_first_program(out: Outputs) -> None:
    lines = [ast.literal_eval(line) for line in out["client"].stdout.splitlines()]  # printed dicts
    assert lines[0] == {"seq": 1, "rows": 3, "state": "queued", "id": "batch-0"}
    assert [a["state"] for a in lines[3]["acks"]] == ["queued"] * 3
    assert lines[4] == {"durable_through": 3, "committed_through": 3}
    assert [a["state"] for a in lines[5]["acks"]] == ["durable"] * 3
    assert all(a["file"].startswith("demo/spans/date=") for a in lines[5]["acks"])
    assert lines[6]["rows_written"] == 9
    assert out["adbc"].stdout == "2\n"
    assert "Warning" not in out["adbc"].stderr, out["adbc"].stderr  # autocommit=True: the driver does not warn


def check_readers(out: Outputs) -> None:
    rows = ast.literal_eval(re.sub(r"datetime\.date\((\d+), (\d+), (\d+)\)", r"'\1-\2-\3'", out["duckdb"].stdout))
    assert [r[:3] for r in rows] == [("api", 3, 1), ("db", 1, 0)], rows  # the added column read beside the old
    assert re.fullmatch(r"\d{4}-\d+-\d+", rows[0][3]) and 0 <= rows[0][4] < 24, rows
    assert re.search(r"api\s*┆\s*3\s*┆\s*1", out["polars"].stdout), out["polars"].stdout
    assert out["pyarrow"].stdout == "4 ['service', 'latency_ms', 'ts', 'status', 'date', 'hour']\n"
    if "spark" in out:
        assert re.search(r"\|\s*api\|\s*3\|", out["spark"].stdout), out["spark"].stdout


def check_clients(out: Outputs) -> None:
    first, last = (ast.literal_eval(line) for line in out["durable"].stdout.splitlines())
    assert first == {"seq": 1, "rows": 2, "state": "queued", "id": "events-0"}
    assert last["state"] == "durable" and last["durable_through"] == 1 and len(last["files"]) == 1, last


def check_library(out: Outputs) -> None:
    assert re.fullmatch(r"grpc://127\.0\.0\.1:\d+\n", out["library"].stdout), out["library"].stdout


def check_check(out: Outputs) -> None:
    assert '"received_seq": 0' in out["check"].stdout, out["check"].stdout


def check_new_token(out: Outputs) -> None:
    assert re.match(
        r"token: fw_[0-9a-f]{12}_\S+\nhash:  \"sha256\$[0-9a-f]{12}\$[0-9a-f]{64}\"", out["new-token"].stdout
    )


def check_status(out: Outputs) -> None:
    assert "durable through seq" in out["status"].stdout and out["status"].stdout.endswith("\n0\n")


def check_tables(out: Outputs) -> None:
    text = out["tables"].stdout
    assert "'committed_through': 2" in text and "iceberg 2 api rows" in text, text
    assert "delta 3 rows" in text and "polars 1 web rows" in text, text


def check_send(out: Outputs) -> None:
    assert "sent 2 rows" in out["stdin"].stdout and "demo/events" in out["stdin"].stdout, out["stdin"].stdout


CHECKS: dict[str, Callable[[Outputs], None]] = {
    "README.md": check_quick_start,
    "docs/quickstart.md": check_first_program,
    "docs/guides/readers.md": check_readers,
    "docs/guides/clients.md": check_clients,
    "docs/reference/library.md": check_library,
    "docs/cli/check.md": check_check,
    "docs/cli/new-token.md": check_new_token,
    "docs/cli/status.md": check_status,
    "docs/cli/send.md": check_send,
    "docs/guides/tables.md": check_tables,
}
# pages whose server needs more settings than storage (TOML appended to its config)
SETTINGS = {
    "docs/guides/tables.md": (
        '[datasets]\ntable = "iceberg"\n[[datasets.rules]]\nmatch = "metrics/*"\ntable = "delta"\n'
    ),
}
# pages whose blocks need no server: they run without one
NO_SERVER = {"docs/reference/library.md", "docs/cli/new-token.md"}
# blocks of other pages a page's blocks build on, run first in the same folder and server
BEFORE: dict[str, list[tuple[str, str]]] = {
    "docs/guides/readers.md": [("README.md", "send")],  # the quick start's dataset
}


def test_every_page_with_blocks_is_checked():
    assert set(pages_with_blocks()) == set(CHECKS), "add what the new page's blocks must print to CHECKS"


@pytest.mark.parametrize("page", sorted(CHECKS))
def test_page_blocks_run_as_written(page, tmp_path, server_process):
    folder = tmp_path / "work"  # as the repository's folder: ./data is the server's storage, .venv this suite's
    folder.mkdir()
    (folder / ".venv").symlink_to(sys.prefix, target_is_directory=True)
    location = None
    if page not in NO_SERVER:
        config = write_config(tmp_path / "settings.toml", folder / "data", SETTINGS.get(page, ""))
        location = server_process(config).location
    before = [b for source, name in BEFORE.get(page, []) for b in marked_blocks(source) if b.name == name]
    out: Outputs = {}
    skipped = []
    for block in [*before, *marked_blocks(page)]:
        if absent := missing(block.needs):
            skipped.append(f"{block.name} (needs {', '.join(absent)})")
            continue
        out[block.name] = run_block(block, folder, location)
    CHECKS[page](out)
    if skipped:
        if CI:
            pytest.fail(f"{page}: blocks not run: {'; '.join(skipped)}")
        pytest.skip(f"{page}: the other blocks passed; not run: {'; '.join(skipped)}")
