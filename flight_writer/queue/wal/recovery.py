"""Reading a WAL back at start, before the server takes calls.

Read the manifest, then every segment. A damaged record at the very end of the newest segment is a torn write
and is cut off with a warning. Damage anywhere else moves the segment to ``.corrupt`` with an error naming
what was lost; its intact records (found again by the magic) are to be logged anew. Batches not confirmed
are handed to the writer again; those of a plan without its confirmation come back with that plan
(``Entry.planned``), so the writer stores the same object under the same name instead of a second copy.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loguru import logger

from flight_writer.queue.base import Entry, Plan
from flight_writer.queue.wal.format import read_manifest, scan_segment
from flight_writer.queue.wal.manifest import MANIFEST


@dataclass
class Recovered:
    entries: list[Entry]  # pending, in seq order; ``handle`` is the segment, None for those to log again
    relog: list[Entry]  # intact records of quarantined segments
    live: dict[int, int]  # segment first seq -> its records still pending
    last_seq: int
    ids: list[tuple[str, int]]  # client ids, oldest first
    plans: list[Plan]  # plans the pending entries still need
    confirmed: list[int]  # confirmed seqs whose records lie in segments kept
    durable_through: int  # for the position: every seq up to it is resolved
    resolved_above: list[int]  # resolved seqs above it
    failed: dict[int, str]  # failed seqs above it, with their errors
    report: dict[str, Any] = field(default_factory=dict)


def recover(directory: Path) -> Recovered:
    plans, done, failed_errors, ids = read_manifest(directory / MANIFEST)
    entries, relog, confirmed_here, last_seq, report = _read_segments(directory, done, ids)
    last_seq = max([last_seq, *(max(p.seqs) for p in plans.values() if p.seqs), *(s for _, s in ids)])
    entries.sort(key=lambda e: e.seq)
    pending = {e.seq for e in entries}
    by_seq = {e.seq: e for e in entries}
    for plan in plans.values():  # an unconfirmed plan whose batches are all here is redone exactly
        if any(s not in done for s in plan.seqs) and all(s in pending for s in plan.seqs):
            for s in plan.seqs:
                by_seq[s].planned = plan
    live = Counter(e.handle for e in entries if e.handle is not None)
    through = (entries[0].seq - 1) if entries else last_seq
    report.update(pending=len(entries), replanned=sum(1 for e in entries if e.planned), last_recovered_seq=last_seq)
    if report["segments"]:
        logger.info(
            "WAL recovered: {} segments, {} records, {} batches to write ({} as planned files), next seq {}",
            report["segments"],
            report["records"],
            len(entries),
            report["replanned"],
            last_seq + 1,
        )
    return Recovered(
        entries=entries,
        relog=relog,
        live=dict(live),
        last_seq=last_seq,
        ids=ids,
        plans=[p for p in plans.values() if any(s in pending for s in p.seqs)],
        confirmed=sorted(s for first in live for s in confirmed_here.get(first, [])),
        durable_through=through,
        resolved_above=sorted(set(range(through + 1, last_seq + 1)) - pending),
        failed={s: e for s, e in failed_errors.items() if s > through},
        report=report,
    )


def _read_segments(
    directory: Path, done: set[int], ids: list[tuple[str, int]]
) -> tuple[list[Entry], list[Entry], dict[int, list[int]], int, dict[str, Any]]:
    """Every segment's intact records: the pending entries, those of them to log again (their segment is
    quarantined), per segment the seqs already confirmed, the highest seq, and a report. Client ids found
    are added to ``ids``."""
    segment_paths = sorted(directory.glob("seg-*.wal"))
    entries: list[Entry] = []
    relog: list[Entry] = []
    confirmed_here: dict[int, list[int]] = {}  # per segment: its records already confirmed
    last_seq = max((int(p.stem[4:]) - 1 for p in segment_paths), default=0)
    report: dict[str, Any] = {"segments": len(segment_paths), "records": 0, "torn_bytes": 0, "quarantined": []}
    for i, seg_path in enumerate(segment_paths):
        newest = i == len(segment_paths) - 1
        records, damage = scan_segment(seg_path)
        report["records"] += len(records)
        quarantined = damage is not None and _set_damage_aside(seg_path, damage, newest, len(records), report)
        seg_first = int(seg_path.stem[4:])
        for entry in records:
            last_seq = max(last_seq, entry.seq)
            if entry.client_id is not None:
                ids.append((entry.client_id, entry.seq))
            if entry.seq in done:
                confirmed_here.setdefault(seg_first, []).append(entry.seq)
                continue
            entries.append(entry)
            if quarantined:
                relog.append(entry)  # handle stays None: logged again in a fresh segment
            else:
                entry.handle = seg_first
    return entries, relog, confirmed_here, last_seq, report


def _set_damage_aside(
    seg_path: Path, damage: tuple[int, int, bool], newest: bool, intact: int, report: dict[str, Any]
) -> bool:
    """Cut off a torn end of the newest segment (False), or quarantine a damaged segment (True: its intact
    records must be logged again)."""
    start, end, found_after = damage
    if newest and not found_after:
        logger.warning(
            "WAL {}: cut off a torn record at its end ({} bytes at offset {})", seg_path.name, end - start, start
        )
        report["torn_bytes"] += end - start
        os.truncate(seg_path, start)
        return False
    corrupt = seg_path.with_suffix(".wal.corrupt")
    logger.error(
        "WAL {} is damaged at bytes {}..{}: kept its {} intact records, lost what lay in that range; moved it to {}",
        seg_path.name,
        start,
        end,
        intact,
        corrupt.name,
    )
    report["quarantined"].append(corrupt.name)
    seg_path.rename(corrupt)
    return True
