"""The durability records of the NATS queue (queue.py): every process reads ``<stream>.records`` from the
start, in order, and applies each record; a write process publishes them.

A record is one JSON object, stamped ``"of"``: the data stream's creation time, so that records of an earlier
stream of the same name (deleted, made again) resolve nothing here.

- ``{"plan": path, "kind", "seqs", "error"?}``: a writer is about to store ``path`` holding ``seqs``. The first
  plan of a seq holds it: a message of that seq delivered again is stored as that plan says. A plan that
  meets an earlier plan's seq holds none (its writer withdraws it).
- ``{"withdraw": path, "seqs"}``: that plan lost a seq to an earlier one; its file is not stored and its
  batches come again.
- ``{"durable": seqs, "file"}`` and ``{"failed": seqs, "error"}``: resolved. The durability position
  advances, the seqs' plans end, and messages of them delivered here again are acknowledged. With
  ``"claim": true`` (and no file) the seqs were claims of batch ids, no batches (sharded.py): kept here for
  twice the stream's duplicate window plus a minute, for ``NatsQueue.kind_of`` (which asks about a seq
  JetStream answered a duplicate with, so one stored within the window; a process of an earlier version
  reads them as empty batches).
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from loguru import logger
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api

from flight_writer.queue.base import Plan
from flight_writer.queue.nats.link import Link
from flight_writer.queue.seqs import parse_ranges, seq_ranges
from flight_writer.queue.tracker import DurabilityTracker


@dataclass(eq=False)
class Shared:
    """What the records, the publisher and the feed of one queue share. ``lock`` guards it, and what each
    part keeps under it (the plans, the messages held, the counters); it is taken briefly and never across
    a bridge call, since the loop thread takes it to apply records."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    #: the highest seq known here: from a put's acknowledgement, the stream's state or a record
    last_seq: int = 0
    #: seq -> message delivered again while this process already stores its seq (in a buffer or through a
    #: plan): kept alive, acknowledged once the record resolving the seq is applied
    late: dict[int, Msg] = field(default_factory=dict)
    #: plans (paths) the writer was handed to store again; they end with the record resolving their seqs
    redoing: set[str] = field(default_factory=set)


