"""Seq sets as compact text: ``[1, 2, 3, 7, 9, 10]`` <-> ``"1-3,7,9-10"`` (Parquet metadata, WAL manifest)."""

from __future__ import annotations

from collections.abc import Iterator


def seq_ranges(seqs: list[int]) -> str:
    """Ascending seqs as ranges."""
    if not seqs:
        return ""
    parts: list[str] = []
    start = prev = seqs[0]
    for s in seqs[1:]:
        if s != prev + 1:
            parts.append(str(start) if start == prev else f"{start}-{prev}")
            start = s
        prev = s
    parts.append(str(start) if start == prev else f"{start}-{prev}")
    return ",".join(parts)


def parse_ranges(text: str) -> Iterator[int]:
    for part in filter(None, text.split(",")):
        first, _, last = part.partition("-")
        yield from range(int(first), int(last or first) + 1)
