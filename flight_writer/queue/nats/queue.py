"""NATS JetStream queue: any number of ingest and write processes, on any machines, sharing one stream.

A batch is one message on ``<stream>.data`` (Arrow IPC, lz4 by ``queue.compression``; headers: dataset,
time received); its ``seq`` is the stream sequence, global across processes, and its reply says
``logged`` once JetStream acknowledged the publish (stored, replicated when ``replicas`` > 1). Every publish
carries a ``Nats-Msg-Id``: the producer's batch id, or one the process makes, so a publish retried after an
ambiguous timeout is stored once; JetStream remembers ids for ``duplicate_window`` seconds (a duration, not
the memory and WAL queues' count of ids). A full stream (``max_bytes``) refuses publishes: ``put`` retries
until ``put_timeout``, then QueueFull. Batches over NATS's ``max_payload`` are refused with a message saying
so (the NATS server's max_payload: docs/operations/scaling.md).

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

import uuid
from concurrent.futures import Future
from typing import Any

import nats.js.errors
import pyarrow as pa
from nats.js import api

from flight_writer.config.settings import QueueSettings
from flight_writer.queue.base import Accepted, Entry, Plan, Queue, QueueFull, SharedFeed
from flight_writer.queue.nats.feed import WriteFeed
from flight_writer.queue.nats.ingest import Publisher
from flight_writer.queue.nats.link import CLAIM, CLOCKS, SWITCH_KEY, Link
from flight_writer.queue.nats.records import Records, Shared
from flight_writer.queue.tracker import DurabilityTracker

ROLES = ("all", "ingest", "write")


class NatsQueue(Queue, SharedFeed):
    """Implements :class:`Queue` on NATS JetStream (see the module docstring) by handing each call to one of
    its parts: the connection (``Link``, link.py), the durability records (``Records``, records.py: the
    plans and the position's updates), the publisher (``Publisher``, ingest.py: puts, flush requests, the
    stream's state) and the write side (``WriteFeed``, feed.py). What the parts share (one lock, last_seq,
    the late messages, the plans being redone) is one ``Shared`` each receives. ``role`` says which side
    this process uses: ``ingest`` has no feed (cannot ``take``), ``write`` cannot ``put``."""

    type = "nats"
    ack_state = "logged"
    shared = True
    packs = True

    def __init__(
        self,
        settings: QueueSettings,
        role: str = "all",
        history: int = 100_000,
        check: bool = True,
        taken_on: bool = False,
        metadata: dict[str, str] | None = None,
    ) -> None:
        """``check``: refuse a stream of another seq stride, and say ours in its description (link.py);
        the sharded queue does it itself over all its streams. ``taken_on``: a stream made after this process
        started (sharded.py): its records, all of them kept, say what is committed, so nothing counts as
        committed before they do (at a start, what was durable before counts as committed). ``metadata``: the
        data stream's, if this process makes it."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {role!r}")
        self._role = role
        name = f"flight-writer-{role}-{uuid.uuid4().hex[:8]}"
        self._link = link = Link(settings, name, metadata)
        #: this process made the data stream (it did not exist)
        self.made = link.made_data_stream
        try:
            info = link.run(link.js.stream_info(settings.stream), timeout=30)
            if check and link.check_stride(info, lambda: link.run(link.count_streams(settings.stream), 30)):
                link.stamp(info)
            # records of an earlier stream of the same name (deleted, made again) must not resolve this one's seqs
            incarnation = info.created.isoformat() if info.created else ""
            #: when batches with an id start going to this stream, if it was added to a running deployment
            #: (sharded.py); seconds JetStream remembers a batch id here
            self.switch_at = _switch_at(info)
            self.metadata_kept = bool(info.config.metadata and SWITCH_KEY in info.config.metadata)
            self.duplicate_window = info.config.duplicate_window or settings.duplicate_window
            state = info.state
            # work-queue retention deletes a message once acknowledged, i.e. stored: below the first one, all is
            through = state.first_seq - 1 if state.messages else state.last_seq
            self.position = DurabilityTracker(
                history, through, pending_state=self.ack_state, committed_through=0 if taken_on else None
            )
            self._shared = Shared(last_seq=state.last_seq)
            self._records = Records(link, self._shared, self.position, incarnation, self.duplicate_window)
            self.identity = f"nats:{settings.stream}:{incarnation}"
            max_bytes = info.config.max_bytes or settings.max_bytes  # the stream's, if made with another
            self._publisher = Publisher(settings, link, self._shared, self._records, name, role, max_bytes, state)
            self._feed: WriteFeed | None = link.run(self._subscribe(settings), timeout=60)
            if not self._records.catch_up(60.0):
                raise ConnectionError(f"NATS: the records of {settings.stream} were not read within 60 s")
        except BaseException:
            link.close()
            raise

    async def _subscribe(self, settings: QueueSettings) -> WriteFeed | None:
        """The records first (every role reads them), then the write side's consumer."""
        await self._records.subscribe()
        if self._role == "ingest":
            return None
        feed = await WriteFeed.open(settings, self._link, self._shared, self._records)
        feed.claim_hold = self.duplicate_window + CLOCKS
        return feed

    def _write_side(self) -> WriteFeed:
        if self._feed is None:
            raise RuntimeError("an ingest process has no feed (role = ingest)")
        return self._feed

    # -- Ingest ----------------------------------------------------------------------------------------
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
        return self._publisher.put(dataset, schema_key, batch, timeout, client_id, wait=wait)

    def put_packed(
        self,
        dataset: str,
        schema_key: bytes,
        batch: pa.RecordBatch,
        timeout: float,
        after: Future[Accepted] | None = None,
    ) -> Future[Accepted]:
        """Batches put while a message of their dataset and schema is in flight share the next one (and its
        seq): see ingest.py."""
        return self._publisher.put_packed(dataset, schema_key, batch, timeout, after)

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
        """Not all or none on NATS: see ``Publisher.put_many``."""
        return self._publisher.put_many(dataset, schema_key, batches, timeout, client_ids, wait=wait)

    def claim(self, dataset: str, client_id: str, timeout: float) -> Accepted:
        """Claim a batch id in this stream (``Publisher.claim``): stored, or the seq that holds it already."""
        return self._publisher.claim(dataset, client_id, timeout)

    def kind_of(self, seq: int, timeout: float) -> str:
        """What this stream took at ``seq`` (a duplicate answer's): ``"claim"`` or ``"batch"``. Read from the
        stream while it holds the message; once a writer took it, from the records (the record of a claim or a
        batch is published before its message is acknowledged, so deleted). QueueFull if neither tells
        within ``timeout`` s (NATS away)."""
        if self._records.is_claim(seq):
            return "claim"
        link = self._link
        try:
            try:
                raw = link.run(link.js.get_msg(link.settings.stream, seq), timeout=max(0.1, timeout))
            except nats.js.errors.NotFoundError:  # taken by a writer: resolved, and recorded before that
                if self._records.catch_up(max(0.1, timeout)):
                    if self._records.is_claim(seq):
                        return "claim"
                    if self.position.is_resolved(seq):
                        return "batch"
                why = "its record was not read in time"
            else:
                return "claim" if CLAIM in (raw.headers or {}) else "batch"
        except Exception as exc:  # NATS away
            why = f"{type(exc).__name__}"
        raise QueueFull(f"NATS did not take the batch: cannot tell what holds its id in {link.settings.stream} ({why})")

    @property
    def max_message_bytes(self) -> int:
        """Three quarters of the server's ``max_payload``: room for the IPC schema and headers."""
        return self._publisher.max_message_bytes

    def flush(self, dataset: str | None, timeout: float | None) -> bool:
        return self._publisher.flush(dataset, timeout)

    def refuse_puts(self) -> None:
        self._publisher.refuse_puts()

    @property
    def last_seq(self) -> int:
        return self._publisher.last_seq

    def stats(self) -> dict[str, Any]:
        return self._publisher.stats()

    def received_by_dataset(self) -> dict[str, tuple[int, int, int]]:
        return self._publisher.received_by_dataset()

    # -- Feed ------------------------------------------------------------------------------------------
    def take(self, max_items: int, timeout: float) -> list[Entry]:
        return self._write_side().take(max_items, timeout)

    def flush_requests(self) -> list[str | None]:
        return [] if self._feed is None else self._feed.flush_requests()

    def flush_asked(self) -> bool:
        """Whether a flush request waits for ``flush_requests`` (without taking it)."""
        return self._feed is not None and bool(self._feed.flushes)

    def plan(self, plan: Plan, entries: list[Entry] | None = None) -> None:
        self._write_side().plan(plan, entries)

    def confirm(self, entries: list[Entry], path: str | None, table: bool = False) -> None:
        if self._write_side().confirm(entries, path, table):
            self._forget()  # room changed: ask the stream again

    def committed(self, seqs: tuple[int, ...]) -> None:
        self._write_side().committed(seqs)

    def reject(self, entries: list[Entry], error: str) -> None:
        if self._write_side().reject(entries, error):
            self._forget()

    def _forget(self) -> None:
        self._publisher.forget_state()
        self._write_side().forget_held()

    def refresh(self) -> None:
        self._publisher.forget_state()

    def room(self) -> int:
        """What the writers' buffers may hold (the writer seals its largest buffer beyond it): the stream's
        max_bytes less what writers hold, delivered and not yet acknowledged. Not less the messages no
        writer has taken yet: a stream full of those means the writers are behind, and sealing early would
        not make room, only smaller files. (It did: with the stream full, 2 producers on 2 vCPUs, the writer
        sealed 170 files of 1-15 8,192-row batches where 10 of ~25 MB hold the same 1 GB.)"""
        if self._feed is None:
            return self._publisher.room()
        return self._publisher.max_bytes - self._feed.held_bytes(self._publisher.stream_state())

    def wake(self) -> None:
        if self._feed is not None:
            self._feed.wake()

    def stop_taking(self) -> None:
        if self._feed is not None:
            self._feed.stop_taking()

    def dropped(self) -> bool:
        return self._feed is not None and self._feed.dropped()

    def give_back(self) -> None:
        """Everything this process holds goes back to the stream (see ``WriteFeed.give_back``)."""
        if self._feed is not None:
            self._feed.give_back()

    # -- both ------------------------------------------------------------------------------------------
    def close(self) -> None:
        self._publisher.refuse_puts()
        self.wake()
        self.position.close()
        self._link.close()
        self._publisher.fail_packs()


def _switch_at(info: api.StreamInfo) -> float | None:
    """When batches with an id start going to this stream (its creation plus the seconds its metadata
    says), if it was added to a running deployment."""
    try:
        after = float((info.config.metadata or {})[SWITCH_KEY])
    except (KeyError, ValueError):
        return None
    return None if info.created is None else info.created.timestamp() + after
