"""The report: the chart (bench/results.png), the benchmark issues' targets with what this run measured, the
Markdown tables of BENCHMARKS.md, and results.json (results-partial.json for a BENCH_ONLY run)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from bench import HERE
from bench.contenders import CONTENDERS
from bench.workload import REPEAT, SCALE


def chart(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['batch_rows']} rows\n{r['producers']}p/{r['datasets']}d" for r in results]
    x = np.arange(len(results))
    fig, ax = plt.subplots(figsize=(11, 5.5))
    for i, name in enumerate(["direct", "memory", "wal"]):
        medians = [r[name]["mb_s"] for r in results]
        spread = np.array(
            [
                [m - r[name]["mb_s_range"][0], r[name]["mb_s_range"][1] - m]
                for m, r in zip(medians, results, strict=True)
            ]
        )
        ax.bar(x + (i - 1) * 0.27, medians, 0.27, yerr=spread.T, capsize=3, label=name)
    ax.plot(x, [r["discard"]["mb_s"] for r in results], "k_", markersize=40, mew=2, label="discard (transport limit)")
    ax.plot(x, [r["reply"]["mb_s"] for r in results], "r_", markersize=40, mew=2, label="discard + PutResult per batch")
    ax.set_xticks(x, labels)
    ax.set_ylabel("MB/s of Arrow data (median; bars: min-max)")
    ax.set_title(
        f"flight-writer vs writing Parquet directly ({os.cpu_count()} cores, BENCH_SCALE={SCALE}, {REPEAT} runs each)"
    )
    ax.legend(loc="upper center", ncol=5, bbox_to_anchor=(0.5, -0.14), fontsize="small", markerscale=0.4)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def targets(report: dict) -> list[tuple[str, str, bool]]:
    """The benchmark issue's targets, each with what this run measured."""
    by = {(r["batch_rows"], r["producers"], r["datasets"]): r for r in report.get("throughput", [])}
    rows = []
    for batch_rows in (8192, 65536):
        r = by.get((batch_rows, 1, 1))
        if r:
            rows.append(
                (
                    f"{batch_rows:,} rows, 1 producer, 1 dataset: memory >= 0.9 x direct",
                    str(r["memory_vs_direct"]),
                    r["memory_vs_direct"] >= 0.9,
                )
            )
        r4, r1 = by.get((batch_rows, 4, 4)), by.get((batch_rows, 1, 1))
        if r4 and r1:
            ratio = round(r1["direct"]["seconds"] / r4["memory"]["seconds"], 2)
            rows.append(
                (
                    f"{batch_rows:,} rows, 4 producers, 4 datasets: memory >= 1.0 x one direct writer",
                    str(ratio),
                    ratio >= 1.0,
                )
            )
    r = by.get((100, 1, 1))
    if r:
        rows.append(
            ("100-row batches: memory >= 0.5 x discard", str(r["memory_vs_discard"]), r["memory_vs_discard"] >= 0.5)
        )
    if m := report.get("memory"):
        rows.append(
            (
                f"peak RSS <= queue + 2 x file + 300 MB = {m['bound_mb']} MiB",
                f"{m['peak_rss_mb']} MiB (median)",
                m["within"],
            )
        )
    if large := [r["wal_vs_memory"] for r in report.get("throughput", []) if r["batch_rows"] >= 8192]:
        rows.append(
            ("wal >= 0.85 x memory (every scenario of >= 8,192 rows)", f"{min(large)} (lowest)", min(large) >= 0.85)
        )
    if r := by.get((100, 1, 1)):
        rows.append(("100-row batches: wal >= 0.6 x memory", str(r["wal_vs_memory"]), r["wal_vs_memory"] >= 0.6))
    for r in report.get("nats", []):
        if (r["batch_rows"], r["producers"]) == (8192, 1):
            rows.append(
                (
                    "8,192 rows, 1 producer: nats (1 ingest, 1 writer) >= 0.6 x memory",
                    str(r["nats_1w_vs_memory"]),
                    r["nats_1w_vs_memory"] >= 0.6,
                )
            )
            rows.append(
                (
                    "8,192 rows, 1 producer: nats CPU per GiB (nats-server, ingest, write) <= 1.5 x memory",
                    str(r["nats_1w_cpu_vs_memory"]),
                    r["nats_1w_cpu_vs_memory"] <= 1.5,
                )
            )
    if "burst" in report:
        b = report["burst"]
        rows.append(
            (
                f"{b['mb']:.0f} MB burst then flush: memory >= 0.8 x direct",
                str(b["memory_vs_direct"]),
                b["memory_vs_direct"] >= 0.8,
            )
        )
    by_n = {r["producers"]: r for r in report.get("cores", [])}
    if 16 in by_n:  # the cores issue's targets, for a machine with 16 cores or more
        rows.append(
            (
                "16 producers, 16 datasets, writer.threads = 16: memory >= 0.85 x 16 direct threads",
                str(by_n[16]["memory_vs_direct"]),
                by_n[16]["memory_vs_direct"] >= 0.85,
            )
        )
        rows.append(
            (
                "1 producer, writer.threads = 1 (16 cores): memory >= 0.9 x direct",
                str(by_n[1]["memory_vs_direct"]),
                by_n[1]["memory_vs_direct"] >= 0.9,
            )
        )
    for r in report.get("topology", []):
        if r["cores"] >= 16:  # the scale-out issue's target, for a machine with 16 cores or more
            best = max(r["shapes"], key=lambda s: s["vs_direct"])
            rows.append(
                (
                    f"{r['cores']} producers, the topology on one {r['cores']}-core machine: nats >= 0.6 x "
                    f"{r['cores']} direct threads",
                    f"{best['vs_direct']} ({best['name']})",
                    best["vs_direct"] >= 0.6,
                )
            )
    g = report.get("gil", {})
    if g.get("available"):
        rows.append(
            (
                "8,192 rows, 1 producer: GIL held <= 15% of wall time",
                f"{100 * g['gil_share']:.1f}% ({g['gil_s_per_gb']} s per GB)",
                g["gil_share"] <= 0.15,
            )
        )
    return rows


