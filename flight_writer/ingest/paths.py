"""Dataset names as clients give them: a PATH descriptor's segments, a Flight SQL table path, an action's
``"a/b"``. One rule for all three doors."""

from __future__ import annotations

import re

_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def dataset_from_path(segments: list[str]) -> str:
    """Validate 1-3 path segments and join them into a dataset name (``ValueError`` saying why not)."""
    if not 1 <= len(segments) <= 3:
        raise ValueError(f"a dataset path has 1 to 3 segments, got {len(segments)}")
    for seg in segments:
        if seg in (".", "..") or not _SEGMENT.fullmatch(seg):
            raise ValueError(
                f"invalid dataset path segment {_shown(seg)}: use 1-128 characters from [A-Za-z0-9_.-], "
                "starting with a letter or digit"
            )
    return "/".join(segments)


def _shown(segment: str) -> str:
    """A segment as an error message quotes it: a client's 1 MiB name is not echoed back whole."""
    return repr(segment) if len(segment) <= 200 else f"{segment[:200]!r}... ({len(segment)} characters)"
