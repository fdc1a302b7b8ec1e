"""The write side of the NATS queue (nats.py): taking messages, keeping them alive, plans and their conflicts,
confirmations.

Every fetched message is held (kept alive by ``in_progress`` every ack_wait / 3) until the durability record
of the object holding it is published; then it is acknowledged. A message of an unconfirmed plan is stored
as that plan says, with the plan's other batches read from the stream by sequence; the first plan of a seq
in the records stream holds it, and a later plan that names it is withdrawn and its file not stored.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import nats
import pyarrow as pa
from loguru import logger

from flight_writer.queue.base import Entry, Plan, QueueLost
from flight_writer.queue.seqs import seq_ranges

FETCH_BYTES = 8 << 20  # per fetch: NATS drops a connection whose pending bytes pass max_pending (64 MB)


class NatsFeed:
    """Mixed into NatsQueue: its state is made in NatsQueue.__init__."""

    _s: Any
    _link: Any
    _lock: Any
    position: Any

    def take(self, max_items: int, timeout: float) -> list[Entry]:
        if self._role == "ingest":
            raise RuntimeError("an ingest process has no feed (role = ingest)")
        if max_items <= 0 or self._not_taking:
            self._woken.wait(timeout)
            self._woken.clear()
            return []
        deadline = time.monotonic() + timeout
        batch = max(1, min(max_items, FETCH_BYTES // max(16 << 10, self._msg_size)))
        while True:
            wait = max(0.01, min(0.1, deadline - time.monotonic()))
            try:
                msgs = self._link.run(self._pull.fetch(batch, timeout=wait))
            except (TimeoutError, nats.errors.TimeoutError):
                msgs = []
            except nats.errors.Error as exc:
                self._link.last_error = f"NATS: fetch failed ({type(exc).__name__})"
                msgs = []
            if msgs or self._woken.is_set() or time.monotonic() >= deadline:
                break
        self._woken.clear()
        if msgs:
            # the largest, not the mean: a fetch of many messages sized by small ones could pass the server's
            # max_pending (64 MB) when large ones follow; decaying, so small batches get large fetches again
            self._msg_size = max(max(len(m.data) for m in msgs), self._msg_size * 7 // 8)
        return self._entries(msgs)

    def _entries(self, msgs: list[Any]) -> list[Entry]:
        entries: list[Entry] = []
        done: list[Any] = []
        fresh: list[tuple[int, Any, Plan | None]] = []
        with self._lock:  # all held at once: the keepalive covers them while the rest is read
            for msg in msgs:
                seq = msg.metadata.sequence.stream
                plan = self._plans.get(seq)
                if self.position.is_resolved(seq):  # already in a stored object (its writer died before acking)
                    done.append(msg)
                elif seq in self._held or (plan is not None and plan.path in self._redoing):
                    # delivered again while a buffer or a plan of this process holds it: acknowledged once
                    # that is stored, kept alive till then
                    self._late[seq] = msg
                else:
                    self._held[seq] = msg
                    fresh.append((seq, msg, plan))
        for msg in done:
            self._link.spawn(msg.ack())
        for seq, msg, plan in fresh:
            try:
                entry = _entry(seq, msg.data, msg.headers or {}, msg)
            except (pa.ArrowException, ValueError) as exc:  # no writer can read it: set aside, said loudly
                logger.error("NATS message {} is not an Arrow batch ({}); terminated, not stored", seq, exc)
                self._let_go([seq], "term")
                continue
            if plan is None:
                entries.append(entry)
                continue
            with self._lock:
                redoing = plan.path in self._redoing
                if redoing:  # an earlier message of this fetch started its redo
                    self._late[seq] = self._held.pop(seq)
            if not redoing:
                entries.extend(self._redo(plan, entry))
        return entries

    def _redo(self, plan: Plan, mine: Entry) -> list[Entry]:
        """The entries of an unconfirmed plan, to store again as planned: ``mine`` and the others read from
        the stream by sequence (another writer may hold their messages: it drops them once this confirms)."""
        entries = [mine]
        try:
            for seq in plan.seqs:
                if seq != mine.seq:
                    raw = self._link.run(self._link.js.get_msg(self._s.stream, seq), timeout=30)
                    entries.append(_entry(seq, raw.data, raw.headers or {}, None))
        except nats.js.errors.NotFoundError:  # acknowledged, so its confirmation was published first
            self._catch_up(10.0)
            if all(self.position.is_resolved(s) for s in plan.seqs):
                self._let_go([mine.seq], "ack")
            else:  # not yet readable as resolved: later, not as a second copy
                logger.warning("plan {}: seq {} is not in the stream yet unconfirmed; trying later", plan.path, seq)
                self._let_go([mine.seq], "nak")
            return []
        except Exception as exc:  # NATS away for a moment: the message comes again
            logger.warning("plan {}: cannot read its batches ({}); trying later", plan.path, type(exc).__name__)
            self._let_go([mine.seq], "nak")
            return []
        with self._lock:
            self._redoing.add(plan.path)
        for entry in entries:
            entry.planned = plan
        return entries

    def _let_go(self, seqs: list[int], how: str) -> None:
        """Stop holding these seqs' messages: ``ack`` (stored), ``nak`` (again later, to any writer) or
        ``term`` (never again)."""
        with self._lock:
            msgs = [m for s in seqs if (m := self._held.pop(s, None)) is not None]
        for msg in msgs:
            if how == "nak":
                self._link.spawn(msg.nak(delay=min(5.0, self._ack_wait)))
            else:
                self._link.spawn(getattr(msg, how)())

    def flush_requests(self) -> list[str | None]:
        if not self._flushes:
            return []
        with self._lock:
            requests, self._flushes = self._flushes, []
            return requests

    async def _on_flush(self, msg: Any) -> None:
        with self._lock:
            if None not in self._flushes:
                self._flushes.append(None)  # every buffer: what a dataset holds is not known across processes
        self._woken.set()

    async def _keep_alive(self) -> None:
        while not self._link.nc.is_closed:
            await asyncio.sleep(self._ack_wait / 3)
            with self._lock:
                msgs = [*self._held.values(), *self._late.values()]
            for msg in msgs:
                try:
                    await msg.in_progress()
                except Exception:  # disconnected: redelivery may follow; the plans keep it exactly once
                    break

    def _on_reconnect(self, down: float) -> None:
        """Down long enough for JetStream to give what this process held to other writers: let go of it
        (the writer drops its buffers; files not yet planned are not stored). Planned files go on: whoever
        gets their batches stores the same object again."""
        if self._role == "ingest" or down < self._ack_wait / 2:
            return
        with self._lock:
            if not self._held and not self._late:
                return
            logger.warning(
                "NATS was away {:.1f} s (ack_wait {:g} s): letting go of {} batches held here; they come again",
                down,
                self._ack_wait,
                len(self._held),
            )
            self._held.clear()
            self._late.clear()
            self._lost = True

    def stop_taking(self) -> None:
        """A stopping write process takes no more: the stream's other messages are other writers' to take
        (draining it would never end while producers send)."""
        self._not_taking = True
        self._woken.set()

    def dropped(self) -> bool:
        if not self._lost:
            return False
        self._lost = False
        return True

    def plan(self, plan: Plan, entries: list[Entry] | None = None) -> None:
        """Record the plan, then check it against the records stream's order: a seq that an earlier plan
        holds or that is resolved already went to another writer while this one held it (it was slow, or
        NATS was away). Then the plan is withdrawn, what is still held here goes back to the stream, and
        QueueLost keeps the file from being stored."""
        entries = entries or []
        with self._lock:
            gone = [e.seq for e in entries if e.handle is not None and self._held.get(e.seq) is not e.handle]
        if gone:
            self._lose(plan, entries, gone, "were given to another writer (NATS was away)")
        record: dict[str, Any] = {"plan": plan.path, "kind": plan.kind, "seqs": seq_ranges(list(plan.seqs))}
        if plan.error is not None:
            record["error"] = plan.error
        at = self._link.run(self._publish_record(record), timeout=60)
        if not self._wait_applied(at, 60.0):  # the loop thread applies records in order
            raise TimeoutError(f"NATS: the plan record of {plan.path} was not read back within 60 s")
        with self._lock:
            taken = [
                s
                for s in plan.seqs
                if self.position.is_resolved(s) or ((other := self._plans.get(s)) and other.path != plan.path)
            ]
        if taken:
            self._link.run(self._publish_record({"withdraw": plan.path, "seqs": seq_ranges(list(plan.seqs))}), 60)
            self._lose(plan, entries, taken, "are in another writer's plan or object")

    def _lose(self, plan: Plan, entries: list[Entry], seqs: list[int], why: str) -> None:
        """Give back what this process still holds of ``entries`` (stored ones acknowledged) and raise."""
        with self._lock:
            mine = [e.seq for e in entries if e.handle is not None and self._held.get(e.seq) is e.handle]
        self._let_go([s for s in mine if self.position.is_resolved(s)], "ack")
        self._let_go([s for s in mine if not self.position.is_resolved(s)], "nak")
        raise QueueLost(f"{plan.path}: seqs {seq_ranges(sorted(seqs))} {why}")

    def confirm(self, entries: list[Entry], path: str | None) -> None:
        if entries:
            self._resolved(entries, {"durable": seq_ranges(sorted(e.seq for e in entries)), "file": path})

    def reject(self, entries: list[Entry], error: str) -> None:
        if entries:
            self._resolved(entries, {"failed": seq_ranges(sorted(e.seq for e in entries)), "error": error})

    def _resolved(self, entries: list[Entry], record: dict[str, Any]) -> None:
        self._record(record)  # published before the acks: a redelivered message finds it resolved
        with self._lock:
            msgs = [m for e in entries if (m := self._held.pop(e.seq, None)) is not None]
        if msgs:
            self._link.run(_ack_all(msgs), timeout=60)
            self._state = (0.0, self._state[1])  # room changed: ask the stream again

    def room(self) -> int:
        return self._max_bytes - self._stream_state().bytes

    def wake(self) -> None:
        self._woken.set()


async def _ack_all(msgs: list[Any]) -> None:
    """Acknowledge every message, the last one waiting for the server's answer: acks of one connection are
    handled in order, so then all are (and work-queue retention has deleted them)."""
    for msg in msgs[:-1]:
        await msg.ack()
    await msgs[-1].ack_sync(timeout=30)


def _entry(seq: int, data: bytes, headers: dict[str, str], msg: Any) -> Entry:
    batch = pa.ipc.open_stream(pa.py_buffer(data)).read_next_batch()
    return Entry(
        seq,
        headers.get("fw-dataset", ""),
        batch.schema.serialize().to_pybytes(),
        batch,
        float(headers.get("fw-at", time.time())),
        len(data),  # what it takes of the stream's max_bytes
        headers.get("Nats-Msg-Id") if headers.get("fw-id") else None,
        msg,
    )
