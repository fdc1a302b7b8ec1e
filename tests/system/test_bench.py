"""The benchmark's many-core runner (bench/offline.sh), which a machine without a package index runs with the
wheels bench/wheels.sh fetched: here with this Python's packages, the topology part at a tiny scale. It checks
that the runner and the part work (processes start, producers spread over the ingest processes, results
written), not any speed: speed is make bench's."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from helpers import REPO


def test_the_offline_runner_measures_the_topology_sized_to_the_machine(tmp_path):
    out = tmp_path / "out"
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "WHEELS": str(tmp_path / "no-wheels"),  # this Python has every package
        "RESULTS": str(out),
        "BENCH_PARTS": "topology",
        "BENCH_SCALE": "0.01",
        "BENCH_REPEAT": "1",
        "BENCH_TOPOLOGY": "2x1x2",  # two ingest processes, one write process, two streams
        "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}",
    }
    done = subprocess.run(["bench/offline.sh"], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "nats-server: v" in (out / "machine.txt").read_text()
    (row,) = json.loads((out / "topology.json").read_text())["topology"]
    (shape,) = row["shapes"]
    assert (shape["name"], shape["ingests"], shape["writers"], shape["streams"]) == ("nats-2x1x2t1", 2, 1, 2)
    topology = row["nats-2x1x2t1"]
    assert topology["mb_s"] > 0 and row["memory"]["mb_s"] > 0 and row["direct"]["mb_s"] > 0
    # each kind of process did work: nats-server, the ingest processes (together), the write process
    assert all(v > 0 for v in topology["cpu_s_per_gib_by_process"].values())
    assert "| nats-2x1x2t1 |" in (out / "topology.log").read_text()
