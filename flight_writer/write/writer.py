"""The writer: drains the queue's feed into Parquet objects; the queue marks their seqs durable.

One loop thread owns the buffers, one per (dataset, schema, partition). Each round (``step``) takes batches
from the feed in groups, pausing 5 ms after a take that did not fill a group, so a stream of small batches
wakes it about 200 times a second instead of once per batch (each wake-up competed with the receiving
thread). Each buffer feeds one ``ParquetFile``: every ``row_group_rows`` rows or ``row_group_bytes`` Arrow
bytes the buffer's new batches go to the file as a row group, which ``threads`` pool workers encode while
the buffer goes on filling (see parquet_file.py).

A buffer is sealed when it reaches ``max_file_bytes`` (Arrow bytes) or ``max_file_rows``, when its oldest
batch is ``flush_interval`` seconds old, when the queue asks for a flush (``Feed.flush_requests``), and on
close; when a new buffer would make more than ``max_open_buffers`` (or its dataset's ``max_partitions``),
the oldest is sealed (a bound on the state kept per buffer, whatever number of datasets producers name);
and when the buffers together hold more than the queue has room left (``Feed.room``: the one byte bound,
``queue.max_bytes``, counted by the queue; on NATS less only what writers hold), the largest is sealed
early, so a full queue always drains without waiting for ``flush_interval``. With nothing in flight that is
the old rule "buffers over half the bound"; uploads in flight make it act sooner.

A sealed file is stored under one name, with retries and backoff (retries.py): a retry after an ambiguous
failure overwrites the same object rather than adding a second copy. Only after storage confirmed the
object does the file call ``Feed.confirm``, which makes its seqs durable and releases their capacity.

``start()`` runs the loop on its own thread; without it, ``step()`` and ``sync()`` drive the writer
synchronously (tests, and library users who want no thread), as litestream's ``Sync`` does.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from typing import Any

from loguru import logger

from flight_writer.config import DatasetSettings, WriterSettings
from flight_writer.lake.storage import Storage
from flight_writer.queue import Entry, Feed, QueueLost
from flight_writer.queue.base import SharedFeed
from flight_writer.queue.counting import Counts
from flight_writer.write.parquet_file import FileContext, ParquetFile
from flight_writer.write.retries import Aborted, Retries
from flight_writer.write.routing import Routes
from flight_writer.write.stored import Followers, Stored

GET_BATCH = 4096  # entries taken from the queue per call: amortizes locking for small batches
MAX_IDLE_WAIT = 1.0
LINGER = 0.005  # after a partial take, let batches gather: one wake-up per batch cost the receive path


@dataclass(slots=True)
class _Buffer:
    file: ParquetFile
    oldest: float
    rows: int = 0
    nbytes: int = 0
    fresh: list[Entry] = field(default_factory=list)  # not yet handed to the file as a row group
    fresh_rows: int = 0
    fresh_bytes: int = 0


class Writer:
    """Buffers entries of the feed per dataset, schema and partition, and stores them as Parquet files.

    ``crashed`` is called if the loop dies of a bug (the service closes the queue then, so producers and
    flushes get an answer instead of waiting for a writer that is gone)."""

    def __init__(
        self,
        feed: Feed,
        storage: Storage,
        settings: WriterSettings | None = None,
        datasets: DatasetSettings | None = None,
        crashed: Callable[[], None] | None = None,
    ) -> None:
        self._feed = feed
        self._shared = feed if isinstance(feed, SharedFeed) else None  # other write processes take from it too
        self._settings = s = settings or WriterSettings()
        self._buffers: dict[tuple[str, bytes, int | str], _Buffer] = {}  # by dataset, schema, partition
        self._open_of: dict[str, int] = {}  # buffers per dataset
        self._routes = Routes(datasets or DatasetSettings())
        self._replans: dict[str, list[Entry]] = {}  # recovered plans, collected until complete
        self._buffered_bytes = 0
        self._lock = threading.Lock()  # guards _inflight and the counters
        self._inflight: dict[Future[None], str] = {}
        self._stopping = threading.Event()
        self._abort = threading.Event()
        self._crashed = crashed
        self._executor = ThreadPoolExecutor(s.threads, thread_name_prefix="flight-writer-file")
        self._retries = Retries(s, self._abort)
        #: who hears of each stored object, in order: the durability record, these counters, the listeners
        self.followers = Followers(feed, self._retries.run, self._count)
        self._files = FileContext(feed, storage, s, self._executor, self._retries.run, self.followers)
        self._thread = threading.Thread(target=self._run, name="flight-writer-loop", daemon=True)
        self._written = Counts()  # files, rows, Parquet bytes
        self.batches_failed = 0
        self._last_write_at: float | None = None  # when storage last confirmed a file (epoch seconds)
        self.sealed_early = 0  # buffers written before they were due: writer.max_open_buffers
        self._warned_at = -3600.0

    # -- lifecycle -------------------------------------------------------------------------------------
    def start(self) -> Writer:
        self._thread.start()
        return self

    def close(self, timeout: float | None = None) -> bool:
        """Drain the feed, write every buffer, wait for uploads. False if ``timeout`` ran out first,
        in which case retries are abandoned and what was not stored stays un-durable."""
        self._stopping.set()
        if self._shared is not None:
            self._shared.stop_taking()
        if not self._thread.is_alive() and self._thread.ident is None:  # never started: driven by step()
            self.sync()
            self._executor.shutdown(wait=True)
            return True
        self._feed.wake()
        self._thread.join(timeout)
        finished = not self._thread.is_alive()
        if not finished:
            self._abort.set()
            self._thread.join()
        self._executor.shutdown(wait=True)
        return finished

    def update(self, settings: WriterSettings) -> None:
        """New settings (a live reload): files started from now on use them, files already filling keep
        theirs. ``threads`` stays as it is (the pool is not rebuilt)."""
        self._settings = settings
        self._retries.settings = settings
        self._files = dataclasses.replace(self._files, settings=settings)

    def abort(self) -> None:
        """Stop retrying now (a second signal): un-durable data is left as it is."""
        self._abort.set()

    def __enter__(self) -> Writer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- driving it ------------------------------------------------------------------------------------
    def step(self, wait: float = 0.0) -> int:
        """One round: take what the feed has (waiting up to ``wait`` s for the first entry), write out what
        flush requests ask for and what ``flush_interval`` makes due. Returns the entries taken."""
        entries = self._feed.take(GET_BATCH, wait)
        if self._shared is not None and self._shared.dropped():
            self._drop_buffers()  # the queue gave what it handed out to other writers: these are not ours
        self._add(entries)
        if requests := self._feed.flush_requests():
            self._drain()  # everything put before the request
            for dataset in requests:
                self._seal(lambda b, ds=dataset: ds is None or b.file.dataset == ds)
            self.followers.flush_requested(requests)
        cutoff = time.time() - self._settings.flush_interval
        self._seal(lambda b: b.oldest <= cutoff)
        return len(entries)

    def sync(self, dataset: str | None = None) -> None:
        """Take everything the feed has, write out every buffer (of ``dataset``, or all) and wait until the
        files are stored: the synchronous step, for a writer whose loop is not running."""
        if self._thread.is_alive():
            raise RuntimeError("sync() drives a writer without its loop; this one runs (use the queue's flush)")
        self._drain()
        self._seal(lambda b: dataset is None or b.file.dataset == dataset)
        with self._lock:
            futures = list(self._inflight)
        wait_futures(futures)

    # -- the loop --------------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while True:
                stopping = self._stopping.is_set()
                taken = self.step(0.0 if stopping else self._idle_wait())
                if stopping and not taken:
                    self._seal(lambda b: True)
                    break
                if 0 < taken < GET_BATCH and not stopping:
                    time.sleep(LINGER)
        except Exception:
            logger.exception("writer loop crashed")
            self._retries.report("writer loop crashed; see the log")
            if self._crashed is not None:
                self._crashed()
            raise
        finally:
            with self._lock:
                futures = list(self._inflight)
            wait_futures(futures)

    def _drop_buffers(self) -> None:
        logger.warning(
            "the queue took back {} open buffers ({} bytes): dropped, their batches come again",
            len(self._buffers),
            self._buffered_bytes,
        )
        self._buffers.clear()
        self._open_of.clear()
        self._replans.clear()
        self._buffered_bytes = 0

    def _idle_wait(self) -> float:
        if not self._buffers:
            return MAX_IDLE_WAIT
        oldest = min(b.oldest for b in self._buffers.values())
        return max(0.0, min(MAX_IDLE_WAIT, oldest + self._settings.flush_interval - time.time()))

    def _drain(self) -> None:
        while entries := self._feed.take(GET_BATCH, 0.0):
            self._add(entries)

    def _add(self, entries: list[Entry]) -> None:
        s, routes = self._settings, self._routes
        room = self._feed.room()  # what producers may still put: the buffers may hold no more than that
        for e in entries:
            if e.planned is not None:  # recovered: store exactly this plan again
                collected = self._replans.setdefault(e.planned.path, [])
                collected.append(e)
                if len(collected) == len(e.planned.seqs):
                    file = ParquetFile(self._files, e.dataset, "", 0, routes.of(e).shape, e.planned)
                    order = {seq: k for k, seq in enumerate(e.planned.seqs)}  # the first try's rows and seqs
                    file.seal(sorted(self._replans.pop(e.planned.path), key=lambda x: order[x.seq]))
                    self._track(file)
                continue
            if e.batch.num_rows == 0:  # acknowledged, nothing to store
                self._retries.run("confirm an empty batch", lambda e=e: self._feed.confirm([e], None))
                continue
            route = routes.of(e)
            partition = route.partition(e)
            key = (e.dataset, e.schema_key, partition)
            buf = self._buffers.get(key)
            if buf is None:
                if len(self._buffers) >= s.max_open_buffers:
                    self._seal_oldest()
                if self._open_of.get(e.dataset, 0) >= route.rule.max_partitions:  # the dataset's own cap
                    self._seal_oldest(e.dataset)
                file = ParquetFile(self._files, e.dataset, route.folders(e, partition), e.seq, route.shape)
                buf = self._buffers[key] = _Buffer(file, e.received_at)
                self._open_of[e.dataset] = self._open_of.get(e.dataset, 0) + 1
            rows = e.batch.num_rows
            buf.fresh.append(e)
            buf.rows += rows
            buf.nbytes += e.nbytes
            buf.fresh_rows += rows
            buf.fresh_bytes += e.nbytes
            self._buffered_bytes += e.nbytes
            if buf.nbytes >= s.max_file_bytes or buf.rows >= s.max_file_rows:
                self._submit(self._buffers.pop(key))
            elif buf.fresh_rows >= s.row_group_rows or buf.fresh_bytes >= s.row_group_bytes:
                buf.file.add(buf.fresh)  # encoded while the buffer goes on filling
                buf.fresh, buf.fresh_rows, buf.fresh_bytes = [], 0, 0
            while self._buffered_bytes > room and self._buffers:
                # producers would soon wait on a full queue for data that only age would write out
                largest = max(self._buffers, key=lambda k: self._buffers[k].nbytes)
                self._submit(self._buffers.pop(largest))

    def _seal_oldest(self, dataset: str | None = None) -> None:
        """One buffer too many (``max_open_buffers`` in all, or a ``dataset``'s ``max_partitions``: each
        costs memory and a file): the one that started first is written now, as if its ``flush_interval``
        had passed."""
        keys = [k for k in self._buffers if dataset is None or k[0] == dataset]
        key = min(keys, key=lambda k: self._buffers[k].oldest)
        self.sealed_early += 1
        now = time.monotonic()
        if now - self._warned_at > 60:
            self._warned_at = now
            logger.warning(
                "{} buffers are filling{}: writing one of {!r} early (smaller files); {} sealed early so far",
                len(self._buffers) if dataset is None else len(keys),
                " (writer.max_open_buffers)" if dataset is None else f" for {dataset!r} (datasets.max_partitions)",
                key[0],
                self.sealed_early,
            )
        self._submit(self._buffers.pop(key))

    def _seal(self, predicate: Callable[[_Buffer], bool]) -> None:
        for key in [k for k, b in self._buffers.items() if predicate(b)]:
            self._submit(self._buffers.pop(key))

    def _submit(self, buf: _Buffer) -> None:
        self._buffered_bytes -= buf.nbytes
        if (left := self._open_of[buf.file.dataset] - 1) > 0:
            self._open_of[buf.file.dataset] = left
        else:
            del self._open_of[buf.file.dataset]
        self.followers.sealed(buf.file.path, buf.file.dataset)
        buf.file.seal(buf.fresh)
        self._track(buf.file)

    def _track(self, file: ParquetFile) -> None:
        with self._lock:
            self._inflight[file.done] = file.dataset
        file.done.add_done_callback(self._job_done)

    def _job_done(self, future: Future[None]) -> None:
        with self._lock:
            self._inflight.pop(future, None)
        exc = future.exception()
        if isinstance(exc, QueueLost):
            logger.warning("a file was not stored: {}", exc)
        elif exc is not None and not isinstance(exc, Aborted):
            logger.opt(exception=exc).error("file job crashed")

    # -- what files report ---------------------------------------------------------------------------
    def _count(self, event: Stored) -> None:
        with self._lock:
            if event.kind == "failed":
                self.batches_failed += 1
            else:
                self._written.add(event.dataset, event.rows, event.nbytes)
                self._last_write_at = time.time()

    def written_by_dataset(self) -> dict[str, tuple[int, int, int]]:
        """Files, rows and Parquet bytes stored since start, per dataset (the first ``MAX_DATASETS``)."""
        with self._lock:
            return self._written.by_dataset()

    def report_error(self, message: str) -> None:
        """Show a problem found outside the writer (e.g. the storage check) in ``last_error``."""
        self._retries.report(message)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            counts = {
                "files_written": self._written.total[0],
                "rows_written": self._written.total[1],
                "bytes_written": self._written.total[2],
                "batches_failed": self.batches_failed,
                "open_buffers": len(self._buffers),
                "buffers_sealed_early": self.sealed_early,
                "last_write_at": self._last_write_at,
            }
        return {**counts, **self._retries.stats()}
