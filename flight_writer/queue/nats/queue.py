"""NATS JetStream queue: any number of ingest and write processes, on any machines, sharing one stream.

A batch is one message on ``<stream>.data`` (Arrow IPC, lz4 by ``queue.compression``; headers: dataset,
time received); its ``seq`` is the stream sequence, global across processes, and its reply says
``logged`` once JetStream acknowledged the publish (stored, replicated when ``replicas`` > 1). Every publish
carries a ``Nats-Msg-Id``: the producer's batch id, or one the process makes, so a publish retried after an
ambiguous timeout is stored once; JetStream remembers ids for ``duplicate_window`` seconds (a duration, not
the memory and WAL queues' count of ids). A full stream (``max_bytes``) refuses publishes: ``put`` retries
until ``put_timeout``, then QueueFull. Batches over NATS's ``max_payload`` are refused with a message saying
so (queue.max_payload notes in the README).

Write processes share one durable pull consumer: JetStream spreads the messages over them and redelivers a
message not acknowledged within ``ack_wait`` (its process died). A process keeps the messages it holds
alive (``in_progress`` every ``ack_wait / 3``) while they wait in its buffers, and acknowledges them only
after storage confirmed the object holding them and the durability record is published.

Durability records on ``<stream>.records`` (``{"plan": path, "kind", "seqs"}``, ``{"durable": seqs,
"file"}``, ``{"failed": seqs, "error"}``) are read by every process from the start: ingest processes answer
``ack``/``status``/``flush`` from them whichever process received the batch, write processes learn the plans.
Exactly once: a writer records its plan before the upload; a message redelivered after its writer died
that belongs to an unconfirmed plan is stored as that plan says, under the same name, with the plan's
other batches read from the stream by sequence (``get_msg``), so batches split across writers neither
stall nor make a second copy; a message already in a confirmed object is acknowledged and dropped.

``flush`` publishes a request on ``<stream>.flush`` to every write process (repeated each second, for
messages delivered after it) and waits until everything up to the stream's last sequence is resolved;
writers then write out every buffer, not only the dataset's: which seqs belong to a dataset is not known
across processes.
"""

from __future__ import annotations

import json
import threading
import uuid
from typing import Any

import pyarrow as pa
from loguru import logger
from nats.js import api

from flight_writer.config.settings import QueueSettings
from flight_writer.queue.base import Plan, Queue, SharedFeed
from flight_writer.queue.counting import Counts
from flight_writer.queue.nats.feed import NatsFeed
from flight_writer.queue.nats.ingest import NatsIngest
from flight_writer.queue.nats.link import Link
from flight_writer.queue.seqs import parse_ranges
from flight_writer.queue.tracker import DurabilityTracker

ROLES = ("all", "ingest", "write")


