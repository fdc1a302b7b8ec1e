"""Durability position: which seqs are stored, which failed, and how far everything is settled.

A seq is *pending* from ``put`` until the writer resolves it: ``durable`` once the Parquet object holding
it is fully stored, or ``failed`` when the encoder rejected it for good (its data then lies under
``_failed/``). ``durable_through`` is the largest seq such that every seq up to it is resolved; it only
moves forward, and only after storage confirmed the write.

The file of each seq is remembered for the last ``history`` resolved seqs; an older durable seq is
still reported ``durable``, just without its file. Failed seqs are remembered for the process's life.

A second position follows the first: ``committed_through``, the largest seq such that every seq up to it
is *committed*: in its dataset's lake table (``mark_committed(seqs, table=True)``, after the commit
landed), or needing no commit (a dataset without a table, a failed batch: ``table=False``, as soon as it is
resolved). ``describe`` reports ``committed`` for seqs a table commit made safe (as far as history reaches).
Seqs from before a restart count as committed: a service adopts into its tables what a crash left
(``write/commits.py``) before it serves. If that adoption fails at the start (a catalog out of reach, with
``storage.startup_check = false``), ``hold_committed`` takes them back until ``release_committed`` (the
committer adopted them on a later try): they are reported durable, not committed, meanwhile.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

from loguru import logger


class DurabilityTracker:
    """The durability position of one queue: applies its durability records (``mark_durable``,
    ``mark_failed``) and answers ``ack`` (``describe``, ``wait``) and ``flush`` from them."""

    def __init__(
        self,
        history: int = 100_000,
        durable_through: int = 0,
        pending_state: str = "queued",
        committed_through: int | None = None,
    ) -> None:
        """``committed_through``: where the committed position starts, if not at ``durable_through`` (seqs
        from before a restart count as committed); a queue that learns every commit from its records says 0."""
        self._history = history
        self._pending_state = pending_state  # "logged" when pending batches are already on disk
        self._cond = threading.Condition()
        self._through = durable_through
        self._above: set[int] = set()  # resolved seqs > _through
        self._files: OrderedDict[int, str] = OrderedDict()
        self._failed: dict[int, str] = {}
        self._closed = False
        # a restart adopts what a crash left before it serves
        self._committed_through = durable_through if committed_through is None else committed_through
        self._committed_above: set[int] = set()
        self._held: int | None = None  # committed_through from before the start, while hold_committed
        self._in_table: OrderedDict[int, None] = OrderedDict()  # seqs a table commit made safe (history)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def durable_through(self) -> int:
        return self._through

    def mark_durable(self, seqs: Iterable[int], file: str | None, table: bool = False) -> None:
        """``file`` is None for batches that needed no file (zero rows). ``table``: the file waits for a table
        commit (``mark_committed`` follows); otherwise the seqs are committed as they are durable."""
        seqs = list(seqs)
        with self._cond:
            for seq in seqs:
                if file is not None:
                    self._files[seq] = file
                self._resolve(seq)
            if not table:
                self._commit(seqs, False)
            while len(self._files) > self._history:
                self._files.popitem(last=False)
            self._advance()

    @property
    def committed_through(self) -> int:
        return self._committed_through

    def hold_committed(self) -> None:
        """The seqs from before the start are not known to be in their tables: not committed, until
        ``release_committed``."""
        with self._cond:
            if self._held is None:
                self._held, self._committed_through = self._committed_through, 0
                self._advance_committed()

    def release_committed(self) -> None:
        """What a crash left is in the tables now: the seqs from before the start count as committed again."""
        with self._cond:
            self._release()

    def _release(self) -> None:
        if self._held is not None:
            self._committed_through, self._held = max(self._committed_through, self._held), None
            self._committed_above = {s for s in self._committed_above if s > self._committed_through}
            self._advance_committed()
            self._cond.notify_all()

    def mark_committed(self, seqs: Iterable[int]) -> None:
        """A table commit holding these seqs' files landed."""
        with self._cond:
            self._commit(seqs, True)

    def _commit(self, seqs: Iterable[int], table: bool) -> None:
        for seq in seqs:
            if table:
                self._in_table[seq] = None
            if seq > self._committed_through:
                self._committed_above.add(seq)
        while len(self._in_table) > self._history:
            self._in_table.popitem(last=False)
        if self._held is not None and len(self._committed_above) > self._history:
            # bounded: seqs committed since the start would pile up while the hold lasts (the adoption
            # keeps failing); from here the seqs from before the start count as committed again
            logger.error(
                "lake tables: what a crash left is still not adopted after {} commits of new data; counting "
                "the seqs from before the start as committed anyway (see the committer's errors)",
                self._history,
            )
            self._release()
        self._advance_committed()
        self._cond.notify_all()

    def _advance_committed(self) -> None:
        while self._committed_through + 1 in self._committed_above:
            self._committed_through += 1
            self._committed_above.discard(self._committed_through)

    def _is_committed(self, seq: int) -> bool:
        return seq <= self._committed_through or seq in self._committed_above

    def wait_committed(self, seqs: Iterable[int], timeout: float | None) -> bool:
        """Wait until every seq is committed; False if ``timeout`` s passed first or the position closed."""
        return self._wait_all(seqs, self._is_committed, timeout)

    def wait_committed_through(self, seq: int, timeout: float | None) -> bool:
        """Wait until ``committed_through >= seq``; False if ``timeout`` s passed first or the position closed."""
        return self._wait_until(lambda: self._committed_through >= seq, timeout)

    def _wait_all(self, seqs: Iterable[int], settled: Callable[[int], bool], timeout: float | None) -> bool:
        """Wait until ``settled`` holds for every seq (the ones still open are looked at again each time)."""
        pending = list(seqs)

        def done() -> bool:
            pending[:] = [s for s in pending if not settled(s)]
            return not pending

        return self._wait_until(done, timeout)

    def _wait_until(self, done: Callable[[], bool], timeout: float | None) -> bool:
        """Wait, holding the condition, until ``done()``; False if ``timeout`` s passed first or the position
        closed (what it has then is all it will get)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not done():
                remaining = None if deadline is None else deadline - time.monotonic()
                if self._closed or (remaining is not None and remaining <= 0):
                    return False
                self._cond.wait(remaining)
            return True

    def mark_failed(self, seqs: Iterable[int], error: str) -> None:
        seqs = list(seqs)
        with self._cond:
            for seq in seqs:
                self._failed[seq] = error
                self._resolve(seq)
            self._commit(seqs, False)
            self._advance()

    def advance_to(self, seq: int) -> None:
        """Every seq up to ``seq`` is resolved, as the queue knows without a record for each (a shared log
        deletes what was stored: its first sequence says so)."""
        with self._cond:
            if seq <= self._through:
                return
            self._through = seq
            self._above = {s for s in self._above if s > seq}
            # the committed position is not moved: a deleted message is stored, not yet in its table
            # (committed records say that; what was committed before this process started counts as such)
            self._advance()

    def _resolve(self, seq: int) -> None:
        if seq > self._through:
            self._above.add(seq)

    def _advance(self) -> None:
        while self._through + 1 in self._above:
            self._through += 1
            self._above.discard(self._through)
        self._cond.notify_all()

    def _is_resolved(self, seq: int) -> bool:
        return seq <= self._through or seq in self._above

    def close(self) -> None:
        """No more records will come (the queue closed): every ``wait`` returns what it has now."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def wait(self, seqs: Iterable[int], timeout: float | None) -> bool:
        """Wait until every seq is resolved; False if ``timeout`` s passed first or the position closed."""
        return self._wait_all(seqs, self._is_resolved, timeout)

    def wait_through(self, seq: int, timeout: float | None) -> bool:
        """Wait until every seq up to ``seq`` is resolved (``durable_through >= seq``); False if ``timeout``
        s passed first or the position closed."""
        return self._wait_until(lambda: self._through >= seq, timeout)

    def is_resolved(self, seq: int) -> bool:
        with self._cond:
            return self._is_resolved(seq)

    def describe(self, seq: int, last_seq: int | None = None) -> dict[str, Any]:
        """One ``ack`` entry: state ``queued`` (or ``logged``), ``durable``, ``failed`` or ``unknown`` (a seq
        above ``last_seq``, the highest issued; None for a seq known to be issued)."""
        with self._cond:
            if seq < 1 or (last_seq is not None and seq > last_seq):
                return {"seq": seq, "state": "unknown"}
            if seq in self._failed:
                return {"seq": seq, "state": "failed", "error": self._failed[seq]}
            if not self._is_resolved(seq):
                return {"seq": seq, "state": self._pending_state}
            file = self._files.get(seq)
            state = "committed" if seq in self._in_table else "durable"
            return {"seq": seq, "state": state, "file": file} if file else {"seq": seq, "state": state}

    def files_of(self, seqs: Iterable[int]) -> list[str]:
        """The distinct files holding these seqs, in first-seen order (as far as history reaches)."""
        with self._cond:
            return list(dict.fromkeys(f for s in seqs if (f := self._files.get(s)) is not None))
