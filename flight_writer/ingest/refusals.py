"""Refused calls, counted by reason and logged in rate-limited summaries.

A flood of bad calls (wrong credentials, a full queue) must not become a flood of log lines: ~2,400
refusals a second from one client were ~17 GB of log a day when each was a line. So the first refusal after
a quiet spell is logged at once, with what it was; the ones after it within ``SUMMARY_EVERY`` seconds are
only counted, and said in one line with the next refusal after that. ``by_reason`` holds the totals since
start (``/metrics``: ``flight_writer_refused_calls_total{reason}``; ``status``: ``refused``). The server
holds one; authentication middleware, the doors and the ingest path count into it.

Reasons: ``unauthenticated``, ``unauthorized``, ``auth_busy`` (every password check slot taken),
``queue_full``, ``limits`` (stream counts, batch and metadata sizes, schema size), ``schema`` (a stream the
dataset's rules or the readers cannot take), ``bad_request`` (a malformed path, body or command).
"""

from __future__ import annotations

import threading
import time
from collections import Counter

from loguru import logger

SUMMARY_EVERY = 10.0  # seconds


class Refusals:
    def __init__(self, every: float = SUMMARY_EVERY) -> None:
        self._every = every
        self._lock = threading.Lock()
        self.by_reason: Counter[str] = Counter()
        self._unsaid: Counter[str] = Counter()  # refused since the last line
        self._said_at = -float("inf")

    def count(self, reason: str, detail: str | None = None) -> None:
        """One refused call; ``detail`` says what it was (never a secret)."""
        with self._lock:
            self.by_reason[reason] += 1
            now = time.monotonic()
            if now - self._said_at < self._every:
                self._unsaid[reason] += 1
                return
            unsaid, self._unsaid = self._unsaid, Counter()
            since, self._said_at = now - self._said_at, now
        more = ""
        if unsaid:
            parts = ", ".join(f"{reason} {n:,}" for reason, n in unsaid.most_common())
            more = f" ({sum(unsaid.values()):,} more refused in the last {since:.0f} s: {parts})"
        logger.warning("refused {}{}", detail or reason, more)

    def totals(self) -> dict[str, int]:
        with self._lock:
            return dict(self.by_reason)
