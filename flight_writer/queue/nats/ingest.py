"""The ingest side of the NATS queue (queue.py): publishing batches, flush requests, the stream's state.

A put is one message on ``<stream>.data``, published with a ``Nats-Msg-Id`` (the producer's batch id, or
one this process makes, so a retried publish is stored once) and acknowledged by JetStream before it
returns: its seq is the stream's sequence. A full stream (``discard = new``) refuses: the put retries with
backoff until ``put_timeout``, then QueueFull.

Packed puts (``put_packed``: batches without an id, from streams that answer each batch when it is kept)
do not wait. Each dataset and schema has a *pack*: the batches put while the previous message of that
dataset and schema is being published go into the next message together, up to ``PACK_BYTES``, and share
its seq; each batch's receipt (a future) is resolved when JetStream acknowledged the message. So a put
costs a message only when NATS keeps up, and small batches share the per-message cost (a publish, a
PubAck, a delivery, an acknowledgment, in three processes) when it does not. One message of a dataset and
schema is in flight at a time: a stream's batches keep their order in the stream.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import nats
import pyarrow as pa
from loguru import logger
from nats.js import api

from flight_writer.config.settings import QueueSettings
from flight_writer.queue.base import Accepted, QueueClosed, QueueFull, QueueWriteError, put_alone
from flight_writer.queue.counting import Counts
from flight_writer.queue.ipc import encode_ipc, encode_ipc_many, has_dictionary, write_options
from flight_writer.queue.nats.link import CLAIM, PROCESS_ID, Link, header_id
from flight_writer.queue.nats.records import Records, Shared

FULL = (10047, 10077)  # JetStream: stream maximum bytes / messages exceeded
IN_PROCESS = 10158  # JetStream: a message with this id is being stored (replicated streams): try again
STATE_TTL = 0.2  # seconds a stream_info answer is reused (room, last_seq)
PACK_BYTES = 1 << 20  # IPC bytes a packed message holds at most (a larger batch goes alone)
PACKS_WAITING = 16 << 20  # IPC bytes of packed puts not yet acknowledged by NATS: beyond, puts wait


NOT_KEPT = "queue is closed: the batch was not kept; send it again"


@dataclass(eq=False)
class _Pack:
    """Batches of one dataset and schema for one message, and their receipts."""

    dataset: str
    timeout: float  # its first put's
    deadline: float  # then QueueFull
    received_at: float  # its first batch's: the message's time received (its date and hour partition)
    batches: list[pa.RecordBatch] = field(default_factory=list)
    receipts: list[Future[Accepted]] = field(default_factory=list)
    nbytes: int = 0  # the batches' IPC message bytes


class Publisher:
    """The ingest side: publishes batches and flush requests, and answers ``last_seq``, ``room`` and
    ``stats`` from the data stream's state (asked again after ``STATE_TTL`` s, or after ``forget_state``).
    ``flush`` waits on the durability position, which the records advance."""

    def __init__(
        self,
        settings: QueueSettings,
        link: Link,
        shared: Shared,
        records: Records,
        name: str,
        role: str,
        max_bytes: int,
        state: api.StreamState,
    ) -> None:
        self._stream = settings.stream
        self._link = link
        self._shared = shared  # its lock; last_seq
        self._records = records
        self._name = PROCESS_ID + name  # the prefix of the batch ids this process makes (never a producer's)
        self._role = role
        self.max_bytes = max_bytes  # the stream's (queue.max_bytes when it was made)
        self._ipc = write_options(settings.compression)
        self._ids = 0  # batch ids made here (under shared.lock)
        self._state: tuple[float, api.StreamState] = (time.monotonic(), state)  # (when asked, the answer)
        self._refusing = False
        #: set once the stream's description says another seq stride (a process of another queue.streams or
        #: stream_slots took it over while it was empty): in status, and logged
        self.stride_error: str | None = None
        self._received = Counts()  # by this process (under shared.lock)
        self._packing = threading.Condition()  # guards the packs below
        self._packs: dict[tuple[str, bytes], deque[_Pack]] = {}  # not yet sent, by (dataset, schema key)
        self._dictionaries: dict[bytes, bool] = {}  # schema key -> has a dictionary (never packed)
        self._waiting = 0  # Arrow bytes of packed puts not yet acknowledged

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
        if len(payload) > self.max_bytes:
            raise QueueWriteError(
                f"a batch of {len(payload)} bytes as Arrow IPC is larger than the stream's max_bytes "
                f"({self.max_bytes}, queue.max_bytes when it was made): it can never fit"
            )
        headers = {"fw-dataset": dataset, "fw-at": repr(time.time())}
        if client_id is not None:
            headers["Nats-Msg-Id"], headers["fw-id"] = header_id(client_id), "1"
        else:
            with self._shared.lock:
                self._ids += 1
                headers["Nats-Msg-Id"] = f"{self._name}-{self._ids}"  # a retried publish is stored once
        ack = self._link.run(self._publish(payload, headers, timeout))
        with self._shared.lock:
            self._shared.last_seq = max(self._shared.last_seq, ack.seq)
            if not ack.duplicate:
                self._received.add(dataset, batch.num_rows, batch.get_total_buffer_size())
        return Accepted(ack.seq, bool(ack.duplicate))

    def claim(self, dataset: str, client_id: str, timeout: float) -> Accepted:
        """Store a *claim* of this batch id: a message with the id and no batch (header ``CLAIM``), which
        writers resolve as durable without a file (feed.py). A duplicate answer is the seq of what the stream
        took with this id within its ``duplicate_window``, a batch or an earlier claim (``NatsQueue.kind_of``
        tells which); otherwise the claim is stored, and from then the stream refuses the id as a duplicate
        for that window, however late a publish of it arrives. A full stream refuses it like a batch."""
        headers = {"fw-dataset": dataset, "fw-at": repr(time.time()), "Nats-Msg-Id": header_id(client_id), CLAIM: "1"}
        ack = self._link.run(self._publish(memoryview(b""), headers, timeout))
        with self._shared.lock:
            self._shared.last_seq = max(self._shared.last_seq, ack.seq)
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

    def put_packed(
        self,
        dataset: str,
        schema_key: bytes,
        batch: pa.RecordBatch,
        timeout: float,
        after: Future[Accepted] | None = None,
    ) -> Future[Accepted]:
        if self._role == "write":
            raise RuntimeError("a write process takes no batches (role = write)")
        # its IPC message's size (0.7 us, no copy): what it adds to a message, schema and compression aside
        size = pa.ipc.get_record_batch_size(batch)
        limit = min(PACK_BYTES, self.max_message_bytes, self.max_bytes // 2)
        if (dictionary := self._dictionaries.get(schema_key)) is None:
            if len(self._dictionaries) >= 4096:  # bounded, whatever schemas clients send
                self._dictionaries.clear()
            dictionary = self._dictionaries[schema_key] = has_dictionary(batch.schema)
        if size > limit or dictionary:
            # alone: too large to share a message, or dictionaries that one batch could not hold joined
            # (an int8-indexed column's dictionaries together may need more than 127 values)
            return put_alone(self, dataset, schema_key, batch, timeout)  # type: ignore[arg-type]
        deadline = time.monotonic() + timeout
        key = (dataset, schema_key)
        receipt: Future[Accepted] = Future()
        with self._packing:
            while self._waiting > PACKS_WAITING and not self._refusing:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise QueueFull(
                        f"queue full: {self._waiting} bytes of batches wait for NATS to take them; waited {timeout:g} s"
                    )
                self._packing.wait(left)
            if self._refusing:
                raise QueueClosed("queue is closed")
            if after is not None and after.done() and (failed := after.exception()) is not None:
                raise failed  # the stream's previous batch was not kept: none after it is (under the lock)
            packs = self._packs.get(key)
            start = packs is None  # no message of this dataset and schema in flight: send it now
            if packs is None:
                packs = self._packs[key] = deque()
            if not packs or packs[-1].nbytes + size > limit:
                packs.append(_Pack(dataset, timeout, deadline, time.time()))
            pack = packs[-1]
            pack.batches.append(batch)
            pack.receipts.append(receipt)
            pack.nbytes += size
            self._waiting += size
        if start:
            self._link.spawn(self._send_packs(key))
        return receipt

    async def _send_packs(self, key: tuple[str, bytes]) -> None:
        """On the loop: publish the packs of ``key`` one after the other until none is left. When one
        fails, so do the ones waiting behind it (under the lock that puts take: a stream whose batch failed
        puts no batch after it), so a stream's batches after a failed one are never kept unanswered."""
        while True:
            with self._packing:
                packs = self._packs[key]
                if not packs:
                    del self._packs[key]
                    return
                pack = packs.popleft()
            try:
                sent = await self._send(pack)
            except asyncio.CancelledError:  # the connection is closing: this pack and the ones after it fail
                with self._packing:
                    self._fail([pack, *self._packs.pop(key, ())], QueueClosed(NOT_KEPT))
                raise
            except Exception as exc:  # QueueFull, QueueClosed, QueueWriteError: said in the streams' replies
                with self._packing:
                    behind = list(self._packs[key])
                    self._packs[key].clear()
                    self._fail([pack, *behind], exc)
            else:
                with self._packing:
                    self._waiting -= pack.nbytes
                    self._packing.notify_all()
                for receipt, seq in zip(pack.receipts, sent, strict=True):
                    receipt.set_result(Accepted(seq, False))

    async def _send(self, pack: _Pack) -> list[int]:
        """Publish a pack as one message, or in halves when its IPC stream is over the message or stream
        limit; the seq of each batch."""
        payload = memoryview(encode_ipc_many(pack.batches, self._ipc))
        n = len(pack.batches)
        if n > 1 and len(payload) > min(self.max_message_bytes, self.max_bytes):
            first, second = (
                _Pack(pack.dataset, pack.timeout, pack.deadline, pack.received_at, part)
                for part in (pack.batches[: n // 2], pack.batches[n // 2 :])
            )
            return [*(await self._send(first)), *(await self._send(second))]
        if len(payload) > self.max_bytes:
            raise QueueWriteError(
                f"a batch of {len(payload)} bytes as Arrow IPC is larger than the stream's max_bytes "
                f"({self.max_bytes}, queue.max_bytes when it was made): it can never fit"
            )
        with self._shared.lock:
            self._ids += 1
            msg_id = f"{self._name}-{self._ids}"
        headers = {"fw-dataset": pack.dataset, "fw-at": repr(pack.received_at), "Nats-Msg-Id": msg_id}
        ack = await self._publish(payload, headers, pack.timeout, pack.deadline)
        with self._shared.lock:
            self._shared.last_seq = max(self._shared.last_seq, ack.seq)
            if not ack.duplicate:  # a duplicate: an earlier try of this very message was kept
                for batch in pack.batches:
                    self._received.add(pack.dataset, batch.num_rows, batch.get_total_buffer_size())
        return [ack.seq] * n

    def _fail(self, packs: list[_Pack], exc: Exception) -> None:
        """Under ``_packing``: these packs' receipts hold ``exc``; their bytes no longer wait."""
        for pack in packs:
            self._waiting -= pack.nbytes
            for receipt in pack.receipts:
                receipt.set_exception(exc)
        self._packing.notify_all()

    async def _publish(
        self, payload: memoryview, headers: dict[str, str], timeout: float, deadline: float | None = None
    ) -> api.PubAck:
        """Publish until JetStream acknowledges, retrying until ``deadline`` (``timeout`` s from now): the
        first attempt always, later ones only if they start before the deadline (each may end up to 0.5 s
        after it)."""
        deadline = time.monotonic() + timeout if deadline is None else deadline
        delay = 0.01
        while True:
            remaining = deadline - time.monotonic()
            try:
                return await self._link.js.publish(
                    self._link.data_subject,
                    payload,
                    timeout=max(0.5, min(5.0, remaining)),
                    stream=self._stream,
                    headers=headers,
                )
            except nats.errors.MaxPayloadError:
                raise QueueWriteError(
                    f"a batch of {len(payload)} bytes as Arrow IPC is over NATS's max_payload: send smaller batches "
                    "or raise max_payload on the NATS servers"
                ) from None
            except nats.js.errors.APIError as exc:
                if exc.err_code == IN_PROCESS:
                    reason = "NATS is still storing a batch with this id"
                elif exc.err_code in FULL:
                    reason = (
                        f"queue full: stream {self._stream} is at its max_bytes ({self.max_bytes}; "
                        "queue.max_bytes when the stream was made)"
                    )
                else:
                    raise QueueWriteError(f"NATS refused the batch: {exc.description or exc}") from None
            except (TimeoutError, nats.errors.Error) as exc:
                reason = f"NATS did not take the batch ({type(exc).__name__})"
                self._link.last_error = reason
            if self._refusing:
                raise QueueClosed("queue is closed")
            remaining = deadline - time.monotonic()
            if remaining < min(delay, 0.05):  # no attempt starts after the deadline (sharded.py relies on it)
                raise QueueFull(f"{reason}; waited {timeout:g} s")
            await asyncio.sleep(min(delay, remaining - 0.005))
            delay = min(delay * 2, 0.5)

    @property
    def max_message_bytes(self) -> int:
        """Three quarters of the server's ``max_payload``: room for the IPC schema and headers."""
        return int(self._link.nc.max_payload * 0.75)

    def flush(self, dataset: str | None, timeout: float | None) -> bool:
        position = self._records.position
        deadline = None if timeout is None else time.monotonic() + timeout

        def within(limit: float) -> float:  # a NATS request's time, never past the deadline (NATS may be away)
            return limit if deadline is None else max(0.05, min(limit, deadline - time.monotonic()))

        # what other processes put just before is counted
        through = self._last_seq(self.stream_state(fresh=True, timeout=within(10)))
        asked = False
        while True:
            if position.durable_through >= through and asked:
                return True
            if position.closed:
                return False
            asked = True  # asked once even when all is durable: stored files may wait for a table commit
            try:
                # empty: every writer writes out every buffer (a dataset's seqs are not known across processes)
                self._link.run(self._link.nc.publish(self._link.flush_subject, b""), timeout=within(10))
            except Exception as exc:  # NATS away: keep waiting, ask again
                self._link.last_error = f"NATS: flush request not sent ({type(exc).__name__})"
            remaining = None if deadline is None else deadline - time.monotonic()
            if position.wait_through(through, 1.0 if remaining is None else min(1.0, max(0.0, remaining))):
                return True
            if position.closed or (remaining is not None and remaining <= 1.0):
                return False

    def refuse_puts(self) -> None:
        self._refusing = True
        with self._packing:
            self._packing.notify_all()

    def fail_packs(self) -> None:
        """The connection is closed: packs never sent fail (their streams say so; the batches were not kept)."""
        with self._packing:
            packs = [p for waiting in self._packs.values() for p in waiting]
            self._packs.clear()
            self._fail(packs, QueueClosed(NOT_KEPT))

    @property
    def last_seq(self) -> int:
        return self._last_seq(self.stream_state())

    def _last_seq(self, state: api.StreamState) -> int:
        with self._shared.lock:
            self._shared.last_seq = max(self._shared.last_seq, state.last_seq)
            return self._shared.last_seq

    def room(self) -> int:
        return self.max_bytes - self.stream_state().bytes

    def forget_state(self) -> None:
        """The stream changed (messages acknowledged, so deleted): ask it again at the next question."""
        self._state = (0.0, self._state[1])

    def stream_state(self, fresh: bool = False, timeout: float = 10) -> api.StreamState:
        """The data stream's state, at most ``STATE_TTL`` s old unless ``fresh`` (the last one known while
        NATS does not answer within ``timeout`` s)."""
        at, state = self._state
        if fresh or time.monotonic() - at > STATE_TTL:
            try:
                info = self._link.run(self._link.js.stream_info(self._stream), timeout=timeout)
            except Exception as exc:
                self._link.last_error = f"NATS: stream info unavailable ({type(exc).__name__})"
            else:
                state = info.state
                self._state = (time.monotonic(), state)  # kept for STATE_TTL (lost in 9599da9: every call asked)
                declared, stride = self._link.declared_stride(info), self._link.settings.seq_stride
                if declared not in (None, stride) and self.stride_error is None:  # another process took it over
                    self.stride_error = (
                        f"NATS stream {self._stream} now says seq stride {declared}, this process has {stride}: "
                        "every process must have the same queue.streams / stream_slots"
                    )
                    logger.error(self.stride_error)
                # acknowledged means stored: below the first message everything is resolved, records or not
                self._records.advance_to(state.first_seq - 1 if state.messages else state.last_seq)
        return state

    def stats(self) -> dict[str, Any]:
        state = self.stream_state(fresh=True)
        age = self._age_of(state.first_seq) if state.messages else None  # outside the lock: the loop takes it
        with self._shared.lock:
            stats: dict[str, Any] = {
                "pending_batches": state.messages,  # in the stream: not yet stored, by any process
                "pending_bytes": state.bytes,
                "queued_batches": None,
                "received_batches": self._received.total[0],  # by this process
                "received_rows": self._received.total[1],
                "received_bytes": self._received.total[2],
                "oldest_pending_age_s": age,
                "nats_stream": self._stream,
                "nats_streams": 1,  # a sharded queue (queue.streams, stream_slots) says its own
                "nats_stream_slots": 1,
                "nats_connected": self._link.nc.is_connected,
                "role": self._role,
            }
        if self._link.last_error and not self._link.nc.is_connected:
            stats["queue_error"] = self._link.last_error
        elif self.stride_error is not None:
            stats["queue_error"] = self.stride_error
        return stats

    def _age_of(self, seq: int) -> float | None:
        """Seconds since the oldest batch from ``seq`` on that is not durable was received: claims (durable,
        kept in the stream for their window) and batches stored but not yet acknowledged are passed, from
        the durability position on (a read of the stream each, at most 16)."""
        link, position = self._link, self._records.position
        seq = max(seq, position.durable_through + 1)
        for _ in range(16):
            try:
                raw = link.run(link.js.get_msg(self._stream, seq, subject=link.data_subject, next=True), timeout=10)
            except Exception:  # none left, or NATS away: no age to tell
                return None
            headers = raw.headers or {}
            if CLAIM not in headers and not position.is_resolved(raw.seq):
                return round(max(0.0, time.time() - float(headers.get("fw-at", time.time()))), 3)
            seq = raw.seq + 1
        return None

    def received_by_dataset(self) -> dict[str, tuple[int, int, int]]:
        with self._shared.lock:
            return self._received.by_dataset()
