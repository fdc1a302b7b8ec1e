"""Taking turns: one scenario's contenders, each BENCH_REPEAT times in turn, so that a slow minute of the
machine hits them all; gives the scenario's row of results.json (medians, min-max ranges, rows/s, CPU
seconds per contender) and prints a line per contender."""

from __future__ import annotations

import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import REPO
from bench.workload import REPEAT, Workload


def compare(
    work: Workload, producers: int, datasets: int, contenders: dict[str, Callable], repeat: int = REPEAT
) -> dict:
    """Each contender ``repeat`` times, taking turns (so a slow minute of the machine hits them all): medians,
    ranges, rows/s and CPU seconds per contender."""
    row: dict = {
        "batch_rows": work.batches[0].num_rows,
        "producers": producers,
        "datasets": datasets,
        "mb": round(work.nbytes / 1e6, 1),
        "rows": work.rows,
    }
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in contenders}
    for _ in range(repeat):
        for name, measure in contenders.items():
            with tempfile.TemporaryDirectory(dir=REPO / "bench") as tmp:
                runs[name].append(measure(work, producers, datasets, Path(tmp)))
    for name, measured in runs.items():
        seconds = sorted(m["seconds"] for m in measured)
        median = statistics.median(seconds)
        row[name] = {
            "seconds": round(median, 3),
            "mb_s": round(work.nbytes / 1e6 / median, 1),
            "rows_s": round(work.rows / median),
            "mb_s_range": [round(work.nbytes / 1e6 / seconds[-1], 1), round(work.nbytes / 1e6 / seconds[0], 1)],
            "client_cpu_s": round(statistics.median(m["client_cpu_s"] for m in measured), 2),
            "server_cpu_s": round(statistics.median(m["server_cpu_s"] for m in measured), 2),
        }
        if all("cpu_s_by_process" in m for m in measured):  # the NATS topology: per process, per GiB
            names = measured[0]["cpu_s_by_process"]
            gib = work.nbytes / (1 << 30)
            row[name]["cpu_s_per_gib_by_process"] = {
                p: round(statistics.median(m["cpu_s_by_process"][p] for m in measured) / gib, 2) for p in names
            }
        low, high = row[name]["mb_s_range"]
        print(
            f"  {row['batch_rows']:>6} rows x{producers}p x{datasets}d {row['mb']:>7} MB  {name:<8} "
            f"{row[name]['mb_s']:>8.1f} MB/s  ({low}-{high})  cpu client {row[name]['client_cpu_s']} s, "
            f"server {row[name]['server_cpu_s']} s{_by_process(row[name])}",
            flush=True,
        )
    return row


def _by_process(result: dict[str, Any]) -> str:
    by = result.get("cpu_s_per_gib_by_process")
    return f" (CPU-s per GiB: {', '.join(f'{p} {v}' for p, v in by.items())})" if by else ""
