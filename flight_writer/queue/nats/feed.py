"""The write side of the NATS queue (queue.py): taking messages, keeping them alive, plans and their conflicts,
confirmations.

Every fetched message is held (kept alive by ``in_progress`` every ack_wait / 3) until the durability record
of the object holding it is published; then it is acknowledged. A message of an unconfirmed plan is stored
as that plan says, with the plan's other batches read from the stream by sequence; the first plan of a seq
in the records stream holds it, and a later plan that names it is withdrawn and its file not stored. A
message that claims a batch id (header ``CLAIM``, no batch: sharded.py) is recorded as a claim, durable
without a file, and left in the stream for its duplicate window (``claim_hold`` after it was stored, checked
at every delivery), then acknowledged.
"""

from __future__ import annotations

import asyncio
import threading
import time

import nats
import pyarrow as pa
from loguru import logger
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext, api

from flight_writer.config.settings import QueueSettings
from flight_writer.queue.base import Entry, Plan, QueueLost
from flight_writer.queue.ipc import decode_ipc
from flight_writer.queue.nats.link import CLAIM, Link, id_of_header
from flight_writer.queue.nats.records import Records, Shared
from flight_writer.queue.seqs import seq_ranges

FETCH_BYTES = 8 << 20  # per fetch: NATS drops a connection whose pending bytes pass max_pending (64 MB)
HELD_TTL = 0.2  # seconds the consumer's count of messages delivered and not yet acknowledged is reused


