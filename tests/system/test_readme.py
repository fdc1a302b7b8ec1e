"""The README's client example and DuckDB query work as written, against `flight-writer serve`."""

from __future__ import annotations

import ast
import re
import subprocess
import sys

import duckdb

from helpers import REPO, write_config


def block(lang: str, after: str = "") -> str:
    text = (REPO / "README.md").read_text()
    start = text.index(after) if after else 0
    return re.search(rf"```{lang}\n(.*?)```", text[start:], re.S).group(1)  # type: ignore[union-attr]


def test_client_example_and_duckdb_query(tmp_path, server_process):
    server = server_process(write_config(tmp_path / "s.toml", tmp_path / "data"))
    example = tmp_path / "example.py"
    example.write_text(block("python", "<!-- client example"))
    done = subprocess.run(
        [sys.executable, str(example)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"FLIGHT_WRITER_URL": server.location, "PATH": ""},
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    lines = [ast.literal_eval(line) for line in done.stdout.splitlines()]  # printed dicts
    assert lines[0] == {"seq": 1, "rows": 3, "state": "queued", "id": "batch-0"}
    assert [a["state"] for a in lines[3]["acks"]] == ["queued"] * 3
    assert lines[4] == {"durable_through": 3}
    assert [a["state"] for a in lines[5]["acks"]] == ["durable"] * 3
    assert lines[6]["rows_written"] == 9

    rows = duckdb.connect().execute(block("sql").replace("'data/", f"'{tmp_path}/data/")).fetchall()
    assert [(r[0], r[1]) for r in rows] == [("api", 6), ("db", 3)]
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", str(rows[0][3])) and 0 <= int(rows[0][4]) < 24


def test_library_example(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", block("python", "## As a library")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={"PATH": ""},
    )
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(r"grpc://127\.0\.0\.1:\d+\n", done.stdout)


def test_adbc_example(tmp_path, server_process):
    server = server_process(write_config(tmp_path / "s.toml", tmp_path / "data"))
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", block("python", "<!-- adbc example")],
        capture_output=True,
        text=True,
        timeout=60,
        env={"FLIGHT_WRITER_URL": server.location, "PATH": ""},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "2\n"
    assert len(list((tmp_path / "data" / "spans").rglob("*.parquet"))) == 1
