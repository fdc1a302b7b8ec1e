"""The committer: files storage confirmed, committed to their dataset's lake table, in batches, exactly once.

It follows the writer (``Followers.watchers``): each stored file of a dataset whose rule says ``table =
"iceberg"`` or ``"delta"`` waits in its table's pending list; a thread of its own commits a table's pending
files in one commit when the oldest has waited ``tables.commit_interval`` seconds, when ``tables.commit_files``
wait, or when a flush asked for the dataset and every file that flush sealed is stored. Never one commit per
file on the hot path: the writer's thread only appends to a list.

Exactly once: a plan is the pending files the table does not hold yet, read from the table's version the
commit is made on. Every commit is a compare-and-swap on that version (lake/tables/base.py): after a conflict
the table is read again and the plan made again, so a file someone else committed meanwhile (another write
process, a process that died after its commit landed but before it knew) is never added twice. Files a dead
process stored but never committed are found at start: every ``part-*.parquet`` in a table dataset's folder
that its table does not hold is committed then (switching a dataset from loose files to a table adopts the
files it has, the same way).

Seqs: a batch is ``committed`` once the commit holding its file landed (the queue's ``committed`` record);
batches of datasets without a table, and batches set aside as failed, are committed as soon as they are
durable, so ``committed_through`` covers every dataset. Until the start's adoption is done, seqs from before
the start are not reported committed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import opendal
from loguru import logger

from flight_writer.config import DatasetSettings, TableSettings, WriterSettings
from flight_writer.lake.datasets import Datasets
from flight_writer.lake.storage import Storage, first_line
from flight_writer.lake.tables import CommitConflict, DataFile, Table, Tables
from flight_writer.lake.tables.compact import SHARED_AGE, Intent, compact, excluded, finish, intents, recover
from flight_writer.queue.seqs import parse_ranges, seq_ranges
from flight_writer.write.stored import Stored

Committed = Callable[[tuple[int, ...]], None]
CLOSE_WAIT = 30.0  # seconds a stop waits for a commit in flight once it has given up on the rest
REPLACE_WAIT = 300.0  # seconds a replace waits for its files' stored events (they follow the durable record)
RETOLD_COMMITS = 100  # a table's last commits whose seqs a start (and each rescan) tells the queue again


@dataclass
class _Pending:
    """One table's files waiting for a commit, and what makes it due."""

    files: list[DataFile] = field(default_factory=list)
    since: float = 0.0  # monotonic time the oldest pending file arrived
    expected: set[str] = field(default_factory=set)  # sealed, not yet stored
    eager: bool = False  # a flush asked: commit once ``expected`` is empty
    retry_at: float = 0.0  # monotonic time before which a table whose commit failed is not tried again
    delay: float = 0.0  # the next wait after a failure (doubling up to tables.retry_max_delay)
    fields: object = None  # the partition fields' types (pa.Schema) for making the table


@dataclass
class TableStats:
    commits: int = 0
    files: int = 0
    conflicts: int = 0
    errors: int = 0
    compactions: int = 0  # compaction runs that committed (tables.compact_every)
    last_error: str | None = None
    last_commit_at: float | None = None  # epoch seconds
    commit_seconds: list[float] = field(default_factory=list)  # the last commits' durations (for metrics)
    lag_seconds: list[float] = field(default_factory=list)  # stored -> committed, per file


