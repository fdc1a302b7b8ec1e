"""`python -m bench` from the repository root (make bench): the span table, the parts BENCH_ONLY names (all
by default) in their order, then the report; `python -m bench --tables` prints the tables of
bench/results.json again."""

from __future__ import annotations

import json
import os
import platform
import sys
import time

import pyarrow as pa

from bench import HERE
from bench.report import print_tables, targets, write
from bench.scenarios import PARTS
from bench.workload import BYTES_PER_RUN, REPEAT, SCALE, MiB, make_spans


def main() -> None:
    started = time.perf_counter()
    print(
        f"BENCH_SCALE={SCALE}: {BYTES_PER_RUN / MiB:.0f} MiB of Arrow data per measurement, {REPEAT} runs each",
        flush=True,
    )
    base = make_spans(262_144)
    print(f"spans: {base.num_rows} rows, {base.nbytes / MiB:.1f} MiB ({base.nbytes / base.num_rows:.0f} B/row)")
    report = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "pyarrow": pa.__version__,
            "platform": platform.platform(),
        },
        "scale": SCALE,
        "repeat": REPEAT,
        "bytes_per_run": BYTES_PER_RUN,
    }
    only = [p for p in os.environ.get("BENCH_ONLY", "").split(",") if p]
    for name, measure in PARTS.items():
        if not only or name in only:
            report[name] = measure(base)
    report["targets"] = [{"target": t, "measured": v, "met": ok} for t, v, ok in targets(report)]
    report["seconds"] = round(time.perf_counter() - started)
    write(report, partial=bool(only))


if __name__ == "__main__":
    if sys.argv[1:] == ["--tables"]:
        print_tables(json.loads((HERE / "results.json").read_text()))
    else:
        main()