class NatsQueue(NatsIngest, NatsFeed, Queue, SharedFeed):
    """Implements :class:`Queue` on NATS JetStream (see the module docstring): the ingest side in
    nats_ingest.py, the write side in nats_feed.py, the connection and the records here. ``role`` says which
    side this process uses: ``ingest`` cannot ``take``, ``write`` cannot ``put``."""

    type = "nats"
    ack_state = "logged"
    shared = True

    def __init__(self, settings: QueueSettings, role: str = "all", history: int = 100_000) -> None:
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {role!r}")
        self._s = settings
        self._role = role
        self._name = f"flight-writer-{role}-{uuid.uuid4().hex[:8]}"
        self._ipc = pa.ipc.IpcWriteOptions(
            compression=None if settings.compression == "none" else settings.compression, use_threads=False
        )
        self._link = link = Link(settings, self._name)
        self._lock = threading.Lock()
        self._ids = 0
        self._state: tuple[float, Any] = (0.0, None)
        info = link.run(link.js.stream_info(settings.stream), timeout=30)
        # records of an earlier stream of the same name (deleted, made again) must not resolve this one's seqs
        self._incarnation = info.created.isoformat() if info.created else ""
        self._max_bytes = info.config.max_bytes or settings.max_bytes  # the stream's, if made with another
        self._ack_wait = settings.ack_wait  # the consumer's, once subscribed
        state = self._stream_state(fresh=True)
        self._last_seq = state.last_seq
        # work-queue retention deletes a message once acknowledged, i.e. stored: below the first one, all is
        through = state.first_seq - 1 if state.messages else state.last_seq
        self.position = DurabilityTracker(history, through, pending_state=self.ack_state)
        self._plans: dict[int, Plan] = {}  # seq -> the unconfirmed plan holding it
        self._held: dict[int, Any] = {}  # seq -> message delivered here, not yet confirmed
        self._late: dict[int, Any] = {}  # messages of seqs this process already stores through a plan
        self._redoing: set[str] = set()  # plans (paths) handed to the writer to redo
        self._flushes: list[str | None] = []
        self._woken = threading.Event()
        self._refusing = False
        self._received = Counts()  # by this process
        self._msg_size = 1 << 20  # the fetch's size per message: the largest lately (decays by 1/8 per fetch)
        self._records_applied = 0  # the records stream's sequence applied so far (on the loop thread)
        self._applied = threading.Condition()
        self._subs: list[Any] = []
        self._lost = False
        self._not_taking = False
        link.reconnect_listeners.append(self._on_reconnect)
        try:
            link.run(self._subscribe(), timeout=60)
            if not self._catch_up(60.0):
                raise ConnectionError(f"NATS: the records of {settings.stream} were not read within 60 s")
        except BaseException:
            link.close()
            raise

    async def _subscribe(self) -> None:
        link, js = self._link, self._link.js
        self._subs.append(
            await js.subscribe(
                link.records_subject,
                stream=link.records_stream,
                ordered_consumer=True,
                deliver_policy=api.DeliverPolicy.ALL,
                cb=self._on_record,
            )
        )
        if self._role == "ingest":
            return
        config = api.ConsumerConfig(
            ack_policy=api.AckPolicy.EXPLICIT, ack_wait=self._s.ack_wait, max_ack_pending=-1, max_deliver=-1
        )
        self._pull = await js.pull_subscribe(
            link.data_subject, durable=self._s.consumer, stream=self._s.stream, config=config
        )
        consumer = await js.consumer_info(self._s.stream, self._s.consumer)
        if consumer.config.ack_wait and abs(consumer.config.ack_wait - self._s.ack_wait) > 0.001:
            logger.warning(
                "consumer {} keeps its ack_wait of {:g} s (queue.ack_wait is {:g} s): delete it to change it",
                self._s.consumer,
                consumer.config.ack_wait,
                self._s.ack_wait,
            )
            self._ack_wait = consumer.config.ack_wait
        self._subs.append(await link.nc.subscribe(link.flush_subject, cb=self._on_flush))
        link.loop.create_task(self._keep_alive())

    def _catch_up(self, timeout: float) -> bool:
        """Wait until every record stored so far is applied (plans and confirmations of other processes);
        False if ``timeout`` s passed first."""
        state = self._link.run(self._link.js.stream_info(self._link.records_stream), timeout=30).state
        return not state.messages or self._wait_applied(state.last_seq, timeout)

    def _wait_applied(self, seq: int, timeout: float) -> bool:
        """Wait until the records up to ``seq`` (the records stream's sequence) are applied here."""
        with self._applied:
            return self._applied.wait_for(lambda: self._records_applied >= seq, timeout)

    # -- records ---------------------------------------------------------------------------------------
    async def _on_record(self, msg: Any) -> None:
        try:
            record = json.loads(msg.data)
        except ValueError:
            logger.error("NATS: a durability record is not JSON; skipped")
        else:
            self._apply(record)
        with self._applied:
            self._records_applied = msg.metadata.sequence.stream
            self._applied.notify_all()

    def _apply(self, record: dict[str, Any]) -> None:
        if record.get("of", self._incarnation) != self._incarnation:
            return  # about an earlier stream of this name
        if "plan" in record:
            plan = Plan(record["plan"], record["kind"], tuple(parse_ranges(record["seqs"])), record.get("error"))
            with self._lock:
                for seq in plan.seqs:
                    if not self.position.is_resolved(seq):
                        self._plans.setdefault(seq, plan)  # the first plan of a seq holds it
            return
        if "withdraw" in record:  # a plan that lost a seq to an earlier one: its batches come again
            with self._lock:
                for seq in parse_ranges(record["seqs"]):
                    if (plan := self._plans.get(seq)) is not None and plan.path == record["withdraw"]:
                        del self._plans[seq]
            return
        if "durable" in record:
            seqs = list(parse_ranges(record["durable"]))
            self.position.mark_durable(seqs, record.get("file"))
        elif "failed" in record:
            seqs = list(parse_ranges(record["failed"]))
            self.position.mark_failed(seqs, record.get("error", "failed"))
        else:
            return
        with self._lock:
            self._last_seq = max(self._last_seq, *seqs)
            late = [m for s in seqs if (m := self._late.pop(s, None)) is not None]
            for s in seqs:
                if (plan := self._plans.pop(s, None)) is not None:
                    self._redoing.discard(plan.path)
        for m in late:  # their batches are in a stored object: done
            self._link.spawn(m.ack())

    async def _publish_record(self, record: dict[str, Any]) -> int:
        """Publish a record; its sequence in the records stream."""
        ack = await self._link.js.publish(
            self._link.records_subject,
            json.dumps({**record, "of": self._incarnation}).encode(),
            stream=self._link.records_stream,
        )
        return ack.seq

    def _record(self, record: dict[str, Any]) -> None:
        self._link.run(self._publish_record(record), timeout=60)
        self._apply(record)

    # -- both ------------------------------------------------------------------------------------------
    def close(self) -> None:
        self._refusing = True
        self._woken.set()
        self.position.close()
        self._link.close()
