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

import asyncio
import json
import threading
import time
import uuid
from typing import Any

import nats
import pyarrow as pa
from loguru import logger
from nats.js import api

from flight_writer.queue.base import (
    Accepted,
    Entry,
    Plan,
    Queue,
    QueueClosed,
    QueueFull,
    QueueLost,
    QueueWriteError,
    count_for,
)
from flight_writer.queue.nats_link import Link
from flight_writer.queue.wal_format import encode_ipc
from flight_writer.seqs import parse_ranges, seq_ranges
from flight_writer.settings import QueueSettings
from flight_writer.tracker import DurabilityTracker

ROLES = ("all", "ingest", "write")
FETCH_BYTES = 8 << 20  # per fetch: NATS drops a connection whose pending bytes pass max_pending (64 MB)
FULL = (10047, 10077)  # JetStream: stream maximum bytes / messages exceeded
STATE_TTL = 0.2  # seconds a stream_info answer is reused (room, last_seq)


class NatsQueue(Queue):
    """Implements :class:`Queue` on NATS JetStream (see the module docstring). ``role`` says which side this
    process uses: ``ingest`` cannot ``take``, ``write`` cannot ``put``."""

    type = "nats"
    ack_state = "logged"

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
        self._received = [0, 0, 0]
        self._by_dataset: dict[str, list[int]] = {}
        self._msg_size = 1 << 20  # the fetch's size per message: the largest lately (decays by 1/8 per fetch)
        self._records_applied = 0
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
        if not state.messages:
            return True
        deadline = time.monotonic() + timeout
        while self._records_applied < state.last_seq:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)  # applied on the loop thread; a few ms
        return True

    # -- records ---------------------------------------------------------------------------------------
    async def _on_record(self, msg: Any) -> None:
        try:
            record = json.loads(msg.data)
        except ValueError:
            logger.error("NATS: a durability record is not JSON; skipped")
        else:
            self._apply(record)
        self._records_applied = msg.metadata.sequence.stream

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

    # -- ingest ----------------------------------------------------------------------------------------
    def put(
        self,
        dataset: str,
        schema_key: bytes,
        batch: pa.RecordBatch,
        timeout: float,
        client_id: str | None = None,
        *,
        wait: bool = True,
    ) -> Accepted:
        if self._refusing:
            raise QueueClosed("queue is closed")
        if self._role == "write":
            raise RuntimeError("a write process takes no batches (role = write)")
        payload = memoryview(encode_ipc(batch, self._ipc))  # nats-py joins it into the command: one copy, not two
        if len(payload) > self._s.max_bytes:
            raise QueueWriteError(
                f"a batch of {len(payload)} bytes as Arrow IPC is larger than queue.max_bytes ({self._s.max_bytes}), "
                "the stream's limit: it can never fit"
            )
        headers = {"fw-dataset": dataset, "fw-at": repr(time.time())}
        if client_id is not None:
            headers["Nats-Msg-Id"], headers["fw-id"] = client_id, "1"
        else:
            with self._lock:
                self._ids += 1
                headers["Nats-Msg-Id"] = f"{self._name}-{self._ids}"  # a retried publish is stored once
        ack = self._link.run(self._publish(payload, headers, timeout))
        with self._lock:
            self._last_seq = max(self._last_seq, ack.seq)
            if not ack.duplicate:
                rows, nbytes = batch.num_rows, batch.get_total_buffer_size()
                self._received[0] += 1
                self._received[1] += rows
                self._received[2] += nbytes
                count_for(self._by_dataset, dataset, 1, rows, nbytes)
        return Accepted(ack.seq, bool(ack.duplicate))

    def put_many(
        self,
        dataset: str,
        schema_key: bytes,
        batches: list[pa.RecordBatch],
        timeout: float,
        client_ids: list[str | None],
        *,
        wait: bool = True,
    ) -> list[Accepted]:
        """One message per piece: not all or none (a failure leaves the earlier pieces queued; with batch
        ids, sending the batch again stores only the missing ones)."""
        return [self.put(dataset, schema_key, b, timeout, c) for b, c in zip(batches, client_ids, strict=True)]

    async def _publish(self, payload: bytes, headers: dict[str, str], timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        delay = 0.01
        while True:
            remaining = deadline - time.monotonic()
            try:
                return await self._link.js.publish(
                    self._link.data_subject,
                    payload,
                    timeout=max(0.5, min(5.0, remaining)),
                    stream=self._s.stream,
                    headers=headers,
                )
            except nats.errors.MaxPayloadError:
                raise QueueWriteError(
                    f"a batch of {len(payload)} bytes as Arrow IPC is over NATS's max_payload: send smaller batches "
                    "or raise max_payload on the NATS servers"
                ) from None
            except nats.js.errors.APIError as exc:
                if exc.err_code not in FULL:
                    raise QueueWriteError(f"NATS refused the batch: {exc.description or exc}") from None
                reason = f"queue full: stream {self._s.stream} holds queue.max_bytes ({self._s.max_bytes}) unstored"
            except (TimeoutError, nats.errors.Error) as exc:
                reason = f"NATS did not take the batch ({type(exc).__name__})"
                self._link.last_error = reason
            if self._refusing:
                raise QueueClosed("queue is closed")
            if remaining <= 0:
                raise QueueFull(f"{reason}; waited {timeout:g} s")
            await asyncio.sleep(min(delay, max(remaining, 0.001)))
            delay = min(delay * 2, 0.5)

    @property
    def max_message_bytes(self) -> int:
        """Three quarters of the server's ``max_payload``: room for the IPC schema and headers."""
        return int(self._link.nc.max_payload * 0.75)

    def flush(self, dataset: str | None, timeout: float | None) -> bool:
        through = self.last_seq
        deadline = None if timeout is None else time.monotonic() + timeout
        request = json.dumps({"dataset": None, "through": through}).encode()
        while True:
            if self.position.durable_through >= through:
                return True
            if self.position.closed:
                return False
            try:
                self._link.run(self._link.nc.publish(self._link.flush_subject, request), timeout=10)
            except Exception as exc:  # NATS away: keep waiting, ask again
                self._link.last_error = f"NATS: flush request not sent ({type(exc).__name__})"
            remaining = None if deadline is None else deadline - time.monotonic()
            if self.position.wait_through(through, 1.0 if remaining is None else min(1.0, max(0.0, remaining))):
                return True
            if self.position.closed or (remaining is not None and remaining <= 1.0):
                return False

    def refuse_puts(self) -> None:
        self._refusing = True

    @property
    def last_seq(self) -> int:
        state = self._stream_state()
        with self._lock:
            self._last_seq = max(self._last_seq, state.last_seq)
            return self._last_seq

    def _stream_state(self, fresh: bool = False) -> Any:
        at, state = self._state
        if fresh or state is None or time.monotonic() - at > STATE_TTL:
            try:
                state = self._link.run(self._link.js.stream_info(self._s.stream), timeout=10).state
            except Exception as exc:
                if state is None:
                    raise
                self._link.last_error = f"NATS: stream info unavailable ({type(exc).__name__})"
            else:
                self._state = (time.monotonic(), state)
                # acknowledged means stored: below the first message everything is resolved, records or not
                if (position := getattr(self, "position", None)) is not None:  # made from the first answer
                    position.advance_to(state.first_seq - 1 if state.messages else state.last_seq)
        return state

    # -- feed ------------------------------------------------------------------------------------------
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
        deadline = time.monotonic() + 60
        while self._records_applied < at:  # the loop thread applies records in order
            if time.monotonic() > deadline:
                raise TimeoutError(f"NATS: the plan record of {plan.path} was not read back within 60 s")
            time.sleep(0.001)
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

    # -- both ------------------------------------------------------------------------------------------
    def close(self) -> None:
        self._refusing = True
        self._woken.set()
        self.position.close()
        self._link.close()

    def stats(self) -> dict[str, Any]:
        state = self._stream_state(fresh=True)
        age = self._age_of(state.first_seq) if state.messages else None  # outside the lock: the loop takes it
        with self._lock:
            stats: dict[str, Any] = {
                "pending_batches": state.messages,  # in the stream: not yet stored, by any process
                "pending_bytes": state.bytes,
                "queued_batches": None,
                "received_batches": self._received[0],  # by this process
                "received_rows": self._received[1],
                "received_bytes": self._received[2],
                "oldest_pending_age_s": age,
                "nats_stream": self._s.stream,
                "nats_connected": self._link.nc.is_connected,
                "role": self._role,
            }
        if self._link.last_error and not self._link.nc.is_connected:
            stats["queue_error"] = self._link.last_error
        return stats

    def _age_of(self, seq: int) -> float | None:
        """Seconds since the batch ``seq`` was received (one read of the stream)."""
        try:
            raw = self._link.run(self._link.js.get_msg(self._s.stream, seq), timeout=10)
        except Exception:  # stored meanwhile, or NATS away: no age to tell
            return None
        return round(max(0.0, time.time() - float((raw.headers or {}).get("fw-at", time.time()))), 3)

    def received_by_dataset(self) -> dict[str, tuple[int, int, int]]:
        with self._lock:
            return {name: (c[0], c[1], c[2]) for name, c in self._by_dataset.items()}


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
