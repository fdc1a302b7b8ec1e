"""Several JetStream streams as one queue (``queue.streams = N``, N > 1): the data path sharded.

One stream is one ordered log on one NATS server (its leader): a ceiling for publishes and deliveries
whatever the number of processes. With N streams each shard is a whole queue of its own (queue.py: its
batches, its durability records, its flush subject, its durable consumer), and this class makes them one:

- Streams: shard 0 is ``queue.stream`` itself (so 1 -> N keeps the data already queued there), shard k is
  ``<stream>-<k>``; each holds ``queue.max_bytes / N``.
- A dataset's batches go to shard ``crc32(dataset) mod N``: one stream keeps a dataset's order, and a file
  (one dataset) only ever holds one shard's batches (the writer also keeps shards apart by their entries'
  schema keys), so every plan, redo and confirmation stays inside one shard's protocol.
- Seqs: shard k's sequence s is seq ``s * N + k``, unique across shards; ``ack`` finds the shard from the
  seq. ``durable_through`` (and ``committed_through``) is the largest seq such that every seq *issued so far*
  up to it is durable: computed from each shard's position and last sequence. A batch put later into a shard
  that was behind may get a smaller seq than it, so with N > 1 it can go down; ``ack`` of one's own seqs and
  ``flush`` (which waits for everything put before it, in every shard) are exact.
- Write processes take from every shard, in turn; each shard's consumer spreads its messages over them.

Change N only with the queue drained (flush, stop every process, set it everywhere, start): a seq names
another batch under another N, and the queue's identity (in files and table commits) changes with it.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import zlib
from collections.abc import Iterable
from concurrent.futures import Future
from typing import Any

import pyarrow as pa

from flight_writer.config.settings import QueueSettings
from flight_writer.queue.base import Accepted, Entry, Plan, Queue, SharedFeed
from flight_writer.queue.nats.queue import NatsQueue


def shard_stream(stream: str, k: int) -> str:
    return stream if k == 0 else f"{stream}-{k}"


class ShardedPosition:
    """The durability position of N shards, in global seqs (see the module docstring)."""

    def __init__(self, queues: list[NatsQueue]) -> None:
        self._queues = queues
        self._n = len(queues)

    def _split(self, seqs: Iterable[int]) -> dict[int, list[int]]:
        by: dict[int, list[int]] = {}
        for s in seqs:
            if s >= self._n:
                by.setdefault(s % self._n, []).append(s // self._n)
        return by

    def _through(self, local: list[int]) -> int:
        """Every issued seq up to the result is at ``local[k]`` or below in its shard (durable, committed)."""
        n, bound, issued = self._n, None, 0
        for k, q in enumerate(self._queues):
            last = q.last_seq
            issued = max(issued, last * n + k)
            if local[k] < last:  # a pending one: seqs of this shard from (local + 1) * n + k on are not
                first_open = (local[k] + 1) * n + k
                bound = first_open - 1 if bound is None else min(bound, first_open - 1)
        return issued if bound is None else min(bound, issued)

    @property
    def durable_through(self) -> int:
        return self._through([q.position.durable_through for q in self._queues])

    @property
    def committed_through(self) -> int:
        return self._through([q.position.committed_through for q in self._queues])

    @property
    def closed(self) -> bool:
        return any(q.position.closed for q in self._queues)

    def describe(self, seq: int, last_seq: int | None = None) -> dict[str, Any]:
        if seq < self._n:
            return {"seq": seq, "state": "unknown"}
        k, local = seq % self._n, seq // self._n
        answer = dict(self._queues[k].position.describe(local, None if last_seq is None else self._queues[k].last_seq))
        answer["seq"] = seq
        return answer

    def wait(self, seqs: Iterable[int], timeout: float | None) -> bool:
        return self._wait_each(seqs, timeout, lambda p, local, t: p.wait(local, t))

    def wait_committed(self, seqs: Iterable[int], timeout: float | None) -> bool:
        return self._wait_each(seqs, timeout, lambda p, local, t: p.wait_committed(local, t))

    def _wait_each(self, seqs: Iterable[int], timeout: float | None, wait: Any) -> bool:
        """Each shard's seqs on its own position; a seq its shard has not issued is not waited for (the
        caller's check against the global last seq cannot tell)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        done = True
        for k, local in self._split(seqs).items():
            last = self._queues[k].last_seq
            issued = [s for s in local if s <= last]
            done &= len(issued) == len(local)
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if issued and not wait(self._queues[k].position, issued, left):
                return False
        return done

    def wait_committed_through(self, seq: int, timeout: float | None) -> bool:
        """Every seq up to ``seq`` issued by now is committed: each shard up to its part of it."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for k, q in enumerate(self._queues):
            through = min(q.last_seq, (seq - k) // self._n)
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if through > 0 and not q.position.wait_committed_through(through, left):
                return False
        return True

    def files_of(self, seqs: Iterable[int]) -> list[str]:
        files: list[str] = []
        for k, local in self._split(seqs).items():
            files += self._queues[k].position.files_of(local)
        return list(dict.fromkeys(files))

    def hold_committed(self) -> None:
        for q in self._queues:
            q.position.hold_committed()

    def release_committed(self) -> None:
        for q in self._queues:
            q.position.release_committed()

    def close(self) -> None:
        for q in self._queues:
            q.position.close()


class ShardedNatsQueue(Queue, SharedFeed):
    """N NatsQueues (one per stream) as one queue: see the module docstring."""

    type = "nats"
    packs = True
    ack_state = "logged"
    shared = True

    def __init__(self, settings: QueueSettings, role: str = "all", history: int = 100_000) -> None:
        n = settings.streams
        if n < 2:
            raise ValueError("a sharded queue needs queue.streams >= 2")
        self._n = n
        per = max(1, settings.max_bytes // n)
        self._queues: list[NatsQueue] = []
        try:
            for k in range(n):
                shard = dataclasses.replace(settings, stream=shard_stream(settings.stream, k), max_bytes=per, streams=1)
                self._queues.append(NatsQueue(shard, role, history))
        except BaseException:
            for q in self._queues:
                q.close()
            raise
        self.position = ShardedPosition(self._queues)  # type: ignore[assignment]
        self.identity = f"nats-sharded:{n}:" + ",".join(q.identity for q in self._queues)
        self._next = 0  # the shard a take starts from (in turn)
        self._lock = threading.Lock()

    # -- routing -------------------------------------------------------------------------------------
    def _shard_of(self, dataset: str) -> int:
        return zlib.crc32(dataset.encode()) % self._n

    def _global(self, k: int, local: int) -> int:
        return local * self._n + k

    def _by_shard(self, seqs: Iterable[int]) -> dict[int, list[int]]:
        by: dict[int, list[int]] = {}
        for s in seqs:
            by.setdefault(s % self._n, []).append(s // self._n)
        return by

    def _to_global(self, k: int, e: Entry) -> Entry:
        planned = e.planned
        if planned is not None:
            planned = Plan(planned.path, planned.kind, tuple(self._global(k, s) for s in planned.seqs), planned.error)
        # the shard in the schema key: batches of two shards never share a file (nor a plan)
        key = e.schema_key + b"\x00shard" + str(k).encode()
        return Entry(
            self._global(k, e.seq), e.dataset, key, e.batch, e.received_at, e.nbytes, e.client_id, e.handle, planned
        )

    def _to_local(self, entries: list[Entry]) -> dict[int, list[Entry]]:
        by: dict[int, list[Entry]] = {}
        for e in entries:
            k = e.seq % self._n
            local = dataclasses.replace(e, seq=e.seq // self._n)
            by.setdefault(k, []).append(local)
        return by

    # -- Ingest --------------------------------------------------------------------------------------
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
        k = self._shard_of(dataset)
        seq, duplicate = self._queues[k].put(dataset, schema_key, batch, timeout, client_id, wait=wait)
        return Accepted(self._global(k, seq), duplicate)

    def put_packed(
        self,
        dataset: str,
        schema_key: bytes,
        batch: pa.RecordBatch,
        timeout: float,
        after: Future[Accepted] | None = None,
    ) -> Future[Accepted]:
        k = self._shard_of(dataset)
        local = self._queues[k].put_packed(dataset, schema_key, batch, timeout, after)
        receipt: Future[Accepted] = Future()

        def done(f: Future[Accepted]) -> None:
            if (exc := f.exception()) is not None:
                receipt.set_exception(exc)
            else:
                seq, duplicate = f.result()
                receipt.set_result(Accepted(self._global(k, seq), duplicate))

        local.add_done_callback(done)
        return receipt

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
        k = self._shard_of(dataset)
        done = self._queues[k].put_many(dataset, schema_key, batches, timeout, client_ids, wait=wait)
        return [Accepted(self._global(k, a.seq), a.duplicate) for a in done]

    @property
    def max_message_bytes(self) -> int | None:  # type: ignore[override]
        return min(q.max_message_bytes for q in self._queues)

    def settle(self, seq: int, wait: bool) -> bool:
        return self._queues[seq % self._n].settle(seq // self._n, wait)

    def flush(self, dataset: str | None, timeout: float | None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        shards = [self._shard_of(dataset)] if dataset is not None else range(self._n)
        for k in shards:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not self._queues[k].flush(dataset, left):
                return False
        return True

    def refuse_puts(self) -> None:
        for q in self._queues:
            q.refuse_puts()

    @property
    def last_seq(self) -> int:
        return max(self._global(k, q.last_seq) for k, q in enumerate(self._queues))

    def stats(self) -> dict[str, Any]:
        each = [q.stats() for q in self._queues]
        stats = dict(each[0])
        for key in ("pending_batches", "pending_bytes", "received_batches", "received_rows", "received_bytes"):
            stats[key] = sum(s.get(key) or 0 for s in each)
        ages = [s["oldest_pending_age_s"] for s in each if s.get("oldest_pending_age_s") is not None]
        stats["oldest_pending_age_s"] = max(ages) if ages else None
        stats["nats_stream"] = [s["nats_stream"] for s in each]
        stats["nats_streams"] = self._n
        stats["nats_connected"] = all(s["nats_connected"] for s in each)
        errors = [s["queue_error"] for s in each if s.get("queue_error")]
        if errors:
            stats["queue_error"] = errors[0]
        return stats

    def received_by_dataset(self) -> dict[str, tuple[int, int, int]]:
        total: dict[str, tuple[int, int, int]] = {}
        for q in self._queues:
            for name, (b, r, n) in q.received_by_dataset().items():
                ob, orr, on = total.get(name, (0, 0, 0))
                total[name] = (ob + b, orr + r, on + n)
        return total

    # -- Feed ----------------------------------------------------------------------------------------
    def take(self, max_items: int, timeout: float) -> list[Entry]:
        """From the shards in turn: the first that has entries; each is asked without waiting until all
        were, then the next asked waits (so an idle queue costs one short fetch per shard per wait)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            start = self._next
            self._next = (self._next + 1) % self._n
        tried = 0
        while True:
            k = (start + tried) % self._n
            wait = 0.0 if tried < self._n else max(0.0, min(0.1, deadline - time.monotonic()))
            got = self._queues[k].take(max_items, wait)
            if got:
                return [self._to_global(k, e) for e in got]
            tried += 1
            if tried >= self._n and time.monotonic() >= deadline:
                return []

    def flush_requests(self) -> list[str | None]:
        return [r for q in self._queues for r in q.flush_requests()]

    def plan(self, plan: Plan, entries: list[Entry] | None = None) -> None:
        by = self._by_shard(plan.seqs)
        if len(by) != 1:
            raise ValueError(f"{plan.path}: a plan holds the seqs of one stream only, not {sorted(by)}")
        [(k, local)] = by.items()
        shard_entries = self._to_local(entries or []).get(k, [])
        self._queues[k].plan(Plan(plan.path, plan.kind, tuple(local), plan.error), shard_entries)

    def confirm(self, entries: list[Entry], path: str | None, table: bool = False) -> None:
        for k, local in self._to_local(entries).items():
            self._queues[k].confirm(local, path, table)

    def committed(self, seqs: tuple[int, ...]) -> None:
        for k, local in self._by_shard(seqs).items():
            self._queues[k].committed(tuple(local))

    def reject(self, entries: list[Entry], error: str) -> None:
        for k, local in self._to_local(entries).items():
            self._queues[k].reject(local, error)

    def room(self) -> int:
        return min(q.room() for q in self._queues)

    def wake(self) -> None:
        for q in self._queues:
            q.wake()

    def stop_taking(self) -> None:
        for q in self._queues:
            q.stop_taking()

    def dropped(self) -> bool:
        """True if any stream took back what it had handed out (its connection was away): the writer then
        drops every buffer, so the other streams give back what they hold too, or it would stay held here
        (kept alive, never redelivered) for good."""
        lost = [q.dropped() for q in self._queues]  # every one asked: each says it once
        if not any(lost):
            return False
        for q, was in zip(self._queues, lost, strict=True):
            if not was:
                q.give_back()
        return True

    def close(self) -> None:
        for q in self._queues:
            q.close()
