"""Several JetStream streams as one queue (``queue.streams = N``, N > 1, or ``queue.stream_slots``): the
data path sharded.

One stream is one ordered log on one NATS server (its leader): a ceiling for publishes and deliveries
whatever the number of processes. With N streams each shard is a whole queue of its own (queue.py: its
batches, its durability records, its flush subject, its durable consumer), and this class makes them one:

- Streams: shard 0 is ``queue.stream`` itself (so 1 -> N keeps the data already queued there), shard k is
  ``<stream>-<k>``; the ones a process makes hold ``queue.max_bytes / N`` each.
- Seqs: shard k's sequence s is seq ``s * S + k``, S the stride: ``queue.stream_slots``, or N where it is 0.
  Seqs are unique across shards; ``ack`` finds the shard from the seq. Every stream's description says the
  stride it was made for, and a process with another refuses to start on a stream holding batches
  (link.py). ``durable_through`` (and ``committed_through``) is the largest seq such that every seq *issued
  so far* up to it is durable: computed from each shard's position and last sequence. A batch put later
  into a shard that was behind may get a smaller seq than it, so with N > 1 it can go down; ``ack`` of
  one's own seqs and ``flush`` (which waits for everything put before it, in every shard) are exact.
- A dataset's batches go to shard ``crc32(dataset) mod N``: one stream keeps a dataset's order, and a file
  (one dataset) only ever holds one shard's batches (the writer also keeps shards apart by their entries'
  schema keys), so every plan, redo and confirmation stays inside one shard's protocol.
- Write processes take from every shard, in turn; each shard's consumer spreads its messages over them.
- Streams added live (S > N): a process started with a larger ``queue.streams`` (at most S) makes the new
  streams; every process looks for the next stream ``<stream>-<N>`` every ``LOOK_EVERY`` seconds (and before
  a flush, and for a seq of a shard it does not have yet) and takes it on: its write processes consume it,
  its ingest processes route to it. Seqs keep their meaning (the stride is fixed); what moves is a dataset's
  shard (``crc32 mod N``): while processes disagree on N, or batches queued under the old N are still
  waiting, a dataset's batches are in two streams, stored in different files, each file in order; a flush
  of a dataset waits in every shard it can have used (``crc32 mod n`` for n up to N); a packed put whose
  previous one went to another shard waits for it (the no-batch-after-a-failed-one chain is per stream);
  a shard taken on while running counts as committed only what its records say (``taken_on``). Never
  removed live.
- Batch ids across a move: JetStream remembers a batch id (``Nats-Msg-Id``) per stream, so a batch taken
  by the old stream and sent again after its dataset moved must not simply go to the new one. A stream
  added to a running deployment (stream 0 existed, or held batches, when the process that makes it started)
  says in its metadata (``SWITCH_KEY``) how long after its creation batches *with an id* start going to it
  (``SWITCH_AFTER``): a moment of the NATS server's clock, the same in every process (their clocks agree
  with it: NTP), and every process knows the stream by then (it looks every ``LOOK_EVERY`` s, and a put with
  an id waits, then is refused, while its last successful look is older than ``SWITCH_AFTER / 2``). A put
  with an id still trying (a full stream, NATS slow) on the stream its dataset leaves stops there at that
  moment, or at the earliest moment a stream its last look did not see can have (that look's start plus
  ``SWITCH_AFTER``), and is routed again: no publish there starts after the moment. For ``QUIET`` s after
  it such puts wait (publishes to the old stream end); then, for the old stream's ``duplicate_window``
  plus ``SWITCH_AFTER`` plus ``CLOCKS``, a batch with an id of a dataset that moved is first *claimed*
  in the streams it moved from (``NatsQueue.claim``: a message with the id and no batch): a stream that
  holds the batch answers with its seq, which is the answer; otherwise the claim is stored (or another's is
  there), and the batch goes to the new stream (the route decided again after the claims, which take time,
  and claimed again if a moment passed meanwhile). A stored claim makes the old stream refuse the id as a
  duplicate for its window, so a publish of it that arrives there late (a stalled process, a network path
  holding its bytes, a reconnect buffer) is not stored. The moments, caps and quiet time above only make
  it rare that a claim meets a publish still on its way; they no longer decide whether a batch is stored
  twice. Writers take a claim as durable with no file and leave it in the stream for its window (feed.py: a
  restarted NATS server rebuilds the ids it refuses from the messages it holds). Every process must run a
  version with claims before a stream is added (an earlier one cannot tell a claim from a batch). A put
  answered with a duplicate that is a claim (``NatsQueue.kind_of``) is refused: a process still sending to the
  old stream after another claimed the id there, or a route that came back to a stream the dataset left in the
  same window (its claims block the id there until the window ends; passing them would let two puts with
  different routes each store the batch). Batches without an id move as soon as the process knows the stream
  (no dedupe to keep). Streams made with the deployment (by the process that made an empty stream 0) have no
  such moment: nothing was sent before them.

Change S (or N without slots) only with the queue drained (flush, stop every process, set it everywhere,
start): a seq names another batch under another stride, and the queue's identity (in files and table
commits) changes with it.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import zlib
from collections.abc import Iterable
from concurrent.futures import Future
from typing import Any

import nats.js.errors
import pyarrow as pa
from loguru import logger

from flight_writer.config.settings import QueueSettings
from flight_writer.queue.base import Accepted, Entry, Plan, Queue, QueueClosed, QueueFull, SharedFeed
from flight_writer.queue.nats.link import CLOCKS, SWITCH_KEY
from flight_writer.queue.nats.queue import NatsQueue

LOOK_EVERY = 1.0  # seconds between looks for a stream added by another process (stream_slots > streams)
LOOK_AGAIN = 0.1  # ... and at least between looks for a seq of a stream this process does not have
LOOK_WAIT = 5.0  # how long such a look waits for one under way (whose result it then takes)
SWITCH_AFTER = 10.0  # seconds after a stream added live is made before batches with an id go to it
QUIET = 5.0  # ... and after that moment before a moved dataset's are claimed (publishes to the old stream end)


def shard_stream(stream: str, k: int) -> str:
    return stream if k == 0 else f"{stream}-{k}"


class ShardedPosition:
    """The durability position of the shards, in global seqs (see the module docstring)."""

    def __init__(self, owner: ShardedNatsQueue) -> None:
        self._owner = owner

    def _split(self, seqs: Iterable[int]) -> dict[int, list[int]]:
        stride = self._owner.stride
        by: dict[int, list[int]] = {}
        for s in seqs:
            if s >= stride:
                by.setdefault(s % stride, []).append(s // stride)
        return by

    def _through(self, local: list[int]) -> int:
        """Every issued seq up to the result is at ``local[k]`` or below in its shard (durable, committed)."""
        stride, bound, issued = self._owner.stride, None, 0
        for k, q in enumerate(self._owner.shards[: len(local)]):
            last = q.last_seq
            issued = max(issued, last * stride + k)
            if local[k] < last:  # a pending one: seqs of this shard from (local + 1) * stride + k on are not
                first_open = (local[k] + 1) * stride + k
                bound = first_open - 1 if bound is None else min(bound, first_open - 1)
        return issued if bound is None else min(bound, issued)

    @property
    def durable_through(self) -> int:
        return self._through([q.position.durable_through for q in self._owner.shards])

    @property
    def committed_through(self) -> int:
        return self._through([q.position.committed_through for q in self._owner.shards])

    @property
    def closed(self) -> bool:
        return any(q.position.closed for q in self._owner.shards)

    def describe(self, seq: int, last_seq: int | None = None) -> dict[str, Any]:
        stride = self._owner.stride
        q = self._owner.shard(seq % stride) if seq >= stride else None
        if q is None:
            return {"seq": seq, "state": "unknown"}
        answer = dict(q.position.describe(seq // stride, None if last_seq is None else q.last_seq))
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
            q = self._owner.shard(k)
            if q is None:
                done = False
                continue
            last = q.last_seq
            issued = [s for s in local if s <= last]
            done &= len(issued) == len(local)
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if issued and not wait(q.position, issued, left):
                return False
        return done

    def wait_committed_through(self, seq: int, timeout: float | None) -> bool:
        """Every seq up to ``seq`` issued by now is committed: each shard up to its part of it."""
        deadline = None if timeout is None else time.monotonic() + timeout
        stride = self._owner.stride
        for k, q in enumerate(self._owner.shards):
            through = min(q.last_seq, (seq - k) // stride)
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if through > 0 and not q.position.wait_committed_through(through, left):
                return False
        return True

    def files_of(self, seqs: Iterable[int]) -> list[str]:
        files: list[str] = []
        for k, local in self._split(seqs).items():
            if (q := self._owner.shard(k, look=False)) is not None:
                files += q.position.files_of(local)
        return list(dict.fromkeys(files))

    def hold_committed(self) -> None:
        for q in self._owner.shards:
            q.position.hold_committed()

    def release_committed(self) -> None:
        for q in self._owner.shards:
            q.position.release_committed()

    def close(self) -> None:
        for q in self._owner.shards:
            q.position.close()


class ShardedNatsQueue(Queue, SharedFeed):
    """NatsQueues (one per stream) as one queue: see the module docstring."""

    type = "nats"
    packs = True
    ack_state = "logged"
    shared = True

    def __init__(self, settings: QueueSettings, role: str = "all", history: int = 100_000) -> None:
        self.stride = settings.seq_stride
        if self.stride < 2:
            raise ValueError("a sharded queue needs queue.streams or queue.stream_slots >= 2")
        self._settings = settings
        self._role = role
        self._history = history
        self._per = max(1, settings.max_bytes // settings.streams)
        #: the shards, in order; replaced (never changed in place) when one is added, so readers need no lock
        self.shards: list[NatsQueue] = []
        self._growing = threading.Lock()
        self._look_error: Exception | None = None  # what the last look failed with (said once)
        self._looked_at = 0.0  # when the last look ended (monotonic)
        self._looked_ok = 0.0  # ... and the last one that succeeded
        self._clock = time.time  # for the moment batches with an id move (a stream's SWITCH_KEY)
        self._looked_from = 0.0  # when (wall clock) the last successful look began
        #: (the shards it is of, their moments, a moment's window): see _moments
        self._moments_cache: tuple[list[NatsQueue] | None, list[tuple[float, int]], float] = (None, [], 0.0)
        self.lookups = self.found = 0  # batch ids claimed in a stream their dataset moved from; found there
        self._refusing = self._not_taking = False  # refuse_puts, stop_taking: for shards taken on later too
        self._stopped = threading.Event()
        self._started = False  # streams found from here on were made after this process started
        try:
            self.shards = [self._open(0)]
            stamp = self._check_strides()  # every stream there is, before any is made or changed
            # a deployment that ran before (or took a batch meanwhile): streams made now are added to it
            first = self.shards[0]
            live = not first.made or first._publisher.stream_state(fresh=True).last_seq > 0
            for k in range(1, settings.streams):
                switch = {SWITCH_KEY: f"{SWITCH_AFTER:g}"} if live else None  # seconds after it is made
                self.shards = [*self.shards, self._open(k, metadata=switch)]
                live = live or self.shards[-1].metadata_kept  # made live by another process: so are the next
                if live and self.shards[-1].made and not self.shards[-1].metadata_kept:
                    logger.warning(
                        "NATS stream {} keeps no metadata (nats-server before 2.10): a batch sent again with its "
                        "id across its dataset's move to it may be stored twice",
                        shard_stream(settings.stream, k),
                    )
            self._look()
            if self._look_error is not None:  # at start, a stream not taken on stops it
                raise self._look_error
            for info in stamp:
                self.shards[0]._link.stamp(info)
        except BaseException:
            for q in self.shards:
                q.close()
            raise
        self._started = True
        self.position = ShardedPosition(self)  # type: ignore[assignment]
        # the same in every process of the deployment (they share the stride) however many streams each has
        self.identity = f"nats-sharded:{self.stride}:{self.shards[0].identity}"
        self._next = 0  # the shard a take starts from (in turn)
        self._woken = threading.Event()  # set by wake: the take waiting now, or the next one, returns
        self._lock = threading.Lock()
        self._looker: threading.Thread | None = None
        if len(self.shards) < self.stride:
            self._looker = threading.Thread(target=self._keep_looking, name="flight-writer-streams", daemon=True)
            self._looker.start()

    # -- shards --------------------------------------------------------------------------------------
    def _check_strides(self) -> list[Any]:
        """Refuse to start if any existing stream holds batches of another stride (link.py
        ``check_stride``), before this process makes or changes any; the infos of those whose description
        should say ours. A stream without a stride in its description (made before they said it) has the one
        another stream of the deployment says, else the stride of their number (what that version used)."""
        link = self.shards[0]._link
        existed = link.run(link.count_streams(self._settings.stream), 30)
        names = [shard_stream(self._settings.stream, k) for k in range(existed)]
        infos = [link.run(link.js.stream_info(name), 30) for name in names]
        said = [d for info in infos if (d := link.declared_stride(info)) is not None]
        legacy = said[0] if said else existed
        return [info for info in infos if link.check_stride(info, lambda: legacy)]

    def _open(self, k: int, taken_on: bool = False, metadata: dict[str, str] | None = None) -> NatsQueue:
        shard = dataclasses.replace(
            self._settings,
            stream=shard_stream(self._settings.stream, k),
            max_bytes=self._per,
            streams=1,
            stream_slots=self.stride,
        )
        return NatsQueue(shard, self._role, self._history, check=False, taken_on=taken_on, metadata=metadata)

    def _look(self, wait: bool = True, limit: float = LOOK_WAIT) -> None:
        """Take on the streams other processes added after ours (each the next one: they are made in
        order). NATS away, or a stream that fails to open: tried again next time (said once until a look
        succeeds). ``wait``: for a look under way in another thread, else at most ``limit`` s (which also
        bounds each request)."""
        if not self._growing.acquire(timeout=-1 if wait else min(LOOK_WAIT, limit)):
            return  # another thread's look is taking long (NATS away): what is known stands
        try:
            if not wait and time.monotonic() - self._looked_at < LOOK_AGAIN:
                return  # looked a moment ago (an ack may ask about thousands of seqs)
            began = self._clock()
            try:
                while len(self.shards) < self.stride and not self._stopped.is_set():
                    k = len(self.shards)
                    name, link = shard_stream(self._settings.stream, k), self.shards[0]._link
                    try:
                        info = link.run(link.js.stream_info(name), timeout=min(5.0, limit))
                    except nats.js.errors.NotFoundError:
                        break
                    if link.declared_stride(info) not in (None, self.stride):
                        raise ValueError(
                            f"NATS stream {name} says seq stride {link.declared_stride(info)}, this process has "
                            f"{self.stride}: every process must have the same queue.streams / stream_slots"
                        )
                    q = self._open(k, taken_on=self._started)
                    self.shards = [*self.shards, q]
                    if self._refusing:  # set before the line above, or its loop saw q: stopping, as the others
                        q.refuse_puts()
                    if self._not_taking:
                        q.stop_taking()
                    logger.info("NATS stream {} joined the queue: {} streams", name, k + 1)
            except Exception as exc:
                if self._look_error is None:
                    logger.warning("looking for NATS streams added by other processes failed: {}", exc)
                self._look_error = exc
            else:
                self._look_error = None
                self._looked_ok, self._looked_from = time.monotonic(), began
            self._looked_at = time.monotonic()
        finally:
            self._growing.release()

    def _keep_looking(self) -> None:
        while not self._stopped.wait(LOOK_EVERY) and len(self.shards) < self.stride:
            self._look()

    def shard(self, k: int, look: bool = True) -> NatsQueue | None:
        """Shard k's queue; one this process does not have yet is looked for (``look``)."""
        shards = self.shards
        if k < len(shards):
            return shards[k]
        if not look or k >= self.stride:
            return None
        self._look(wait=False)
        shards = self.shards
        return shards[k] if k < len(shards) else None

    # -- routing -------------------------------------------------------------------------------------
    def _route(self, dataset: str) -> tuple[int, NatsQueue]:
        shards = self.shards
        k = zlib.crc32(dataset.encode()) % len(shards)
        return k, shards[k]

    def _moments(self, shards: list[NatsQueue]) -> tuple[list[tuple[float, int]], float]:
        """The moments batches with an id start going to streams added live, ``(moment, stream)`` in order
        of time, and how long a moment's window lasts (computed again when the shards change; kept in one
        attribute, replaced whole, so threads need no lock)."""
        of, timed, window = self._moments_cache
        if of is not shards:
            timed = sorted((q.switch_at, m) for m, q in enumerate(shards) if m and q.switch_at is not None)
            window = QUIET + SWITCH_AFTER + CLOCKS + max(q.duplicate_window for q in shards)
            self._moments_cache = (shards, timed, window)
        return timed, window

    def _id_route(self, dataset: str, now: float) -> tuple[int, list[int], float, float | None]:
        """For a batch with an id at wall-clock ``now`` (see the module docstring): the shard it goes to;
        the shards to look its id up in first; until when to wait before either (the quiet moments after the
        switches that moved the dataset); and when the shard stops taking this dataset's ids (the next moment
        that moves it: no publish there may start after it), or None."""
        shards = self.shards
        timed, window = self._moments(shards)
        crc = zlib.crc32(dataset.encode())
        if not timed or now >= timed[-1][0] + window:  # none added live, or every window over
            return crc % len(shards), [], 0.0, None

        def streams_at(t: float, strict: bool = True) -> int:
            """How many streams take batches with an id at ``t`` (just before ``t``: not ``strict``): up to
            the first whose moment has not come."""
            return min((m for at, m in timed if (at > t if strict else at >= t)), default=len(shards))

        k = crc % streams_at(now)
        stop = next((at for at, _ in timed if at > now and crc % streams_at(at) != k), None)
        olds: list[int] = []
        quiet = 0.0
        for at, _ in timed:  # moments passed whose window is open: where its ids went before each
            old = crc % streams_at(at, strict=False)
            if at <= now < at + window and old != k:
                if old not in olds:
                    olds.append(old)
                quiet = max(quiet, at + QUIET)
        return k, olds, quiet, stop

    def _know_streams(self, deadline: float) -> None:
        """Before a batch with an id: the streams known here were looked up at most SWITCH_AFTER / 2 s ago
        (a stream added since is not yet where ids go); looked up again until ``deadline`` (monotonic), then
        QueueFull."""
        if len(self.shards) >= self.stride:
            return
        delay = 0.05
        while time.monotonic() - self._looked_ok > SWITCH_AFTER / 2:  # the background looks failed lately
            self._look(wait=False, limit=max(0.05, deadline - time.monotonic()))
            if time.monotonic() - self._looked_ok <= SWITCH_AFTER / 2:
                return
            if self._refusing:
                raise QueueClosed("queue is closed")
            if time.monotonic() >= deadline:
                e = self._look_error
                why = "no answer" if e is None else f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
                raise QueueFull(
                    f"NATS did not take the batch: cannot tell which streams there are ({why}); a batch with an "
                    "id is taken once they can be looked up (one may have been added)"
                )
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 0.5)

    def _id_target(self, dataset: str, deadline: float) -> tuple[int, list[int], float | None]:
        """``_id_route`` once its quiet moment has passed (waited for until ``deadline``, then QueueFull)."""
        self._know_streams(deadline)
        while True:
            now = self._clock()
            k, olds, quiet, stop = self._id_route(dataset, now)
            if now >= quiet:
                return k, olds, stop
            if quiet - now > deadline - time.monotonic():
                raise QueueFull(
                    "NATS did not take the batch: its dataset is moving to another stream, which takes batches "
                    f"with an id in {quiet - now:.1f} s; send it again then"
                )
            time.sleep(quiet - now)

    def _claim(self, dataset: str, olds: list[int], client_id: str, deadline: float) -> Accepted | None:
        """Claim the id in every stream the dataset moved from: the seq of a batch one of them took with it,
        or None (claimed in each: none of them takes it from now on, however late a publish arrives)."""
        for old in olds:
            self.lookups += 1
            q = self.shards[old]
            local, duplicate = q.claim(dataset, client_id, max(0.0, deadline - time.monotonic()))
            if duplicate and q.kind_of(local, max(0.0, deadline - time.monotonic())) == "batch":
                self.found += 1
                return Accepted(self._global(old, local), True)
        return None

    def _put_id(
        self, dataset: str, schema_key: bytes, batch: pa.RecordBatch, client_id: str, timeout: float, wait: bool
    ) -> Accepted:
        """A batch with an id: its seq in a stream its dataset moved from, else put where it goes now. The
        route is decided again right before each publish (claims take time), and a publish to a stream
        starts only before that stream stops taking the dataset's ids: its next moment known here, or the
        earliest moment a stream the last look did not see can have (that look's start plus SWITCH_AFTER).
        A put still trying then stops and the batch is routed again (a retry in the same stream is deduped
        by its id)."""
        deadline = time.monotonic() + timeout
        last: QueueFull | None = None  # what the last try on a stream since left said
        while True:
            looked_from = self._looked_from  # before the shards the route is made from (a look may add one)
            k, olds, stop = self._id_target(dataset, deadline)
            if olds:
                if (found := self._claim(dataset, olds, client_id, deadline)) is not None:
                    return found
                # the claims took time: the same route still, and never another meanwhile (a route that
                # moved away and back may have taken the batch elsewhere)?
                now, was = self._clock(), stop
                again, more, quiet, stop = self._id_route(dataset, now)
                if again != k or (was is not None and now >= was) or not set(more) <= set(olds) or now < quiet:
                    continue
            if len(self.shards) < self.stride:
                horizon = looked_from + SWITCH_AFTER
                stop = horizon if stop is None else min(stop, horizon)
            left = deadline - time.monotonic()
            if left <= 0:
                raise QueueFull(f"{last or 'NATS did not take the batch'} (in all {timeout:g} s, routed again)")
            capped = stop is not None and stop - self._clock() < left
            if capped:
                left = stop - self._clock()  # type: ignore[operator]
                if left <= 0:  # past: the streams may have changed since the last look
                    self._look(wait=False, limit=max(0.05, deadline - time.monotonic()))
                    if self._looked_from == looked_from:  # not looked again (a moment ago, or failed)
                        time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
                    continue
            try:
                seq, duplicate = self.shards[k].put(dataset, schema_key, batch, left, client_id, wait=wait)
            except QueueFull as exc:
                if not capped and last is None:
                    raise
                if not capped or time.monotonic() >= deadline:
                    raise QueueFull(f"{exc} (in all {timeout:g} s, routed again)") from None
                last = exc
                continue
            if duplicate and self._claims_possible():
                self._not_claimed(k, seq, deadline)
            return Accepted(self._global(k, seq), duplicate)

    def _claims_possible(self) -> bool:
        """Whether a stream can hold a claim a put may meet: while streams can be added that this process
        does not have, and until the claims after the last moment known here are out of their window (by
        the clocks of the processes claiming, up to CLOCKS behind this one)."""
        shards = self.shards
        if len(shards) < self.stride:
            return True
        timed, window = self._moments(shards)
        last = timed[-1][0] + window + max(q.duplicate_window for q in shards) + CLOCKS if timed else 0.0
        return self._clock() < last

    def _not_claimed(self, k: int, local: int, deadline: float) -> None:
        """A put with an id answered as a duplicate of ``local`` in shard ``k``: QueueFull if that is a claim
        (the stream's dedupe refuses the batch there for its duplicate window, and where the claim's put
        went, if anywhere, is not known here)."""
        q = self.shards[k]
        if q.kind_of(local, max(0.0, deadline - time.monotonic())) == "claim":
            raise QueueFull(
                f"NATS did not take the batch: stream {shard_stream(self._settings.stream, k)} holds a claim of its "
                "id (a put of it in another process, across a stream addition, claimed it there and did not "
                f"finish); the stream takes the id again {q.duplicate_window:g} s after the claim: send it again"
            )

    def _global(self, k: int, local: int) -> int:
        return local * self.stride + k

    def _by_shard(self, seqs: Iterable[int]) -> dict[int, list[int]]:
        by: dict[int, list[int]] = {}
        for s in seqs:
            by.setdefault(s % self.stride, []).append(s // self.stride)
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
            local = dataclasses.replace(e, seq=e.seq // self.stride)
            by.setdefault(e.seq % self.stride, []).append(local)
        return by

    def _each(self, by: dict[int, Any]) -> Iterable[tuple[NatsQueue, Any]]:
        """(shard, its part) for the parts of shards this process has (taken entries' shards it always has)."""
        for k, part in by.items():
            if (q := self.shard(k)) is not None:
                yield q, part

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
        if client_id is not None:
            return self._put_id(dataset, schema_key, batch, client_id, timeout, wait)
        k, q = self._route(dataset)
        seq, duplicate = q.put(dataset, schema_key, batch, timeout, client_id, wait=wait)
        return Accepted(self._global(k, seq), duplicate)

    def put_packed(
        self,
        dataset: str,
        schema_key: bytes,
        batch: pa.RecordBatch,
        timeout: float,
        after: Future[Accepted] | None = None,
    ) -> Future[Accepted]:
        k, q = self._route(dataset)
        if after is not None and getattr(after, "shard", k) != k:
            # the stream's previous batch went to another stream (its dataset moved meanwhile): the chain that
            # keeps no batch after a failed one is per stream, so wait for that one here
            if (failed := after.exception()) is not None:
                raise failed
            after = None
        local = q.put_packed(dataset, schema_key, batch, timeout, getattr(after, "local", after))
        receipt: Future[Accepted] = Future()
        receipt.shard, receipt.local = k, local  # type: ignore[attr-defined]

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
        if any(c is not None for c in client_ids):  # piece ids (all or none): each routed as one batch
            deadline = time.monotonic() + timeout
            pairs = zip(batches, client_ids, strict=True)
            left = lambda: max(0.0, deadline - time.monotonic())  # noqa: E731
            return [self.put(dataset, schema_key, b, left(), c, wait=wait) for b, c in pairs]
        k, q = self._route(dataset)
        accepted = q.put_many(dataset, schema_key, batches, timeout, client_ids, wait=wait)
        return [Accepted(self._global(k, a.seq), a.duplicate) for a in accepted]

    @property
    def max_message_bytes(self) -> int | None:  # type: ignore[override]
        return min(q.max_message_bytes for q in self.shards)

    def settle(self, seq: int, wait: bool) -> bool:
        q = self.shard(seq % self.stride)
        return q is not None and q.settle(seq // self.stride, wait)

    def flush(self, dataset: str | None, timeout: float | None) -> bool:
        """Waits in every shard, or, for one dataset, in every shard it can have been put into: the
        streams are looked for first (another process may have added one and put into it)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if len(self.shards) < self.stride:
            self._look()
        shards = self.shards
        if dataset is None:
            ks = set(range(len(shards)))
        else:
            crc = zlib.crc32(dataset.encode())
            ks = {crc % n for n in range(1, len(shards) + 1)}  # N only grows: each N it had up to now
        for k in sorted(ks):
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not shards[k].flush(dataset, left):
                return False
        return True

    def refuse_puts(self) -> None:
        self._refusing = True
        for q in self.shards:
            q.refuse_puts()

    def refresh(self) -> None:
        for q in self.shards:
            q.refresh()

    @property
    def last_seq(self) -> int:
        """The highest seq issued, in every stream there is: a stream added meanwhile is looked for first
        (at most every ``LOOK_AGAIN`` s), so an ack's and a flush's view of what was issued includes it."""
        if len(self.shards) < self.stride:
            self._look(wait=False)
        return max(self._global(k, q.last_seq) for k, q in enumerate(self.shards))

    def stats(self) -> dict[str, Any]:
        shards = self.shards
        each = [q.stats() for q in shards]
        stats = dict(each[0])
        for key in ("pending_batches", "pending_bytes", "received_batches", "received_rows", "received_bytes"):
            stats[key] = sum(s.get(key) or 0 for s in each)
        ages = [s["oldest_pending_age_s"] for s in each if s.get("oldest_pending_age_s") is not None]
        stats["oldest_pending_age_s"] = max(ages) if ages else None
        stats["nats_stream"] = [s["nats_stream"] for s in each]
        stats["nats_streams"] = len(shards)
        stats["nats_stream_slots"] = self.stride
        stats["nats_id_lookups"], stats["nats_id_found"] = self.lookups, self.found
        stats["nats_connected"] = all(s["nats_connected"] for s in each)
        errors = [s["queue_error"] for s in each if s.get("queue_error")]
        if errors:
            stats["queue_error"] = errors[0]
        return stats

    def received_by_dataset(self) -> dict[str, tuple[int, int, int]]:
        total: dict[str, tuple[int, int, int]] = {}
        for q in self.shards:
            for name, (b, r, n) in q.received_by_dataset().items():
                ob, orr, on = total.get(name, (0, 0, 0))
                total[name] = (ob + b, orr + r, on + n)
        return total

    # -- Feed ----------------------------------------------------------------------------------------
    def take(self, max_items: int, timeout: float) -> list[Entry]:
        """From the shards in turn: the first that has entries; each is asked without waiting until all
        were, then the next asked waits (so an idle queue costs one short fetch per shard per wait)."""
        deadline = time.monotonic() + timeout
        shards = self.shards
        n = len(shards)
        with self._lock:
            start = self._next % n
            self._next = (start + 1) % n
        tried = 0
        while True:
            k = (start + tried) % n
            wait = 0.0 if tried < n else max(0.0, min(0.1, deadline - time.monotonic()))
            got = shards[k].take(max_items, wait)
            if got:
                return [self._to_global(k, e) for e in got]
            tried += 1
            # woken (as one stream's take is), or a flush the writer must see now: once every shard was asked
            # (a writer draining for a flush takes until a take comes back empty)
            if tried >= n and (self._woken.is_set() or any(q.flush_asked() for q in shards)):
                self._woken.clear()
                return []
            if tried >= n and time.monotonic() >= deadline:
                return []

    def flush_requests(self) -> list[str | None]:
        return [r for q in self.shards for r in q.flush_requests()]

    def plan(self, plan: Plan, entries: list[Entry] | None = None) -> None:
        by = self._by_shard(plan.seqs)
        if len(by) != 1:
            raise ValueError(f"{plan.path}: a plan holds the seqs of one stream only, not {sorted(by)}")
        [(k, local)] = by.items()
        q = self.shard(k)
        if q is None:
            raise ValueError(f"{plan.path}: no stream {k} in this queue")
        shard_entries = self._to_local(entries or []).get(k, [])
        q.plan(Plan(plan.path, plan.kind, tuple(local), plan.error), shard_entries)

    def confirm(self, entries: list[Entry], path: str | None, table: bool = False) -> None:
        for q, local in self._each(self._to_local(entries)):
            q.confirm(local, path, table)

    def committed(self, seqs: tuple[int, ...]) -> None:
        for q, local in self._each(self._by_shard(seqs)):
            q.committed(tuple(local))

    def reject(self, entries: list[Entry], error: str) -> None:
        for q, local in self._each(self._to_local(entries)):
            q.reject(local, error)

    def room(self) -> int:
        return min(q.room() for q in self.shards)

    def wake(self) -> None:
        """Ends a waiting take (returning nothing), as with one stream."""
        self._woken.set()
        for q in self.shards:
            q.wake()

    def stop_taking(self) -> None:
        self._not_taking = True
        for q in self.shards:
            q.stop_taking()

    def dropped(self) -> bool:
        """True if any stream took back what it had handed out (its connection was away): the writer then
        drops every buffer, so the other streams give back what they hold too, or it would stay held here
        (kept alive, never redelivered) for good."""
        shards = self.shards
        lost = [q.dropped() for q in shards]  # every one asked: each says it once
        if not any(lost):
            return False
        for q, was in zip(shards, lost, strict=True):
            if not was:
                q.give_back()
        return True

    def close(self) -> None:
        self._stopped.set()
        if self._looker is not None:
            self._looker.join(30)
        with self._growing:
            for q in self.shards:
                q.close()