class Records:
    """Reads and applies the records (a subscription on the loop thread, from ``subscribe``), publishes
    them, and owns what they decide: the plans table and the durability position's updates."""

    def __init__(
        self, link: Link, shared: Shared, position: DurabilityTracker, incarnation: str, window: float = 120.0
    ) -> None:
        """``window``: the data stream's duplicate window (s)."""
        self._link = link
        self._shared = shared
        #: advanced here only: by durable and failed records, and by the data stream's first sequence
        self.position = position
        self._incarnation = incarnation  # the data stream's creation time: the records' "of"
        #: seq -> the unconfirmed plan holding it (the first plan of the seq); under ``shared.lock``
        self.plans: dict[int, Plan] = {}
        #: seq -> when its claim record was applied (monotonic), oldest first; under ``shared.lock``
        self._claims: OrderedDict[int, float] = OrderedDict()
        self._claims_kept = 2 * window + 60.0
        self._applied_seq = 0  # the records stream's sequence applied so far (on the loop thread)
        self._applied = threading.Condition()
        self._subscription: JetStreamContext.PushSubscription | None = None

    async def subscribe(self) -> None:
        """Read every record from the first one on (an ordered consumer), applying each as it comes."""
        self._subscription = await self._link.js.subscribe(
            self._link.records_subject,
            stream=self._link.records_stream,
            ordered_consumer=True,
            deliver_policy=api.DeliverPolicy.ALL,
            cb=self._on_record,
        )

    def catch_up(self, timeout: float) -> bool:
        """Wait until every record stored so far is applied (plans and confirmations of other processes);
        False if ``timeout`` s passed first."""
        state = self._link.run(self._link.js.stream_info(self._link.records_stream), timeout=min(30.0, timeout)).state
        return not state.messages or self._wait_applied(state.last_seq, timeout)

    def _wait_applied(self, seq: int, timeout: float) -> bool:
        """Wait until the records up to ``seq`` (the records stream's sequence) are applied here."""
        with self._applied:
            return self._applied.wait_for(lambda: self._applied_seq >= seq, timeout)

    def advance_to(self, seq: int) -> None:
        """Everything up to ``seq`` is resolved, records or not (the data stream holds nothing below it)."""
        self.position.advance_to(seq)

    def taken(self, plan: Plan) -> list[int]:
        """The seqs of ``plan`` that are resolved, or that an earlier plan holds."""
        with self._shared.lock:
            return [
                s
                for s in plan.seqs
                if self.position.is_resolved(s) or ((other := self.plans.get(s)) and other.path != plan.path)
            ]

    # -- publishing ------------------------------------------------------------------------------------
    def record_plan(self, plan: Plan) -> None:
        """Publish the plan and wait until it is applied here: then ``taken`` tells whether an earlier
        plan or record holds any of its seqs (the loop thread applies records in the stream's order)."""
        record: dict[str, Any] = {"plan": plan.path, "kind": plan.kind, "seqs": seq_ranges(list(plan.seqs))}
        if plan.error is not None:
            record["error"] = plan.error
        at = self._publish(record)
        if not self._wait_applied(at, 60.0):
            raise TimeoutError(f"NATS: the plan record of {plan.path} was not read back within 60 s")

    def withdraw(self, plan: Plan) -> None:
        """The plan lost a seq to an earlier one: every process forgets it (its batches come again)."""
        self._publish({"withdraw": plan.path, "seqs": seq_ranges(list(plan.seqs))})

    def record_durable(self, seqs: list[int], path: str | None, table: bool = False) -> None:
        """Publish that ``seqs`` are stored in ``path`` (None: they had no rows), and apply it here.
        ``table``: the file waits for a table commit (a committed record follows)."""
        record: dict[str, Any] = {"durable": seq_ranges(sorted(seqs)), "file": path}
        if table:
            record["table"] = True
        self._record(record)

    def record_claims(self, seqs: list[int]) -> None:
        """Publish that ``seqs`` are claims of batch ids (durable, no file), and apply it here."""
        self._record({"durable": seq_ranges(sorted(seqs)), "file": None, "claim": True})

    def is_claim(self, seq: int) -> bool:
        """Whether a claim record of ``seq`` was applied here (lately: see the module docstring)."""
        with self._shared.lock:
            return seq in self._claims

    def record_committed(self, seqs: list[int]) -> None:
        """Publish that a table commit holding ``seqs`` landed, and apply it here."""
        self._record({"committed": seq_ranges(sorted(seqs))})

    def record_failed(self, seqs: list[int], error: str) -> None:
        """Publish that ``seqs`` failed for good, and apply it here."""
        self._record({"failed": seq_ranges(sorted(seqs)), "error": error})

    def _record(self, record: dict[str, Any]) -> None:
        self._publish(record)
        self._apply(record)

    def _publish(self, record: dict[str, Any]) -> int:
        """Publish a record (one bridge call); its sequence in the records stream."""
        return self._link.run(self._publish_async(record), timeout=60)

    async def _publish_async(self, record: dict[str, Any]) -> int:
        ack = await self._link.js.publish(
            self._link.records_subject,
            json.dumps({**record, "of": self._incarnation}).encode(),
            stream=self._link.records_stream,
        )
        return ack.seq

    # -- applying --------------------------------------------------------------------------------------
    async def _on_record(self, msg: Msg) -> None:
        try:
            record = json.loads(msg.data)
        except ValueError:
            logger.error("NATS: a durability record is not JSON; skipped")
        else:
            self._apply(record)
        with self._applied:
            self._applied_seq = msg.metadata.sequence.stream
            self._applied.notify_all()

    def _apply(self, record: dict[str, Any]) -> None:
        if record.get("of", self._incarnation) != self._incarnation:
            return  # about an earlier stream of this name
        shared = self._shared
        if "plan" in record:
            plan = Plan(record["plan"], record["kind"], tuple(parse_ranges(record["seqs"])), record.get("error"))
            with shared.lock:
                # the first plan of a seq holds it. A plan that meets an earlier plan's seq holds none: its
                # writer withdraws it (``taken``), so no process may redo it meanwhile (registered for its
                # free seqs, it was redone by a third writer while its own was stalled between the two
                # records, and the redo stored the earlier plan's batches, read from the stream, a second
                # time). Decided by the plans alone, which only records change, so alike in every process;
                # seqs already resolved are skipped as before (the data stream's first sequence, read at any
                # moment, also resolves seqs: not a ground for a verdict that must be the same everywhere).
                if not any((other := self.plans.get(seq)) is not None and other.path != plan.path for seq in plan.seqs):
                    for seq in plan.seqs:
                        if not self.position.is_resolved(seq):
                            self.plans.setdefault(seq, plan)
            return
        if "withdraw" in record:  # a plan that lost a seq to an earlier one: its batches come again
            with shared.lock:
                for seq in parse_ranges(record["seqs"]):
                    if (held := self.plans.get(seq)) is not None and held.path == record["withdraw"]:
                        del self.plans[seq]
            return
        if "committed" in record:
            self.position.mark_committed(parse_ranges(record["committed"]))
            return
        if "durable" in record:
            seqs = list(parse_ranges(record["durable"]))
            if record.get("claim"):
                now = time.monotonic()
                with shared.lock:
                    claims = self._claims
                    for s in seqs:
                        claims[s] = now
                    while claims and next(iter(claims.values())) < now - self._claims_kept:
                        claims.popitem(last=False)
            self.position.mark_durable(seqs, record.get("file"), bool(record.get("table")))
        elif "failed" in record:
            seqs = list(parse_ranges(record["failed"]))
            self.position.mark_failed(seqs, record.get("error", "failed"))
        else:
            return
        with shared.lock:
            shared.last_seq = max(shared.last_seq, *seqs)
            late = [m for s in seqs if (m := shared.late.pop(s, None)) is not None]
            for s in seqs:
                if (ended := self.plans.pop(s, None)) is not None:
                    shared.redoing.discard(ended.path)
        for m in late:  # their batches are in a stored object: done
            self._link.spawn(m.ack())