def print_tables(report: dict) -> None:
    """The Markdown tables of BENCHMARKS.md (``python bench/run.py --tables`` prints them again): throughput,
    CPU seconds per GiB sent (client + server), the targets."""
    if report.get("throughput"):
        _print_throughput(report)
    if report.get("cores"):
        print(
            "\n| producers = datasets = writer.threads | discard MB/s | direct MB/s (that many threads) | memory MB/s "
            "| memory/direct |\n|---|---|---|---|---|"
        )
        for r in report["cores"]:
            print(
                f"| {r['producers']} | {r['discard']['mb_s']} | {r['direct']['mb_s']} | {r['memory']['mb_s']} | "
                f"{r['memory_vs_direct']} |"
            )
    if report.get("nats"):
        _print_nats(report["nats"])
    for r in report.get("topology", []):
        print(
            f"\nThe topology on {r['cores']} cores: {r['producers']} producers, 8,192-row batches, {r['mb']} MB "
            f"(J ingest x K write processes x N streams, T writer threads each; CPU-s per GiB of nats-server + "
            f"ingest + write; memory: one process, writer.threads = {r['cores']}):\n"
            "\n| contender | MB/s | x direct | x memory | server CPU-s per GiB |\n|---|---|---|---|---|"
        )
        gib = r["mb"] * 1e6 / (1 << 30)
        for s in r["shapes"]:
            by = r[s["name"]]["cpu_s_per_gib_by_process"]
            cpu = " + ".join(f"{by[p]}" for p in ("nats-server", "ingest", "write"))
            print(f"| {s['name']} | {r[s['name']]['mb_s']} | {s['vs_direct']} | {s['vs_memory']} | {cpu} |")
        memory_cpu = round(r["memory"]["server_cpu_s"] / gib, 2)
        print(f"| memory | {r['memory']['mb_s']} | {r['memory_vs_direct']} | 1.0 | {memory_cpu} |")
        print(f"| direct ({r['cores']} threads) | {r['direct']['mb_s']} | 1.0 | | |")
    if "burst" in report:
        b = report["burst"]
        print(
            f"\nBurst of {b['mb']} MB then flush: direct {b['direct']['mb_s']} MB/s, memory {b['memory']['mb_s']} "
            f"MB/s ({b['memory_vs_direct']} x direct)."
        )
    g = report.get("gil", {})
    if g.get("available"):
        print(
            f"\nGIL (py-spy --gil, 8,192 rows, 1 producer, {g['mb_s']} MB/s): held {100 * g['gil_share']:.1f}% of "
            f"wall time, {g['gil_s_per_gb']} s per GB. Held most by:"
        )
        for name, share in g["top"]:
            print(f"- {100 * share:.0f}% {name}")
    print("\n| target | measured | |\n|---|---|---|")
    for t in report["targets"]:
        print(f"| {t['target']} | {t['measured']} | {'met' if t['met'] else 'missed'} |")


