"""examples/ run as pasted against `flight-writer serve --config configs/settings.toml` (what `make serve` runs),
and what each prints is true: the rows read back are the rows sent, and a re-send stores nothing twice."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.flight as flight

from helpers import REPO, action, read_dataset

EXAMPLES = REPO / "examples"
# every example, in the order the test runs them (read_back.py reads what the others sent)
ORDER = [
    "send_pyarrow.py",
    "durable_producer.py",
    "adbc_ingest.py",
    "polars_write.py",
    "pandas_to_sql.py",
    "flush_and_status.py",
    "read_back.py",
]
CONFIG = REPO / "configs" / "settings.toml"
SENT = re.compile(r"sent (\d+) rows to (examples/\w+)")


def test_every_example_is_run_and_listed():
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(ORDER), "add a new example to ORDER"
    listing = (EXAMPLES / "README.md").read_text()
    for name in ORDER:
        assert f"]({name})" in listing, f"{name} is not in examples/README.md"


def test_defaults_are_those_of_make_serve():
    assert "serve --config configs/settings.toml" in (REPO / "Makefile").read_text()
    settings = tomllib.loads(CONFIG.read_text())
    for name in ORDER:
        text = (EXAMPLES / name).read_text()
        assert f'os.environ.get("FLIGHT_WRITER_URL", "{settings["server"]["location"]}")' in text, name
        if "STORAGE_PATH" in text:
            assert f'os.environ.get("STORAGE_PATH", "{settings["storage"]["root"]}")' in text, name


def run(name: str, env: dict[str, str], cwd: Path) -> str:
    """One example as a user runs it (warnings are errors: a pasted example should print none); its stdout."""
    done = subprocess.run(
        [sys.executable, "-W", "error", str(EXAMPLES / name)],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "", **env},
        cwd=cwd,
    )
    assert done.returncode == 0, f"{name} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def printed_dicts(out: str) -> list[dict]:
    return [ast.literal_eval(line) for line in out.splitlines() if line.startswith("{")]


def sent(out: str) -> tuple[str, int]:
    """The example's last line, "sent N rows to DATASET...": (dataset, N)."""
    found = SENT.match(out.splitlines()[-1])
    assert found, out
    return found.group(2), int(found.group(1))


def durable_run(out: str, duplicates: int) -> tuple[str, int]:
    replies = [r for r in printed_dicts(out) if "id" in r]
    assert [r["id"] for r in replies] == [f"durable-example-{k}" for k in range(5)]
    assert [bool(r.get("duplicate")) for r in replies] == [True] * duplicates + [False] * (5 - duplicates)
    [last] = [r for r in printed_dicts(out) if "files" in r]  # the durable stream's last reply
    # durable_through is the server's (send_pyarrow.py's queued batches hold it back): the stream's own are stored
    assert last["state"] == "durable" and last["files"]
    assert all(f.startswith("examples/durable/") for f in last["files"])
    acks = [r for r in printed_dicts(out) if "file" in r]
    assert sorted(a["seq"] for a in acks) == sorted(r["seq"] for r in replies)
    assert {a["state"] for a in acks} == {"durable"}
    assert f"{duplicates} of 5 batches were duplicates" in out
    return sent(out)


def test_examples(tmp_path, server_process):
    root = tmp_path / "data"
    server = server_process(
        CONFIG, env={"FLIGHT_WRITER_SERVER__LOCATION": "grpc://127.0.0.1:0", "STORAGE_PATH": str(root)}
    )
    env = {"FLIGHT_WRITER_URL": server.location, "STORAGE_PATH": str(root)}
    ran = []
    rows: dict[str, int] = {}  # dataset -> rows stored, as the examples say

    out = run("send_pyarrow.py", env, tmp_path)
    ran.append("send_pyarrow.py")
    replies = printed_dicts(out)
    assert len(replies) == 3 and {r["state"] for r in replies} == {"queued"}
    dataset, n = sent(out)
    assert n == sum(r["rows"] for r in replies)
    rows[dataset] = n

    # the first run's failed attempt left three batches on the server: their re-sends are duplicates
    dataset, n = durable_run(run("durable_producer.py", env, tmp_path), duplicates=3)
    rows[dataset] = n
    # a second run re-sends everything: all duplicates, nothing stored again (checked in storage below)
    assert durable_run(run("durable_producer.py", env, tmp_path), duplicates=5) == (dataset, n)
    ran.append("durable_producer.py")

    out = run("adbc_ingest.py", env, tmp_path)
    ran.append("adbc_ingest.py")
    assert out.splitlines()[:2] == ["create: 3 rows stored", "append: 2 rows stored"]
    dataset, n = sent(out)
    rows[dataset] = n

    for name in ("polars_write.py", "pandas_to_sql.py"):
        dataset, n = sent(run(name, env, tmp_path))
        ran.append(name)
        rows[dataset] = n
    assert set(rows) == {f"examples/{d}" for d in ("pyarrow", "durable", "adbc", "polars", "pandas")}

    out = run("flush_and_status.py", env, tmp_path)
    ran.append("flush_and_status.py")
    lines = out.splitlines()
    assert {"ack", "status", "flush"} <= {m.group(1) for line in lines if (m := re.match(r"action (\w+): ", line))}
    [flushed] = [json.loads(line.removeprefix("flush: ")) for line in lines if line.startswith("flush: ")]
    start = lines.index("status: {")
    status = json.loads("\n".join(["{", *lines[start + 1 : -1]]))  # indented JSON, then a summary line
    # everything sent was received before the flush, so all of it is in Parquet now
    assert flushed["durable_through"] == status["durable_through"] == status["received_seq"]
    assert status["rows_written"] == sum(rows.values())
    assert lines[-1].startswith(f"received {status['received_rows']} rows")

    out = run("read_back.py", env, tmp_path)
    ran.append("read_back.py")
    counts = re.findall(
        r"^(examples/\w+): DuckDB (\d+) rows, Polars (\d+) rows, pyarrow.dataset (\d+) rows$", out, re.M
    )
    assert {d: [int(c) for c in cs] for d, *cs in counts} == {d: [n] * 3 for d, n in rows.items()}
    total = sum(int(m) for m in re.findall(r"│ \w+\s+│\s+(\d+) │", out))  # the SQL query's table, by service
    assert total == sum(rows.values())
    # STORAGE_PATH's default, ./data, is the same folder seen from where the server's root lies
    assert run("read_back.py", {"FLIGHT_WRITER_URL": server.location}, root.parent) == out
    assert ran == ORDER

    # In storage, read apart from the examples: each durable batch once, nothing else stored
    durable = read_dataset(root, "examples/durable")
    assert sorted(pc.value_counts(durable["k"]).to_pylist(), key=lambda v: v["values"]) == [
        {"values": k, "counts": 3} for k in range(5)
    ]
    for dataset, n in rows.items():
        assert read_dataset(root, dataset).num_rows == n, dataset
    assert sorted(p.name for p in (root / "examples").iterdir()) == sorted(d.split("/")[1] for d in rows)
    with flight.connect(server.location) as client:
        assert action(client, "status")["rows_written"] == sum(rows.values())