class WriteFeed:
    """The write side: takes messages from the durable pull consumer (``open`` joins it), holds them until
    the record of the object holding them is published, redoes unconfirmed plans. Made only for the roles
    that write (``all``, ``write``)."""

    def __init__(
        self,
        link: Link,
        shared: Shared,
        records: Records,
        stream: str,
        pull: JetStreamContext.PullSubscription,
        ack_wait: float,
    ) -> None:
        self._link = link
        self._shared = shared  # its lock; the late messages and the plans being redone
        self._records = records
        self._stream = stream
        self._pull = pull
        self._ack_wait = ack_wait  # the consumer's
        self._held: dict[int, Msg] = {}  # seq -> message delivered here, not yet confirmed (under shared.lock)
        self.flushes: list[str | None] = []  # flush requests not yet handed out (under shared.lock)
        self._woken = threading.Event()
        self._msg_size = 1 << 20  # the fetch's size per message: the largest lately (decays by 1/8 per fetch)
        self._ack_pending: tuple[float, int | None] = (0.0, None)  # (when asked, the consumer's answer)
        self._lost = False
        self._not_taking = False
        self._subscriptions: list[Subscription] = []
        self._keeper: asyncio.Task[None] | None = None
        #: seconds a claim stays in the stream after it was stored (by the NATS server's clock): its duplicate
        #: window and a margin for the clocks (queue.py sets it), so that a restarted NATS server, which
        #: rebuilds the ids it refuses from the messages it holds, still refuses the claimed id
        self.claim_hold = 180.0
        link.reconnect_listeners.append(self._on_reconnect)

    @classmethod
    async def open(cls, settings: QueueSettings, link: Link, shared: Shared, records: Records) -> WriteFeed:
        """On the loop: join the durable pull consumer (made if missing), listen for flush requests, start
        the keepalive."""
        js = link.js
        config = api.ConsumerConfig(
            ack_policy=api.AckPolicy.EXPLICIT, ack_wait=settings.ack_wait, max_ack_pending=-1, max_deliver=-1
        )
        pull = await js.pull_subscribe(
            link.data_subject, durable=settings.consumer, stream=settings.stream, config=config
        )
        ack_wait = settings.ack_wait
        consumer = await js.consumer_info(settings.stream, settings.consumer)
        if consumer.config.ack_wait and abs(consumer.config.ack_wait - settings.ack_wait) > 0.001:
            logger.warning(
                "consumer {} keeps its ack_wait of {:g} s (queue.ack_wait is {:g} s): delete it to change it",
                settings.consumer,
                consumer.config.ack_wait,
                settings.ack_wait,
            )
            ack_wait = consumer.config.ack_wait
        feed = cls(link, shared, records, settings.stream, pull, ack_wait)
        feed._subscriptions.append(await link.nc.subscribe(link.flush_subject, cb=feed._on_flush))
        feed._keeper = link.loop.create_task(feed._keep_alive())
        return feed

    def take(self, max_items: int, timeout: float) -> list[Entry]:
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
            entries: list[Entry] = []
            if msgs:
                # the largest, not the mean: a fetch of many messages sized by small ones could pass the server's
                # max_pending (64 MB) when large ones follow; decaying, so small batches get large fetches again.
                # Claims (no batch, 0 bytes) say nothing about the batches behind them: not counted
                if sized := [len(m.data) for m in msgs if m.data]:
                    self._msg_size = max(max(sized), self._msg_size * 7 // 8)
                entries = self._entries(msgs)  # none: claims, or batches stored already: fetch on, even if late
            if entries or self._woken.is_set() or (not msgs and time.monotonic() >= deadline):
                break
        self._woken.clear()
        return entries

    def _entries(self, msgs: list[Msg]) -> list[Entry]:
        shared, plans, position = self._shared, self._records.plans, self._records.position
        entries: list[Entry] = []
        done: list[Msg] = []
        fresh: list[tuple[int, Msg, Plan | None]] = []
        claims: list[tuple[int, Msg]] = []
        with shared.lock:  # all held at once: the keepalive covers them while the rest is read
            for msg in msgs:
                seq = msg.metadata.sequence.stream
                plan = plans.get(seq)
                if CLAIM in (msg.headers or {}):  # a batch id's claim (sharded.py), no batch
                    claims.append((seq, msg))
                elif position.is_resolved(seq):  # already in a stored object (its writer died before acking)
                    done.append(msg)
                elif seq in self._held or (plan is not None and plan.path in shared.redoing):
                    # delivered again while a buffer or a plan of this process holds it: acknowledged once
                    # that is stored, kept alive till then
                    shared.late[seq] = msg
                else:
                    self._held[seq] = msg
                    fresh.append((seq, msg, plan))
        for msg in done:
            self._link.spawn(msg.ack())
        if claims:
            self._keep_claims(claims)
        for seq, msg, plan in fresh:
            try:
                entry = _entry(seq, msg.data, msg.headers or {}, msg)
            except (pa.ArrowException, ValueError) as exc:  # no writer can read it: set aside, said loudly
                logger.error("NATS message {} is not an Arrow batch ({}); terminated, not stored", seq, exc)
                # recorded failed first: ack says failed, not durable
                self._records.record_failed([seq], f"the NATS message is not an Arrow batch: {exc}")
                self._let_go([seq], "term")
                continue
            if plan is None:
                entries.append(entry)
                continue
            with shared.lock:
                redoing = plan.path in shared.redoing
                if redoing:  # an earlier message of this fetch started its redo
                    shared.late[seq] = self._held.pop(seq)
            if not redoing:
                entries.extend(self._redo(plan, entry))
        return entries

    def _keep_claims(self, claims: list[tuple[int, Msg]]) -> None:
        """Claims (no batch): recorded as claims (durable, no file) unless they are resolved already, then
        left in the stream until ``claim_hold`` s after they were stored, checked at every delivery (given
        back with the time left, whichever way it came again), then acknowledged."""
        new = [seq for seq, _ in claims if not self._records.position.is_resolved(seq)]
        if new:
            try:
                self._records.record_claims(new)
            except Exception as exc:  # NATS away: they come again
                logger.warning("NATS: claims {} not recorded ({}); trying later", seq_ranges(new), exc)
                for _, msg in claims:
                    self._link.spawn(msg.nak(delay=min(5.0, self._ack_wait)))
                return
        now = time.time()
        for _, msg in claims:
            left = msg.metadata.timestamp.timestamp() + self.claim_hold - now
            self._link.spawn(msg.nak(delay=left) if left > 0 else msg.ack())

    def _redo(self, plan: Plan, mine: Entry) -> list[Entry]:
        """The entries of an unconfirmed plan, to store again as planned: ``mine`` and the others read from
        the stream by sequence (another writer may hold their messages: it drops them once this confirms)."""
        entries = [mine]
        try:
            for seq in plan.seqs:
                if seq != mine.seq:
                    raw = self._link.run(self._link.js.get_msg(self._stream, seq), timeout=30)
                    entries.append(_entry(seq, raw.data or b"", raw.headers or {}, None))
        except nats.js.errors.NotFoundError:  # acknowledged, so its confirmation was published first
            self._records.catch_up(10.0)
            if all(self._records.position.is_resolved(s) for s in plan.seqs):
                self._let_go([mine.seq], "ack")
            else:  # not yet readable as resolved: later, not as a second copy
                logger.warning("plan {}: seq {} is not in the stream yet unconfirmed; trying later", plan.path, seq)
                self._let_go([mine.seq], "nak")
            return []
        except Exception as exc:  # NATS away for a moment: the message comes again
            logger.warning("plan {}: cannot read its batches ({}); trying later", plan.path, type(exc).__name__)
            self._let_go([mine.seq], "nak")
            return []
        with self._shared.lock:
            self._shared.redoing.add(plan.path)
        for entry in entries:
            entry.planned = plan
        return entries

    def _let_go(self, seqs: list[int], how: str) -> None:
        """Stop holding these seqs' messages: ``ack`` (stored), ``nak`` (again later, to any writer) or
        ``term`` (never again)."""
        with self._shared.lock:
            msgs = [m for s in seqs if (m := self._held.pop(s, None)) is not None]
        for msg in msgs:
            if how == "nak":
                self._link.spawn(msg.nak(delay=min(5.0, self._ack_wait)))
            else:
                self._link.spawn(getattr(msg, how)())

    def flush_requests(self) -> list[str | None]:
        if not self.flushes:
            return []
        with self._shared.lock:
            requests, self.flushes = self.flushes, []
            return requests

    async def _on_flush(self, msg: Msg) -> None:
        with self._shared.lock:
            if None not in self.flushes:
                self.flushes.append(None)  # every buffer: what a dataset holds is not known across processes
        self._woken.set()

    async def _keep_alive(self) -> None:
        while not self._link.nc.is_closed:
            await asyncio.sleep(self._ack_wait / 3)
            with self._shared.lock:
                msgs = [*self._held.values(), *self._shared.late.values()]
            for msg in msgs:
                try:
                    await msg.in_progress()
                except Exception:  # disconnected: redelivery may follow; the plans keep it exactly once
                    break

    def _on_reconnect(self, down: float) -> None:
        """Down long enough for JetStream to give what this process held to other writers: let go of it
        (the writer drops its buffers; files not yet planned are not stored). Planned files go on: whoever
        gets their batches stores the same object again."""
        if down < self._ack_wait / 2:
            return
        with self._shared.lock:
            if not self._held and not self._shared.late:
                return
            logger.warning(
                "NATS was away {:.1f} s (ack_wait {:g} s): letting go of {} batches held here; they come again",
                down,
                self._ack_wait,
                len(self._held),
            )
            self._held.clear()
            self._shared.late.clear()
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

    def give_back(self) -> None:
        """The writer dropped its buffers for another reason than this feed's (another stream's connection
        was lost, queue/nats/sharded.py): everything held here goes back to the stream at once (``nak``),
        to be taken again by any writer; objects already planned go on, and their redelivered batches are
        settled by the records as after a reconnect."""
        with self._shared.lock:
            seqs = list(self._held)
            late = list(self._shared.late.values())
            self._shared.late.clear()
        self._let_go(seqs, "nak")
        for msg in late:
            self._link.spawn(msg.nak(delay=min(5.0, self._ack_wait)))

    def plan(self, plan: Plan, entries: list[Entry] | None = None) -> None:
        """Record the plan, then check it against the records stream's order: a seq that an earlier plan
        holds or that is resolved already went to another writer while this one held it (it was slow, or
        NATS was away). Then the plan is withdrawn, what is still held here goes back to the stream, and
        QueueLost keeps the file from being stored."""
        entries = entries or []
        with self._shared.lock:
            gone = [e.seq for e in entries if e.handle is not None and self._held.get(e.seq) is not e.handle]
        if gone:
            self._lose(plan, entries, gone, "were given to another writer (NATS was away)")
        self._records.record_plan(plan)
        if taken := self._records.taken(plan):
            self._records.withdraw(plan)
            self._lose(plan, entries, taken, "are in another writer's plan or object")

    def _lose(self, plan: Plan, entries: list[Entry], seqs: list[int], why: str) -> None:
        """Give back what this process still holds of ``entries`` (stored ones acknowledged) and raise."""
        position = self._records.position
        with self._shared.lock:
            mine = [e.seq for e in entries if e.handle is not None and self._held.get(e.seq) is e.handle]
        self._let_go([s for s in mine if position.is_resolved(s)], "ack")
        self._let_go([s for s in mine if not position.is_resolved(s)], "nak")
        raise QueueLost(f"{plan.path}: seqs {seq_ranges(sorted(seqs))} {why}")

    def confirm(self, entries: list[Entry], path: str | None, table: bool = False) -> bool:
        """Publish the entries' durable record, then acknowledge their messages. True if any were
        acknowledged (the stream deleted them: its state changed)."""
        if not entries:
            return False
        # published before the acks: a message delivered again finds it resolved
        self._records.record_durable([e.seq for e in entries], path, table)
        return self._ack([e.seq for e in entries])

    def committed(self, seqs: tuple[int, ...]) -> None:
        """Publish a committed record (a table commit holding these seqs landed)."""
        if seqs:
            self._records.record_committed(list(seqs))

    def reject(self, entries: list[Entry], error: str) -> bool:
        """As ``confirm``, with a failed record."""
        if not entries:
            return False
        self._records.record_failed([e.seq for e in entries], error)
        return self._ack([e.seq for e in entries])

    def _ack(self, seqs: list[int]) -> bool:
        with self._shared.lock:
            msgs = [m for s in seqs if (m := self._held.pop(s, None)) is not None]
        if msgs:
            self._link.run(_ack_all(msgs), timeout=60)
        return bool(msgs)

    def wake(self) -> None:
        self._woken.set()

    def held_bytes(self, state: api.StreamState) -> int:
        """Bytes of the stream's messages delivered to writers, this one and others, and not yet
        acknowledged: the consumer's count of them at the stream's mean message size (asked at most every
        ``HELD_TTL`` s); where the consumer does not answer, what this process holds."""
        at, pending = self._ack_pending
        if time.monotonic() - at > HELD_TTL:
            try:
                pending = self._link.run(self._pull.consumer_info(), timeout=5).num_ack_pending
            except Exception:  # NATS away: what this process knows
                pending = None
            self._ack_pending = (time.monotonic(), pending)
        if pending is None:
            with self._shared.lock:
                return sum(len(m.data or b"") for m in self._held.values())
        return min(state.bytes, pending * state.bytes // state.messages) if state.messages else 0

    def forget_held(self) -> None:
        """Messages were acknowledged: ask the consumer again at the next question."""
        self._ack_pending = (0.0, None)


async def _ack_all(msgs: list[Msg]) -> None:
    """Acknowledge every message, the last one waiting for the server's answer: acks of one connection are
    handled in order, so then all are (and work-queue retention has deleted them)."""
    for msg in msgs[:-1]:
        await msg.ack()
    await msgs[-1].ack_sync(timeout=30)


def _entry(seq: int, data: bytes, headers: dict[str, str], msg: Msg | None) -> Entry:
    batch = decode_ipc(pa.py_buffer(data))
    return Entry(
        seq,
        headers.get("fw-dataset", ""),
        batch.schema.serialize().to_pybytes(),
        batch,
        float(headers.get("fw-at", time.time())),
        len(data),  # what it takes of the stream's max_bytes
        id_of_header(headers.get("Nats-Msg-Id", "")) if headers.get("fw-id") else None,
        msg,
    )