class Committer:
    """Commits stored files to lake tables; ``committed`` records the seqs each commit made safe."""

    def __init__(
        self,
        tables: dict[str, Tables],
        datasets: DatasetSettings,
        settings: TableSettings,
        storage: Storage,
        committed: Committed,
        identity: str = "",
        writer: WriterSettings | None = None,
    ) -> None:
        """``identity``: the queue's (``Feed.identity``): seqs read back from files and commits are told to
        ``committed`` only when they are that queue's."""
        self._identity = identity
        self._writer = writer or WriterSettings()  # compression and row groups of compacted files
        self._tables = tables
        self._datasets = datasets
        self._settings = settings
        self._storage = storage
        self._committed = committed
        self._cond = threading.Condition()
        self._pending: dict[str, _Pending] = {}
        self._open: dict[str, Table] = {}
        self._replacing: dict[str, Intent] = {}  # datasets in a Flight SQL replace: its marker intent
        self._blocked: set[str] = set()  # datasets the last adoption left out (a replace's marker)
        self._stopping = False
        self._abort = threading.Event()
        self._thread = threading.Thread(target=self._run, name="flight-writer-commits", daemon=True)
        self.stats: dict[str, TableStats] = {}
        self.recovered = threading.Event()
        self.on_recovered: Callable[[], None] | None = None  # called once adoption after a failed start worked
        self._stored_at: dict[str, float] = {}
        self._locks: dict[str, threading.Lock] = {}  # one commit per table at a time (loop, replace, adopt)
        self._held: dict[str, list[DataFile]] = {}  # a replace in progress: its dataset's new files wait here
        self._seen_orphans: dict[str, set[str]] = {}  # orphans at the last rescan, per dataset
        self._dropped: dict[str, set[str]] = {}  # files of replaces that failed, not stored yet: ignored

    def _lock_of(self, dataset: str) -> threading.Lock:
        with self._cond:
            return self._locks.setdefault(dataset, threading.Lock())

    def format_of(self, dataset: str) -> str:
        return self._datasets.rule_for(dataset).table

    def commits(self, dataset: str) -> bool:
        return self.format_of(dataset) != "none" and bool(self._tables)

    # -- what the writer tells it (Followers) ----------------------------------------------------------
    def sealed(self, path: str, dataset: str) -> None:
        if not self.commits(dataset):
            return
        with self._cond:
            self._pending.setdefault(dataset, _Pending()).expected.add(path)

    def flush_requested(self, datasets: list[str | None]) -> None:
        with self._cond:
            every = None in datasets
            for name, pending in self._pending.items():
                if every or name in datasets:
                    pending.eager = bool(pending.files or pending.expected)  # nothing to hurry: stays calm
            self._cond.notify_all()

    def stored(self, event: Stored) -> None:
        if event.kind != "parquet" or not self.commits(event.dataset):
            return  # committed as it was made durable (Followers told the queue)
        path = event.path[len(event.dataset) + 1 :]
        data_file = DataFile(path, event.nbytes, event.rows, event.schema, event.partition, event.footer, event.seqs)
        with self._cond:
            pending = self._pending.setdefault(event.dataset, _Pending())
            dropped = self._dropped.get(event.dataset)
            if dropped is not None and path in dropped:  # a file of a replace that failed: the door deletes it
                dropped.discard(path)
                pending.expected.discard(event.path)
                return
            held = self._held.get(event.dataset)
            if held is not None:  # a replace of the dataset is in progress: its commit takes these
                held.append(data_file)
                pending.expected.discard(event.path)
                if pending.fields is None:
                    pending.fields = event.fields
                self._cond.notify_all()
                return
            first = not pending.files
            if first:
                pending.since = time.monotonic()
            pending.files.append(data_file)
            pending.expected.discard(event.path)
            if pending.fields is None:
                pending.fields = event.fields
            self._stored_at[path] = time.time()
            # the first file starts the table's interval: the loop may be waiting without one
            if first or len(pending.files) >= self._settings.commit_files or (pending.eager and not pending.expected):
                self._cond.notify_all()

    def table_stats(self) -> dict[str, dict[str, object]]:
        """Per table: its format, commits and files committed since start, files pending, conflicts and errors,
        the last error and commit time, and commit seconds / stored-to-committed lag (p50, p99)."""
        with self._cond:
            pending = {name: len(p.files) for name, p in self._pending.items()}
        found: dict[str, dict[str, object]] = {}
        for name in sorted(set(list(self.stats)) | {n for n, k in pending.items() if k}):
            st = self.stats.get(name, TableStats())
            found[name] = {
                "format": self.format_of(name),
                "commits": st.commits,
                "files_committed": st.files,
                "pending_files": pending.get(name, 0),
                "conflicts": st.conflicts,
                "errors": st.errors,
                "compactions": st.compactions,
                "last_error": st.last_error,
                "last_commit_at": st.last_commit_at,
                "commit_s_p50": _quantile(st.commit_seconds, 0.5),
                "commit_s_p99": _quantile(st.commit_seconds, 0.99),
                "lag_s_p99": _quantile(st.lag_seconds, 0.99),
            }
        return found

    # -- lifecycle -------------------------------------------------------------------------------------
    def start(self) -> Committer:
        self._thread.start()
        return self

    def close(self, timeout: float | None = None) -> None:
        """Commit what is pending (retrying up to ``timeout`` s), then stop."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._abort.set()
            with self._cond:
                self._cond.notify_all()
            # a catalog call in flight is not interruptible: wait for it a bounded time, then leave it to the
            # process's exit (the thread is a daemon; what it did not commit is adopted at the next start)
            self._thread.join(CLOSE_WAIT)
            if self._thread.is_alive():
                logger.warning("the table committer is still in a catalog call after {} s: leaving it", CLOSE_WAIT)
        for tables in self._tables.values():
            tables.close()

    def abort(self) -> None:
        self._abort.set()
        with self._cond:
            self._cond.notify_all()

    def sync(self) -> None:
        """Commit every table's pending files now (for a committer whose thread is not running)."""
        if not self.recovered.is_set():
            self.adopt()
        for dataset in list(self._pending):
            self._commit(dataset)

    # -- the loop --------------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self.adopt()
            next_scan = time.monotonic() + self._settings.adopt_interval
            while True:
                with self._cond:
                    due = self._due()
                    # stopping: everything pending is due, but a table whose commit failed waits its turn
                    while not due and (self._due(every=True) or not self._stopping) and not self._abort.is_set():
                        if not self._stopping and time.monotonic() >= next_scan:
                            break
                        self._cond.wait(min(self._wait(), max(0.0, next_scan - time.monotonic())))
                        due = self._due()
                    stopping = self._stopping
                for dataset in due:
                    if self._abort.is_set():
                        break
                    try:
                        self._commit(dataset)
                    except Exception:  # a bug: the other tables go on, this one is tried again later
                        logger.opt(exception=True).error("committing to table {!r} failed", dataset)
                if stopping and self._abort.is_set():
                    break
                if not stopping and time.monotonic() >= next_scan:
                    self._renew_markers()
                    self._settle_start()
                    self.rescan()
                    next_scan = time.monotonic() + self._settings.adopt_interval
                if stopping and (not self._due(every=True) or self._abort.is_set()):
                    break
        except Exception:
            logger.exception("the table committer crashed: stored files wait for a restart to be committed")
            raise

    def _due(self, every: bool = False) -> list[str]:
        now = time.monotonic()
        interval = self._settings.commit_interval
        return [
            name
            for name, p in self._pending.items()
            if p.files
            and (every or p.retry_at <= now)
            and (
                every
                or p.delay > 0  # its commit failed: it was due, it is again at retry_at
                or self._stopping
                or len(p.files) >= self._settings.commit_files
                or now - p.since >= interval
                or (p.eager and not p.expected)
            )
        ]

    def _wait(self) -> float:
        starts = [
            p.retry_at if p.delay > 0 else p.since + self._settings.commit_interval
            for p in self._pending.values()
            if p.files
        ]
        if not starts:
            return 3600.0
        return max(0.0, min(starts) - time.monotonic())

    # -- Flight SQL replace: one overwrite commit ------------------------------------------------------
    def begin_replace(self, dataset: str) -> None:
        """From now on the dataset's stored files wait for ``finish_replace``; what is pending is committed
        first (it belongs to the data being replaced)."""
        self._commit(dataset)
        # the replace's files are stored before its commit: no process may adopt them meanwhile
        marker = Intent(uuid.uuid4().hex[:12], dataset, (), "", replacing=True)
        self._storage.write(marker.path, marker.to_json(), "application/json")
        with self._cond:
            self._held[dataset] = []
            self._replacing[dataset] = marker

    def end_replace(self, dataset: str) -> None:
        """The replace is over (committed, or given up and its files deleted): its marker goes."""
        with self._cond:
            marker = self._replacing.pop(dataset, None)
        if marker is not None:
            try:
                self._storage.delete(marker.path)
            except Exception as exc:  # settled by a recovery after SHARED_AGE
                logger.warning("could not delete the replace marker {}: {}", marker.path, first_line(exc))

    def _renew_markers(self) -> None:
        """A replace longer than SHARED_AGE must not look like a crash's to other processes: its marker is
        written again with the time of now, every adopt_interval."""
        with self._cond:
            markers = list(self._replacing.items())
        for dataset, marker in markers:
            renewed = dataclasses.replace(marker, created_at=time.time())
            try:
                self._storage.write(renewed.path, renewed.to_json(), "application/json")
            except Exception as exc:
                logger.warning("could not renew the replace marker {}: {}", marker.path, first_line(exc))
                continue
            with self._cond:
                ended = self._replacing.get(dataset) is not marker
                if not ended:
                    self._replacing[dataset] = renewed
            if ended:  # ended meanwhile: what was just written goes too
                with contextlib.suppress(Exception):
                    self._storage.delete(renewed.path)

    def finish_replace(
        self, dataset: str, files: list[str], seqs: list[int], ok: bool, timeout: float | None = REPLACE_WAIT
    ) -> bool:
        """``ok``: one commit whose table holds only the files stored since ``begin_replace`` (every file it
        held before is removed from the table and deleted). Waits until the replace's ``files`` (storage
        paths, as the durable reply names them) are here: the durability record comes before the file's
        event. Not ``ok``, or if ``timeout`` passes first (False then, the table unchanged), or if the commit
        fails (raised): the replace's own files (``files``, ``seqs``) are dropped (the door deletes them),
        the others go on to a normal commit."""
        prefix = dataset + "/"
        wanted = {p[len(prefix) :] for p in files if p.startswith(prefix)}
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while ok and not wanted <= {f.path for f in self._held.get(dataset, ())}:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    ok = False
                    break
                self._cond.wait(remaining)
            held = self._held.pop(dataset, [])
            fields = self._pending.get(dataset, _Pending()).fields
        own = set(seqs)
        mine = [f for f in held if f.path in wanted or own & set(f.seqs)]
        if not ok:
            self._drop_replace(dataset, held, mine, wanted, own)
            return False
        if not held and self._tables[self.format_of(dataset)].open(dataset, None) is None:
            return True  # no table and nothing new: nothing to replace
        try:
            with self._lock_of(dataset):
                while True:
                    table = self._table(dataset, held[0] if held else None, fields)
                    removed = sorted(table.paths())
                    # the files replaced would be adopted again if a crash came between the commit and their
                    # deletion: an intent keeps them out of adoption until settled (lake/tables/compact.py)
                    intent = Intent(uuid.uuid4().hex[:12], dataset, tuple(removed), "")
                    self._storage.write(intent.path, intent.to_json(), "application/json")
                    try:
                        table.replace(removed, held, self._seqs_note(held), data_change=True)
                    except CommitConflict:
                        self._storage.delete(intent.path)
                        continue
                    finish(self._storage, table, intent)  # the replaced files and the intent go
                    break
        except Exception:
            self._open.pop(dataset, None)
            self._drop_replace(dataset, held, mine, wanted, own)
            raise
        self._tell(tuple(s for f in held for s in f.seqs))
        logger.info("replaced table {!r} with {} files", dataset, len(held))
        return True

    def _drop_replace(
        self, dataset: str, held: list[DataFile], mine: list[DataFile], wanted: set[str], own: set[int]
    ) -> None:
        """A replace that did not commit: its own files go (the door deletes them; ones stored later are
        ignored), what other streams stored meanwhile goes on to a normal commit. The replace's seqs are
        told as settled, so that no wait for ``committed_through`` hangs on data the client was told failed."""
        rest = [f for f in held if f not in mine]
        with self._cond:
            pending = self._pending.setdefault(dataset, _Pending())
            pending.files[:0] = rest
            if rest:
                pending.since = time.monotonic()
            self._dropped.setdefault(dataset, set()).update(wanted - {f.path for f in mine})
            self._cond.notify_all()
        self._tell(tuple(sorted(own | {s for f in mine for s in f.seqs})))

    def _seqs_note(self, files: list[DataFile]) -> str:
        """What a commit's metadata says of the seqs its files hold: the queue's identity and their ranges."""
        seqs = sorted(s for f in files for s in f.seqs)
        return f"{self._identity} {seq_ranges(seqs)}" if self._identity and seqs else ""

    def _commit(self, dataset: str, patient: bool = True) -> None:
        with self._lock_of(dataset):
            self._commit_locked(dataset, patient)

    def _commit_locked(self, dataset: str, patient: bool = True) -> None:
        """Commit the dataset's pending files, retrying until they are in the table (or the abort)."""
        with self._cond:
            pending = self._pending.get(dataset)
            if pending is None or not pending.files:
                return
            files, pending.files = pending.files, []
            if not pending.expected:
                pending.eager = False
            fields = pending.fields
        stats = self.stats.setdefault(dataset, TableStats())
        gone: list[DataFile] = []
        while True:
            try:
                started = time.monotonic()
                added = self._commit_once(dataset, files, fields)
                break
            except CommitConflict as exc:
                stats.conflicts += 1  # the table was read again: plan again at once
                logger.debug("{}: planning again", exc)
                # another process may have committed these files, then compacted them away (and deleted
                # them): a file storage no longer has is in the table by its rows already
                kept = [f for f in files if self._still_stored(dataset, f)]
                gone += [f for f in files if f not in kept]
                files = kept
            except Exception as exc:
                stats.errors += 1
                stats.last_error = first_line(exc)
                self._open.pop(dataset, None)
                with self._cond:  # the files wait for a later try; other tables commit meanwhile
                    pending = self._pending.setdefault(dataset, _Pending())
                    pending.files[:0] = files
                    pending.delay = min(
                        max(pending.delay * 2, self._settings.retry_initial_delay), self._settings.retry_max_delay
                    )
                    pending.retry_at = time.monotonic() + pending.delay
                if not patient:  # one try (at start): the caller hears why
                    raise
                logger.warning(
                    "commit to table {!r} failed, retrying in {:.1f}s: {}", dataset, pending.delay, first_line(exc)
                )
                if self._abort.is_set():
                    logger.error("gave up committing {} files to table {!r}", len(files), dataset)
                return
        now = time.time()
        stats.commit_seconds = [*stats.commit_seconds[-999:], time.monotonic() - started]
        lags = [now - at for f in files if (at := self._stored_at.pop(f.path, None)) is not None]
        stats.lag_seconds = [*stats.lag_seconds, *lags][-1000:]  # adopted files have no stored time
        if added:
            stats.commits += 1
            stats.files += added
            stats.last_commit_at = now
            logger.info(
                "committed {} files to table {!r} ({}) in {:.3f}s",
                added,
                dataset,
                self.format_of(dataset),
                stats.commit_seconds[-1],
            )
        with self._cond:
            if pending := self._pending.get(dataset):
                pending.delay, pending.retry_at = 0.0, 0.0
        self._tell(tuple(s for f in [*files, *gone] for s in f.seqs))
        every = self._settings.maintain_every
        if added and every and stats.commits % every == 0:
            self._maintain(dataset)
        every = self._settings.compact_every
        if added and every and stats.commits % every == 0:
            self._compact(dataset)

    def _tell(self, seqs: tuple[int, ...]) -> None:
        """The committed record, retried while it fails (NATS away): the commit has landed, the waiters of
        these seqs must hear of it; a restart would retell it from the table (``_retell``)."""
        delay = self._settings.retry_initial_delay
        while seqs:
            try:
                self._committed(seqs)
                return
            except Exception as exc:
                logger.warning("recording committed seqs failed, retrying in {:.1f}s: {}", delay, first_line(exc))
                if self._abort.wait(delay):
                    return
                delay = min(delay * 2, self._settings.retry_max_delay)

    def _still_stored(self, dataset: str, f: DataFile) -> bool:
        try:
            self._storage.operator.stat(f"{dataset}/{f.path}")
            return True
        except Exception as exc:
            if not isinstance(exc, opendal.exceptions.NotFound):
                return True  # cannot tell: keep it, the commit's own errors will say
            logger.warning("{}/{} is gone from storage (compacted by another process): not committed", dataset, f.path)
            return False

    def _commit_once(self, dataset: str, files: list[DataFile], fields: object) -> int:
        if not files:
            return 0
        table = self._table(dataset, files[0], fields)
        known = table.paths()
        plan = [f for f in files if f.path not in known]
        plan = list({f.path: f for f in plan}.values())
        if plan:
            table.append(plan, self._seqs_note(plan))
        return len(plan)

    def _table(self, dataset: str, first: DataFile | None, fields: object = None) -> Table:
        table = self._open.get(dataset)
        if table is None:
            made = self._tables[self.format_of(dataset)].open(
                dataset,
                first.schema if first is not None else None,
                fields,  # type: ignore[call-arg]
            )
            if made is None:
                raise LookupError(f"dataset {dataset!r} has no table")
            table = self._open[dataset] = made
        return table

    def _compact(self, dataset: str) -> None:
        """Rewrite the table's small files into larger ones (``tables.compact_every``): replace commits, on
        this thread, between this table's commits (lake/tables/compact.py)."""
        try:
            done = compact(self._storage, self._open[dataset], self._writer, self._settings.compact_target_bytes)
            if done.get("commits"):
                self.stats[dataset].compactions += 1
                logger.info("compacted table {!r}: {}", dataset, done)
        except Exception as exc:
            logger.warning("compaction of table {!r} failed (commits go on; its intent settles it): {}", dataset, exc)

    def _maintain(self, dataset: str) -> None:
        try:
            done = self._open[dataset].maintain(self._settings.keep_snapshots)
            logger.info("maintained table {!r}: {}", dataset, done)
        except Exception as exc:
            logger.warning("maintenance of table {!r} failed (commits go on): {}", dataset, exc)

    # -- after a crash ---------------------------------------------------------------------------------
    def adopt(self, patient: bool = True) -> int:
        """Commit the files table datasets hold that their tables do not (stored by a process that died
        before its commit). Returns how many. Runs once, before the first commit. ``patient = False`` (a
        service's start): one try, whose error is raised (a catalog that cannot be reached stops the start,
        as storage does); the loop tries again later otherwise."""
        if self.recovered.is_set():
            return 0
        if not self._tables:
            self.recovered.set()
            return 0
        adopted = 0
        self._blocked.clear()
        try:
            for dataset in Datasets(self._storage).names():
                if self.format_of(dataset) == "none":
                    continue
                table = self._open.get(dataset) or self._tables[self.format_of(dataset)].open(dataset, None)
                if table is not None:  # first settle what a compaction that died left (lake/tables/compact.py)
                    recover(self._storage, table, SHARED_AGE)
                    self._retell(table)
                adopted += self._adopt(dataset, patient=patient)
        except Exception:
            if not patient:
                raise
            logger.opt(exception=True).error("adopting uncommitted files failed; the next look tries again")
            self.recovered.set()
            return adopted
        self.recovered.set()
        if self._blocked:
            logger.warning(
                "datasets {} hold a replace's marker: their uncommitted files wait for it (or for its age "
                "to pass {:.0f} s, if a crash left it)",
                sorted(self._blocked),
                SHARED_AGE,
            )
        else:
            self._settled()
        return adopted

    @property
    def incomplete(self) -> bool:
        """The last adoption left datasets out: a replace's marker (here before a crash, or elsewhere) held
        their uncommitted files back."""
        return bool(self._blocked)

    def _settled(self) -> None:
        """What a crash left is adopted: the seqs from before the start may count as committed again."""
        release, self.on_recovered = self.on_recovered, None
        if release is not None:
            release()

    def _settle_start(self) -> None:
        """The start's adoption failed: try it again (one try; the next look tries again)."""
        if self.on_recovered is None:
            return
        try:
            self.recovered.clear()
            self.adopt(patient=False)
        except Exception as exc:
            self.recovered.set()
            logger.warning("adopting what a crash left failed again; the next look tries again: {}", first_line(exc))

    def rescan(self) -> int:
        """Adopt files that were orphans (stored, in no table, pending nowhere here) at the last scan too: a
        write process that died is not restarted, and no other starts (``tables.adopt_interval``). Files a
        live process is about to commit are orphans for a moment only; if both commit one, the
        compare-and-swap lets one commit land."""
        adopted = 0
        try:
            names = Datasets(self._storage).names()
        except Exception:
            logger.opt(exception=True).warning("looking for uncommitted files failed; trying again later")
            return 0
        for dataset in names:
            if not self.commits(dataset):
                continue
            try:  # one dataset's trouble leaves the others' looks alone
                with self._lock_of(dataset):  # the table object is this thread's alone meanwhile
                    table = self._open.get(dataset)
                    if table is not None:
                        table.refresh()
                    elif intents(self._storage, dataset):  # a dead compaction's or replace's, maybe
                        table = self._tables[self.format_of(dataset)].open(dataset, None)
                    if table is not None:
                        recover(self._storage, table, SHARED_AGE)  # a compaction that died an hour ago
                        self._retell(table)
                    orphans = set(self._orphans(dataset))
                    with self._cond:
                        local = self._pending.get(dataset, _Pending())
                        orphans -= {f.path for f in local.files} | {f.path for f in self._held.get(dataset, ())}
                    seen, self._seen_orphans[dataset] = self._seen_orphans.get(dataset, set()), set()
                    again = sorted(orphans & seen)
                    self._seen_orphans[dataset] = orphans - seen
                adopted += self._adopt(dataset, again)
            except Exception:
                logger.opt(exception=True).warning(
                    "looking for uncommitted files of {!r} failed; trying again later", dataset
                )
        return adopted

    def _retell(self, table: Table) -> None:
        """Tell the queue again which seqs the table's last commits hold: a process that died between a
        commit and its committed record left them durable only (repeating a record changes nothing)."""
        if not self._identity:
            return
        told = [t.partition(" ") for t in table.recent_seqs(RETOLD_COMMITS)]
        seqs = tuple(s for who, _, text in told if who == self._identity for s in parse_ranges(text))
        if seqs:
            self._tell(seqs)

    def _orphans(self, dataset: str) -> list[str]:
        """The dataset's data files (relative paths) its table does not hold."""
        prefix = dataset + "/"
        names = [
            p[len(prefix) :]
            for p in Datasets(self._storage).objects(dataset)
            if p.rsplit("/", 1)[-1].startswith("part-")
        ]
        if not names:
            return []
        table = self._open.get(dataset) or self._tables[self.format_of(dataset)].open(dataset, None)
        known = table.paths() if table is not None else set()
        claimed = excluded(self._storage, dataset)  # a compaction's inputs and output (after the listing)
        if claimed is None:  # a replace under way, here or in another process: its files wait for it
            self._blocked.add(dataset)
            return []
        return [n for n in names if n not in known and n not in claimed]

    def _adopt(self, dataset: str, orphans: list[str] | None = None, patient: bool = True) -> int:
        if orphans is None:
            orphans = self._orphans(dataset)
        files = [f for n in orphans if (f := self._describe(dataset, n)) is not None]
        if not files:
            return 0
        logger.info("adopting {} stored but uncommitted files into table {!r}", len(files), dataset)
        with self._cond:
            pending = self._pending.setdefault(dataset, _Pending())
            pending.files[:0] = files
            pending.since = time.monotonic() - self._settings.commit_interval
        self._commit(dataset, patient)
        return len(files)

    def _describe(self, dataset: str, name: str) -> DataFile | None:
        path = f"{dataset}/{name}"
        try:
            found = self._storage.parquet_footer(path)  # the tail only, not the whole file
            if found is None:
                raise ValueError("no Parquet footer at its end")
            size, footer = found
        except Exception as exc:
            logger.warning("{} is not a readable Parquet file, not adopted: {}", path, first_line(exc))
            return None
        meta = footer.metadata or {}
        ours = bool(self._identity) and meta.get(b"flight_writer.queue", b"").decode() == self._identity
        seqs = tuple(parse_ranges(meta.get(b"flight_writer.seqs", b"").decode())) if ours else ()
        schema = footer.schema.to_arrow_schema()
        return DataFile(name, size, footer.num_rows, schema, Stored.partition_of(path, dataset), footer, seqs)


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 4)
