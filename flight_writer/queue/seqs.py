"""Seq sets as compact text (Parquet metadata, table commits, WAL manifest, NATS records): ``[1, 2, 3, 7, 9,
10]`` <-> ``"1-3,7,9-10"``. ``parse_ranges`` also reads runs with a step, ``"5-17/4"`` (5, 9, 13, 17): a
sharded NATS queue's seqs in one file are ``s * S + k``, which such runs would write compactly. Nothing
writes them yet: ``flight_writer.seqs`` is documented metadata that readers of the files parse themselves,
so readers come first."""

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
        span, _, step = part.partition("/")
        first, _, last = span.partition("-")
        yield from range(int(first), int(last or first) + 1, int(step or 1))
