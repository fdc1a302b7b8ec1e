"""Seq sets as compact text (Parquet metadata, table commits, WAL manifest, NATS records): ``[1, 2, 3, 7, 9,
10]`` <-> ``"1-3,7,9-10"``. ``parse_ranges`` also reads runs with a step, ``"5-17/4"`` (5, 9, 13, 17), which
``seq_ranges(steps=True)`` writes: a sharded NATS queue's seqs in one file are ``s * S + k``. Nothing writes
them yet: ``flight_writer.seqs`` is documented metadata that readers of the files parse themselves."""

from __future__ import annotations

from collections.abc import Iterator


def seq_ranges(seqs: list[int], steps: bool = False) -> str:
    """Ascending seqs as ranges (``steps``: and runs with a step)."""
    parts: list[str] = []
    i, n = 0, len(seqs)
    while i < n:
        first = seqs[i]
        if i + 1 == n:
            parts.append(str(first))
            break
        step = seqs[i + 1] - first
        if step != 1 and not (steps and step > 1):  # no run to look for: the first alone
            parts.append(str(first))
            i += 1
            continue
        j = i + 1
        while j + 1 < n and seqs[j + 1] - seqs[j] == step:
            j += 1
        if step == 1:
            parts.append(f"{first}-{seqs[j]}")
        elif j - i >= 2:
            parts.append(f"{first}-{seqs[j]}/{step}")
        else:  # two with a gap: the first alone, the second may begin a run
            parts.append(str(first))
            j = i
        i = j + 1
    return ",".join(parts)


def parse_ranges(text: str) -> Iterator[int]:
    for part in filter(None, text.split(",")):
        span, _, step = part.partition("/")
        first, _, last = span.partition("-")
        yield from range(int(first), int(last or first) + 1, int(step or 1))
