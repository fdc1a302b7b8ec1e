"""One Parquet object in the making: row groups encoded as its buffer fills, on as many cores as are free.

The writer loop hands a file its batches a row group at a time (``add``) and the rest when the buffer is
sealed (``seal``). Each row group is encoded on the writer's pool as soon as it comes, as a one-row-group
Parquet *part* in memory, several at once when threads are free; at seal the parts are joined into one file
(footer.py: the column chunks as they are, one footer with moved offsets). So a flush finds most of a file
already encoded, and one big file or burst is encoded by several threads, not one. A file that is a single
row group at seal (the common case for small or slow streams) is encoded straight into its destination.
Columns whose values are nearly all distinct in the file's first batches get no dictionary
(``dictionary_columns``). The encoding itself is encoding.py's.

The destination: where storage is a local directory, a file under ``_tmp/`` written by native code and
renamed into place once complete (no Python ``bytes`` copy of the file is made); elsewhere memory, uploaded
in one request once complete.

The batches stay with the file until it is stored. If encoding a part fails (the encoder rejects a batch),
the file is encoded again in one piece at seal, with retries while the local disk fails; batches the encoder
rejects on their own are kept as Arrow IPC under ``_failed/{dataset}/`` and marked failed. Then the plan
(path and exact seqs) is recorded, the object is stored under that one name with retries, and one ``Stored``
event (stored.py) goes to the writer's followers, the durability record first: the queue confirms the
object (its seqs become durable, their capacity is released). A plan redone after a crash whose object is
already there, complete, is confirmed as it is, never written again: a lake table may hold it with its size.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from loguru import logger

from flight_writer._version import __version__
from flight_writer.config import WriterSettings
from flight_writer.lake.layout import Shape
from flight_writer.lake.storage import Storage
from flight_writer.queue import Entry, Feed, Plan
from flight_writer.queue.seqs import parse_ranges, seq_ranges
from flight_writer.write import footer
from flight_writer.write.encoding import SAMPLE_ROWS, Encoder, Joined, dictionary_columns
from flight_writer.write.stored import Stored

ARROW_TYPE = "application/vnd.apache.arrow.file"

#: ``retry(what, action, transient)``: run ``action`` until it succeeds, retrying with backoff the errors
#: that are instances of ``transient`` and raising the others (and ``Aborted`` on a hard stop)
Retry = Callable[[str, Callable[[], Any], tuple[type[BaseException], ...]], Any]


@dataclass(frozen=True, slots=True)
class FileContext:
    """What every file of one writer shares."""

    queue: Feed
    storage: Storage
    settings: WriterSettings
    executor: Executor
    retry: Retry
    stored: Callable[[Stored, list[Entry]], None]  # the object and the entries it holds: stored.Followers


class ParquetFile:
    """One file of one buffer: ``add`` row groups, then ``seal``; ``done`` resolves once it is stored.

    ``add`` and ``seal`` are called by the writer loop only; encoding runs on the pool."""

    def __init__(
        self, ctx: FileContext, dataset: str, folders: str, first_seq: int, shape: Shape, plan: Plan | None = None
    ) -> None:
        self._ctx = ctx
        self.dataset = dataset
        self._shape = shape
        self.done: Future[None] = Future()
        self._plan = plan  # recovered: store exactly these seqs under this path
        if plan is not None:
            self.path = plan.path
        else:
            name = f"part-{first_seq:012d}-{uuid.uuid4().hex[:12]}.parquet"
            self.path = f"{dataset}/{folders}/{name}"
        self._entries: list[Entry] = []  # every batch of the file, until it is stored
        self._dictionary: bool | list[str] | None = None  # the columns worth one: see dictionary_columns
        self._parts: list[pa.Buffer | None] = []  # encoded row groups in file order; None: not (yet) encoded
        self._failed = False  # a part could not be encoded: encode the file in one piece at seal
        self._lock = threading.Lock()  # guards _parts, _failed, _outstanding, _sealed, _dictionary, _encode_s
        self._outstanding = 0
        self._sealed = False
        self._started = time.monotonic()
        self._encode_s = 0.0  # seconds spent encoding, all threads together

    # -- the writer loop's side -------------------------------------------------------------------------
    def add(self, entries: list[Entry]) -> None:
        """Encode these batches as the file's next row group, on the pool, now."""
        self._entries.extend(entries)
        with self._lock:
            index = len(self._parts)
            self._parts.append(None)
            self._outstanding += 1
        self._ctx.executor.submit(self._encode_part, index, entries)

    def seal(self, entries: list[Entry]) -> None:
        """The last batches: once every row group is encoded, join them, store the file."""
        if self._parts and entries:
            self.add(entries)
        else:
            self._entries.extend(entries)
        with self._lock:
            self._sealed = True
            ready = self._outstanding == 0
        if ready:
            self._ctx.executor.submit(self._finish)

    def _use_dictionary(self, entries: list[Entry]) -> bool | list[str]:
        """Decided once per file, from the first row group encoded (on the pool, not the loop)."""
        with self._lock:
            if self._dictionary is None:
                self._dictionary = dictionary_columns(self._shape.apply(_sample(entries)))
            return self._dictionary

    # -- the pool's side ----------------------------------------------------------------------------------
    def _encode_part(self, index: int, entries: list[Entry]) -> None:
        part = None
        started = time.monotonic()
        try:
            dictionary = self._use_dictionary(entries)
            encoder = Encoder(self._shape, self._ctx.settings, None, dictionary)
            encoder.write([e.batch for e in entries])
            encoder.close(None)
            part = encoder.data
        except Exception as exc:  # sorted out at seal, where each batch is tried on its own
            logger.warning(
                "{}: encoding a row group failed ({}: {}); the file is encoded again at seal",
                self.path,
                type(exc).__name__,
                exc,
            )
        with self._lock:
            self._encode_s += time.monotonic() - started
            self._parts[index] = part
            self._failed |= part is None
            self._outstanding -= 1
            ready = self._sealed and self._outstanding == 0
        if ready:
            self._finish()

    def _finish(self) -> None:
        try:
            self._store()
        except BaseException as exc:
            self.done.set_exception(exc)
        else:
            self.done.set_result(None)

    def _store(self) -> None:
        ctx = self._ctx
        if self._plan is not None and self._plan.kind == "failed":
            self._store_rejected(self._entries[0], self._plan)
            return
        if self._plan is not None and self._confirm_found():
            return
        parts, self._parts = ([] if self._failed else self._parts), []
        encoder = None
        started = time.monotonic()
        if not parts:
            encoder = self._encode_or_set_aside()
            if encoder is None:
                return  # every batch was rejected
        entries = self._entries
        seqs = tuple(e.seq for e in entries)
        metadata = self._metadata(seqs)
        store: Encoder | Joined
        if encoder is None:
            pieces = footer.assemble(parts, metadata)
            store = ctx.retry(
                f"write {self.path}", lambda: Joined(pieces, ctx.storage.local_tmp()), (OSError, MemoryError)
            )
            size, file_footer = store.size, footer.file_metadata(pieces[-3])
        else:
            store, size = encoder, encoder.close(metadata)
            file_footer = encoder.footer
        self._encode_s += time.monotonic() - started
        started = time.monotonic()
        plan = self._plan
        if plan is None:
            plan = Plan(self.path, "parquet", seqs)
            ctx.retry(f"record the plan for {self.path}", lambda: ctx.queue.plan(plan, entries), (Exception,))
        if not self._upload(store):
            return  # another writer stored this plan meanwhile: found and confirmed as it is
        self._stored(seqs, size, file_footer, time.monotonic() - started, "wrote")

    def _upload(self, store: Encoder | Joined) -> bool:
        """Upload without replacing an object: a plan may be stored by two writers at once (the one that made
        it was slow, its batches went to others, and several others may each redo it), and a table may name
        the first object with its size already. True: stored here; False: this plan's object was there, and
        is confirmed as it is. Something else under the name (a torn object) is replaced. On a storage
        whose conditional writes are unsupported or ignored (the GCS emulator ignores them) the last
        upload wins, as before."""
        ctx = self._ctx

        def upload() -> bool:
            try:
                store.store(ctx.storage, self.path, replace=False)
            except FileExistsError:
                return False
            return True

        if ctx.retry(f"upload {self.path}", upload, (Exception,)):
            return True
        if self._confirm_found():
            if store.tmp is not None:
                with contextlib.suppress(Exception):
                    ctx.storage.delete(store.tmp)
            return False
        logger.warning("{}: an object that is not this plan's holds its name; replacing it", self.path)
        ctx.retry(f"upload {self.path}", lambda: store.store(ctx.storage, self.path), (Exception,))
        return True

    def _confirm_found(self) -> bool:
        """A redone plan (the process that made it died between upload and confirmation), or an upload that
        found its name taken: if the object is there, holding exactly the plan's seqs, confirm it as it is.
        Objects appear whole (a rename, a link, or one request), and a table may have committed this one with
        its size already: encoding the batches again would give other bytes (one piece, not the row groups of
        the first try) under the table's record."""
        found = self._ctx.retry(
            f"look for {self.path}", lambda: self._ctx.storage.parquet_footer(self.path), (Exception,)
        )
        seqs = tuple(e.seq for e in self._entries)
        named = (found[1].metadata or {}).get(b"flight_writer.seqs", b"").decode() if found is not None else ""
        if found is None or set(parse_ranges(named)) != set(seqs):
            return False
        self._parts = []
        self._stored(seqs, found[0], found[1], 0.0, "found")
        return True

    def _stored(
        self, seqs: tuple[int, ...], size: int, file_footer: pq.FileMetaData, upload_s: float, verb: str
    ) -> None:
        entries = self._entries
        rows = sum(e.batch.num_rows for e in entries)
        event = Stored(
            self.path,
            self.dataset,
            "parquet",
            seqs,
            rows,
            size,
            self._shape.schema,
            Stored.partition_of(self.path, self.dataset),
            file_footer,
            self._encode_s,
            upload_s,
            received_at=tuple(e.received_at for e in entries),
            fields=self._shape.fields,
        )
        self._ctx.stored(event, entries)  # the durability record first, then the counters and listeners
        logger.info(
            "{} {} dataset={} rows={} bytes={} seqs={}..{} batches={} in {:.3f}s",
            verb,
            self.path,
            self.dataset,
            rows,
            size,
            seqs[0],
            seqs[-1],
            len(entries),
            time.monotonic() - self._started,
        )
        self._entries = []  # the batches go now, all at once

    def _encode_or_set_aside(self) -> Encoder | None:
        """Encode the file in one piece into its destination; batches the encoder rejects are set aside
        (``self._entries`` keeps the rest). None if no batch is left."""
        try:
            return self._encode_all(self._entries)
        except pa.ArrowException as exc:
            if isinstance(exc, MemoryError):
                raise
        self._entries = self._set_aside_rejected(self._entries)
        return self._encode_all(self._entries) if self._entries else None

    def _encode_all(self, entries: list[Entry]) -> Encoder:
        """Encode these batches into a new file in one piece, retrying while the disk fails; an
        ``ArrowException`` (a batch the encoder rejects) is raised."""
        ctx = self._ctx

        def attempt() -> Encoder:
            dictionary = self._use_dictionary(entries)
            encoder = Encoder(self._shape, ctx.settings, ctx.storage.local_tmp(), dictionary)
            try:
                encoder.write([e.batch for e in entries])
            except BaseException:
                encoder.discard()
                raise
            return encoder

        return ctx.retry(f"encode {self.path}", attempt, (OSError, MemoryError))

    def _metadata(self, seqs: tuple[int, ...]) -> dict[bytes, bytes]:
        return {
            b"flight_writer.dataset": self.dataset.encode(),
            b"flight_writer.seq_min": str(seqs[0]).encode(),
            b"flight_writer.seq_max": str(seqs[-1]).encode(),
            b"flight_writer.seqs": seq_ranges(list(seqs)).encode(),
            b"flight_writer.queue": self._ctx.queue.identity.encode(),  # whose seqs these are
            b"flight_writer.version": __version__.encode(),
        }

    def _set_aside_rejected(self, entries: list[Entry]) -> list[Entry]:
        """Find the batches the encoder rejects on their own and store each as rejected. Returns the rest."""
        ctx, good = self._ctx, []
        for e in entries:
            try:
                Encoder(self._shape, ctx.settings, None).write([e.batch])
            except pa.ArrowException as exc:
                if isinstance(exc, MemoryError):
                    raise
                path = f"_failed/{e.dataset}/seq-{e.seq:012d}.arrow"
                plan = Plan(path, "failed", (e.seq,), f"{type(exc).__name__}: {exc} (batch kept at {path})")
                ctx.retry(f"record the plan for {path}", lambda p=plan, e=e: ctx.queue.plan(p, [e]), (Exception,))
                self._store_rejected(e, plan)
            else:
                good.append(e)
        return good

    def _store_rejected(self, e: Entry, plan: Plan) -> None:
        """Keep a batch the Parquet encoder rejects as an Arrow IPC file and mark it failed."""
        ctx = self._ctx
        sink = pa.BufferOutputStream()
        with pa.ipc.new_file(sink, e.batch.schema) as ipc:
            ipc.write_batch(e.batch)
        data = sink.getvalue()
        ctx.retry(
            f"store rejected batch {plan.path}",
            lambda: ctx.storage.write(plan.path, data, ARROW_TYPE),
            (Exception,),
        )
        event = Stored(
            plan.path,
            e.dataset,
            "failed",
            (e.seq,),
            e.batch.num_rows,
            data.size,
            e.batch.schema,
            {},
            None,
            error=plan.error or "rejected by the Parquet encoder",
            received_at=(e.received_at,),
        )
        ctx.stored(event, [e])  # the durability record (failed) first
        logger.error("dataset={} seq={} rejected by the Parquet encoder: {}", e.dataset, e.seq, plan.error)


def _sample(entries: list[Entry]) -> pa.Table:
    """The first ``SAMPLE_ROWS`` rows of these batches."""
    batches, rows = [], 0
    for e in entries:
        batches.append(e.batch)
        rows += e.batch.num_rows
        if rows >= SAMPLE_ROWS:
            break
    return pa.Table.from_batches(batches).slice(0, SAMPLE_ROWS)