def _print_throughput(report: dict) -> None:
    """MB/s of every contender per scenario, then CPU seconds per GiB sent (client + server)."""
    print(
        "\n| batch rows | producers | datasets | discard MB/s | reply MB/s | direct MB/s | memory MB/s | wal MB/s | "
        "memory rows/s | memory/direct | memory/discard | memory/reply | wal/memory |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in report.get("throughput", []):
        print(
            f"| {r['batch_rows']} | {r['producers']} | {r['datasets']} | {r['discard']['mb_s']} | "
            f"{r['reply']['mb_s']} | {r['direct']['mb_s']} | {r['memory']['mb_s']} | {r['wal']['mb_s']} | "
            f"{r['memory']['rows_s']:,} | {r['memory_vs_direct']} | {r['memory_vs_discard']} | "
            f"{r['memory_vs_reply']} | {r['wal_vs_memory']} |"
        )
    print("\n| batch rows, producers/datasets | discard | reply | direct | memory | wal |\n|---|---|---|---|---|---|")
    for r in report.get("throughput", []):
        gib = r["mb"] * 1e6 / (1 << 30)
        cells = [
            f"{r[n]['client_cpu_s'] / gib:.1f} + {r[n]['server_cpu_s'] / gib:.1f}"
            if n != "direct"
            else f"{r[n]['client_cpu_s'] / gib:.1f}"
            for n in CONTENDERS
        ]
        print(f"| {r['batch_rows']}, {r['producers']}/{r['datasets']} | {' | '.join(cells)} |")


def _print_nats(rows: list[dict]) -> None:
    """The nats part: MB/s of each topology (x the memory queue) and its CPU-s per GiB by process."""
    names = [n for n in rows[0] if n.startswith("nats-")]
    print("\nThe nats part (MB/s, x memory; CPU-s per GiB of nats-server + ingest + write):\n")
    print(f"| batch rows, producers/datasets | memory | {' | '.join(names)} |\n|---|---|{'---|' * len(names)}")
    for r in rows:
        cells = []
        for n in names:
            if n in r:
                by = r[n]["cpu_s_per_gib_by_process"]
                cpu = " + ".join(str(by[p]) for p in ("nats-server", "ingest", "write"))
                ratio = r[n.replace("-", "_") + "_vs_memory"]
                cells.append(f"{r[n]['mb_s']} ({ratio} x; {cpu})")
            else:
                cells.append("")
        print(f"| {r['batch_rows']}, {r['producers']}/{r['datasets']} | {r['memory']['mb_s']} | {' | '.join(cells)} |")


def write(report: dict, partial: bool) -> None:
    """results.json, the chart and the tables; a partial run (BENCH_ONLY) does not replace the full one: it
    writes results-partial.json and the tables only."""
    if partial:
        (HERE / "results-partial.json").write_text(json.dumps(report, indent=2))
        print_tables(report)
        return
    (HERE / "results.json").write_text(json.dumps(report, indent=2))
    chart(report["throughput"], HERE / "results.png")
    print_tables(report)
    print(f"\nwrote bench/results.json and bench/results.png in {report['seconds']} s")
