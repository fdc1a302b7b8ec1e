"""Taking turns: one scenario's contenders, each BENCH_REPEAT times in turn, so that a slow minute of the
machine hits them all; gives the scenario's row of results.json (medians, min-max ranges, rows/s, CPU
seconds per contender) and prints a line per contender."""

from __future__ import annotations

import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path

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
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in contenders}
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
        low, high = row[name]["mb_s_range"]
        print(
            f"  {row['batch_rows']:>6} rows x{producers}p x{datasets}d {row['mb']:>7} MB  {name:<8} "
            f"{row[name]['mb_s']:>8.1f} MB/s  ({low}-{high})  cpu client {row[name]['client_cpu_s']} s, "
            f"server {row[name]['server_cpu_s']} s",
            flush=True,
        )
    return row
