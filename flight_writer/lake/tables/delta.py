"""Delta tables through delta-rs (the ``deltalake`` package): no catalog, the log is ``_delta_log/`` in the
dataset's folder.

Files are added as they are (add actions; statistics from each file's footer: row count, and per top-level
column minimum, maximum and null count where the footer has them). Partition columns live in the log, never
in the files: our Hive layout exactly. Every commit carries an app transaction (``flight-writer``, our commit
count): two commits from the same version cannot both land, the loser comes back as :class:`CommitConflict`
and plans again.

A commit is written here, not by delta-rs: the next version's JSON file in ``_delta_log/``, created only if
that name is free (a hard link on a local disk, a conditional PUT on S3: the same put-if-absent delta-rs uses,
so both can write one table). delta-rs's own commit builds the whole table state again after every commit:
measured on deltalake 1.6.6, a one-file commit took 11 ms on a new table and 32 ms at 2,000 files, growing
with every file the table holds. Written here a commit costs its own actions; what others committed is read
from their JSON files (``refresh``). delta-rs still creates tables, adds columns (a metaData commit before the
data's), checkpoints (every ``delta.checkpointInterval`` versions, 100 in our tables, and in ``maintain``),
reads and vacuums. A table whose protocol asks more of a writer than version 2, or than version 7 with
only the features in WRITER_FEATURES_OK (delta-rs makes a table with a time-of-day-less timestamp column
version 7 with ``timestampNtz``), or whose columns carry invariants, is refused with a TableError naming
why: files are added as they are, and no row of them is checked (a CHECK constraint, generated or mapped
columns, row tracking: each asks for that).

Checkpoints are Parquet files in ``_delta_log/``: a glob over the dataset's folder must say
``part-*.parquet`` (as the documentation's do) to read data files only.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import time
from typing import Any
from urllib.parse import quote, unquote

import opendal
import pyarrow as pa
from loguru import logger

from flight_writer._version import __version__
from flight_writer.config import DatasetSettings, TableSettings
from flight_writer.lake.storage import Storage
from flight_writer.lake.tables.base import (
    APP_ID,
    COMMITS_KEY,
    FILES_KEY,
    SEQS_KEY,
    CommitConflict,
    DataFile,
    Table,
    TableError,
    Tables,
)
from flight_writer.lake.tables.mapping import PartitionColumn, partition_columns, table_schema

CHECKPOINT_INTERVAL = 100
CONFIGURATION = {"delta.checkpointInterval": str(CHECKPOINT_INTERVAL)}
#: what delta-rs leaves as it is when it writes a data file's path into the log (measured on deltalake 1.6.6
#: with every printable ASCII character); the rest is percent-encoded, as the protocol's URI paths are
PATH_SAFE = "/=:+,;@&$!'()"


class DeltaTables(Tables):
    format = "delta"

    def __init__(
        self,
        settings: TableSettings,
        datasets: DatasetSettings,
        base: str,
        options: dict[str, str],
        storage: Storage,
    ) -> None:
        self._settings = settings
        self._datasets = datasets
        self._base = base.rstrip("/")
        self._options = options  # delta-rs storage options (endpoint, credentials)
        self._storage = storage  # the same root through OpenDAL: the log's files are read and written with it
        # with maintenance on its schedule the checkpoints are made there; else every CHECKPOINT_INTERVAL versions
        self._checkpoint_every = 0 if settings.maintain_every else CHECKPOINT_INTERVAL

    def open(self, dataset: str, schema: pa.Schema | None, fields: pa.Schema | None = None) -> Table | None:
        from deltalake import DeltaTable
        from deltalake.exceptions import TableNotFoundError

        uri = f"{self._base}/{dataset}"
        partitions = partition_columns(self._datasets.rule_for(dataset), fields, "delta")
        try:
            return DeltaTableOf(
                dataset,
                DeltaTable(uri, storage_options=self._options),
                partitions,
                self._storage,
                self._checkpoint_every,
            )
        except TableNotFoundError:
            if schema is None:
                return None
        from deltalake import CommitProperties
        from deltalake.transaction import create_table_with_add_actions

        try:
            create_table_with_add_actions(
                uri,
                _delta_schema(table_schema(schema, partitions)),
                [],
                mode="error",
                partition_by=[p.name for p in partitions],
                name=dataset.replace("/", "."),
                configuration=CONFIGURATION,
                storage_options=self._options,
                commit_properties=CommitProperties(max_commit_retries=0),
            )
        except Exception as exc:  # another process made it first: open that one
            if "exist" not in str(exc).lower():
                raise TableError(f"creating table {dataset!r} failed: {exc}") from exc
        return DeltaTableOf(
            dataset, DeltaTable(uri, storage_options=self._options), partitions, self._storage, self._checkpoint_every
        )


def _delta_schema(schema: pa.Schema) -> Any:
    from deltalake import Schema

    return Schema.from_arrow(schema)


class DeltaTableOf(Table):
    """One Delta table (named so beside delta-rs's own ``DeltaTable``).

    ``_version`` is the version this object knows; ``_paths`` and ``_commits`` are as of it (both known or
    both None). delta-rs's handle may lag behind it (our own commits do not move it) and is brought up to
    date where delta-rs itself reads the table."""

    format = "delta"

    def __init__(
        self,
        dataset: str,
        table: Any,
        partitions: list[PartitionColumn],
        storage: Storage,
        checkpoint_every: int = CHECKPOINT_INTERVAL,
    ) -> None:
        self.dataset = dataset
        self._checkpoint_every = checkpoint_every  # 0: maintain() makes them (the committer's schedule)
        self._table = table
        self._partitions = partitions
        self._version = table.version()
        self._paths: set[str] | None = None
        self._raw: dict[str, str] = {}  # a path in _paths -> as the log spells it (another engine may encode
        # differently from us: a remove must name the path as its add did)
        self._commits: int | None = None
        self._log = storage  # the table's root through OpenDAL: log files read (and, if _own, written) with it
        self._own = _plain_protocol(table)  # commits may be written here (else refused)

    def paths(self) -> set[str]:
        if self._paths is None:
            self._load()
        assert self._paths is not None
        return self._paths

    def commits(self) -> int:
        if self._commits is None:
            self._load()
        assert self._commits is not None
        return self._commits

    def _load(self) -> None:
        """The files and our commit count at ``_version``, from delta-rs (the whole state: once, not per
        commit). The version stays: what was planned on it must still conflict with what came after."""
        if self._table.version() != self._version:
            self._table.load_as_version(self._version)
        actions = self._table.get_add_actions(flatten=False)
        raw = actions.column("path").to_pylist() if actions.num_rows else []
        self._raw = {unquote(p): p for p in raw}  # the log holds them percent-encoded
        self._paths = set(self._raw)
        self._commits = self._table.transaction_version(APP_ID) or 0
        self._own = _plain_protocol(self._table)

    def refresh(self) -> None:
        if not self._own:
            self._reload()
            return
        try:
            self._catch_up()
        except Exception:
            self._paths = self._commits = None  # read it whole next time
            raise

    def _reload(self) -> None:
        """The current version through delta-rs (the whole state, read again at the next question)."""
        self._table.update_incremental()
        self._version = self._table.version()
        self._paths = self._commits = None

    def _catch_up(self) -> None:
        """Read the versions after ``_version`` that others wrote, one JSON file each, until there is none.
        A version whose log file is gone (cleaned up after a checkpoint: this object was idle longer than
        the log's retention) or that asks more of a writer than this module does: read through delta-rs."""
        while self._own:
            try:
                data = self._log.read(self._log_path(self._version + 1))
            except opendal.exceptions.NotFound:
                if self._checkpointed_after(self._version):
                    self._reload()
                return
            for line in data.splitlines():
                if line.strip():
                    self._apply(json.loads(line))
            self._version += 1
        self._reload()

    def _checkpointed_after(self, version: int) -> bool:
        """Whether the table's newest checkpoint is past ``version`` (the log files before it may be gone)."""
        try:
            last = json.loads(self._log.read(f"{self.dataset}/_delta_log/_last_checkpoint"))
        except opendal.exceptions.NotFound:
            return False
        return int(last.get("version", -1)) > version

    def _apply(self, action: dict[str, Any]) -> None:
        if "protocol" in action and not _writer_version_ok(action["protocol"]):
            self._own = False  # a newer writer protocol: no more commits from here
        elif "metaData" in action and "delta.invariants" in action["metaData"].get("schemaString", ""):
            self._own = False  # column invariants: rows would have to be checked
        if self._paths is None:
            return  # read whole next time anyway
        if "add" in action:
            raw = action["add"]["path"]
            self._paths.add(unquote(raw))
            self._raw[unquote(raw)] = raw
        elif "remove" in action:
            path = unquote(action["remove"]["path"])
            self._paths.discard(path)
            self._raw.pop(path, None)
        elif "txn" in action and action["txn"].get("appId") == APP_ID:
            self._commits = int(action["txn"]["version"])

    def _log_path(self, version: int) -> str:
        return f"{self.dataset}/_delta_log/{version:020d}.json"

    def referenced(self) -> set[str]:
        """The current version's files (removed ones are Delta's to vacuum: ``maintain`` leaves them)."""
        return set(self.paths())

    def scan(self) -> pa.Table:
        self._table.update_incremental()
        return self._table.to_pyarrow_table()

    def append(self, files: list[DataFile], seqs: str = "") -> None:
        self._commit([], files, seqs)

    def recent_seqs(self, commits: int) -> list[str]:
        found = []
        for info in self._recent_commit_infos(commits):
            text = info.get(SEQS_KEY)
            if isinstance(text, str) and text:
                found.append(text)
        return found

    def _recent_commit_infos(self, commits: int) -> list[dict[str, Any]]:
        if not self._own:
            self._table.update_incremental()
            return list(self._table.history(commits))
        self.refresh()
        infos = []
        for version in range(self._version, max(-1, self._version - commits), -1):
            try:
                data = self._log.read(self._log_path(version))
            except opendal.exceptions.NotFound:
                break  # older log entries are gone (cleaned up after a checkpoint)
            for line in data.splitlines():
                if line.startswith(b'{"commitInfo"'):
                    infos.append(json.loads(line)["commitInfo"])
        return infos

    def replace(self, removed: list[str], added: list[DataFile], seqs: str = "", data_change: bool = False) -> None:
        self._commit(removed, added, seqs, data_change)

    def _commit(self, removed: list[str], added: list[DataFile], seqs: str = "", data_change: bool = True) -> None:
        count = self.commits() + 1
        self._widen(added)
        # a compaction moves rows between files (dataChange false: streaming readers skip it); an append or a
        # Flight SQL replace changes the data
        change = data_change or not removed
        custom = {COMMITS_KEY: str(count), FILES_KEY: str(len(added)), **({SEQS_KEY: seqs} if seqs else {})}
        if not self._own:
            raise TableError(
                f"table {self.dataset!r} asks more of a writer than flight-writer does (a writer protocol above "
                "2, column invariants or CHECK constraints: files are added as they are, never checked row by "
                "row); commit to it with the engine that made it so, or give the dataset a table of its own"
            )
        now = int(time.time() * 1000)
        operation = _APPEND if not removed else _OVERWRITE if change else _OPTIMIZE
        info = {"timestamp": now, **operation, "engineInfo": ENGINE, "clientVersion": ENGINE, **custom}
        lines = [{"commitInfo": info}, {"txn": {"appId": APP_ID, "version": count, "lastUpdated": now}}]
        raw = [self._raw.get(p) or quote(p, PATH_SAFE) for p in removed]
        lines += [{"remove": {"path": r, "deletionTimestamp": now, "dataChange": change}} for r in raw]
        lines += [
            {
                "add": {
                    "path": quote(f.path, PATH_SAFE),
                    "partitionValues": self._partition_values(f),
                    "size": f.size,
                    "modificationTime": now,
                    "dataChange": change,
                    "stats": _stats(f),
                }
            }
            for f in added
        ]
        data = "".join(json.dumps(line, separators=(",", ":")) + "\n" for line in lines).encode()
        version = self._version + 1
        try:
            self._log.create(self._log_path(version), data)
        except FileExistsError:
            self.refresh()
            raise CommitConflict(f"table {self.dataset!r} moved on: version {version} exists") from None
        except Exception as exc:  # it may have landed (a lost reply): refresh tells, and the plan is made again
            with contextlib.suppress(Exception):
                self.refresh()
            raise TableError(f"commit to table {self.dataset!r} failed: {type(exc).__name__}: {exc}") from exc
        self._version = version
        self._commits = count
        if self._paths is not None:
            self._paths.difference_update(removed)
            self._paths.update(f.path for f in added)
            for p in removed:
                self._raw.pop(p, None)
            self._raw.update((f.path, quote(f.path, PATH_SAFE)) for f in added)
        if self._checkpoint_every and version % self._checkpoint_every == 0:
            self._checkpoint()

    def _checkpoint(self) -> None:
        """A checkpoint at the current version (delta-rs makes one after its own commits every 100 versions):
        readers replay at most that many JSON files. A failure costs only the next reader's time."""
        try:
            self._table.update_incremental()
            self._table.create_checkpoint()
        except Exception as exc:
            logger.warning("checkpoint of table {!r} failed: {}", self.dataset, exc)

    def _widen(self, files: list[DataFile]) -> None:
        """Add the columns the files bring that the table lacks (by name): a commit of its own, through
        delta-rs, before the data's (a plan made on an older version than the handle's is made again)."""
        from deltalake.exceptions import CommitFailedError

        if not self._missing(files):
            return
        self._table.update_incremental()  # the handle lags behind our own commits
        if self._table.version() != self._version:  # others committed: plan again on what they did
            self.refresh()
            raise CommitConflict(f"table {self.dataset!r} moved on before adding columns")
        extra = self._missing(files)
        if not extra:
            return
        before = self._table.version()
        try:
            self._table.alter.add_columns(list(_delta_schema(pa.schema(extra)).fields))
        except CommitFailedError as exc:
            self.refresh()
            raise CommitConflict(f"table {self.dataset!r} moved on while adding columns: {exc}") from None
        self._table.update_incremental()
        if self._table.version() != before + 1:  # the handle jumped over others' commits: plan again from here
            self._version = self._table.version()
            self._paths = self._commits = None
            raise CommitConflict(f"table {self.dataset!r} moved on while adding columns")
        self._version = before + 1

    def _missing(self, files: list[DataFile]) -> list[pa.Field]:
        known = set(pa.schema(self._table.schema().to_arrow()).names)
        extra: list[pa.Field] = []
        for f in files:
            for field in table_schema(f.schema, []):
                if field.name not in known:
                    extra.append(field)
                    known.add(field.name)
        return extra

    def _partition_values(self, f: DataFile) -> dict[str, str | None]:
        return {p.name: f.partition.get(p.name) for p in self._partitions}

    def maintain(self, keep: int) -> dict[str, int]:
        """A checkpoint at the current version, then the log entries before it that are older than the
        table's ``delta.logRetentionDuration`` (30 days unless set) deleted. Delta keeps its log by age, not
        by count: ``keep`` does not apply. Commits stay flat anyway: a commit writes its own actions only,
        and readers replay the log from the newest checkpoint on (one here every ``tables.maintain_every``
        commits, or, with that 0, one by the commit every CHECKPOINT_INTERVAL versions)."""
        self._table.update_incremental()
        version = self._table.version()
        self._table.create_checkpoint()
        self._table.cleanup_metadata()
        return {"checkpoint_version": version}

    def unreferenced(self, older_than: float) -> set[str]:
        """delta-rs's full vacuum, as a dry run: files no version within the retention needs (removed before
        it, or never in the log and last modified before it). The retention is whole hours: ``older_than``
        seconds rounded up. Nothing is deleted here; the caller keeps to its own dataset's files (the full
        vacuum lists a nested dataset's files too)."""
        self._table.update_incremental()
        found = self._table.vacuum(
            retention_hours=math.ceil(max(older_than, 0.0) / 3600),
            dry_run=True,
            enforce_retention_duration=False,
            full=True,
        )
        return set(found)


def _stats(f: DataFile) -> str:
    """Delta statistics from a file's footer: rows, and min/max/nulls of top-level primitive columns."""
    stats: dict[str, Any] = {"numRecords": f.rows}
    footer = f.footer
    if footer is None or footer.num_row_groups == 0:
        return json.dumps(stats)
    low: dict[str, Any] = {}
    high: dict[str, Any] = {}
    nulls: dict[str, int] = {}
    schema = footer.schema
    for i in range(len(schema)):
        column = schema.column(i)
        if "." in column.path:  # nested: leave it to the reader
            continue
        name = column.path
        lows, highs, null_count, complete = [], [], 0, True
        for g in range(footer.num_row_groups):
            s = footer.row_group(g).column(i).statistics
            if s is None or not s.has_null_count:
                complete = False
                break
            null_count += s.null_count
            if s.has_min_max:
                lows.append(s.min)
                highs.append(s.max)
        if not complete:
            continue
        nulls[name] = null_count
        if lows and (least := _json_value(min(lows))) is not None and (most := _json_value(max(highs))) is not None:
            low[name], high[name] = least, most
    stats.update(minValues=low, maxValues=high, nullCount=nulls)
    return json.dumps(stats)


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no infinity or NaN: such a bound is left out
    if isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            return value.isoformat(timespec="microseconds")
        return value.astimezone(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    if isinstance(value, dt.date):
        return value.isoformat()
    return None


ENGINE = f"flight-writer/{__version__}"
_APPEND = {"operation": "WRITE", "operationParameters": {"mode": "Append"}}
_OVERWRITE = {"operation": "WRITE", "operationParameters": {"mode": "Overwrite"}}
_OPTIMIZE = {"operation": "OPTIMIZE", "operationParameters": {}}


#: writer features that ask nothing of a writer that adds files as they are and removes its own: time
#: without a zone, domain metadata, wider column types, the vacuum check (readers' and vacuum's business)
WRITER_FEATURES_OK = frozenset({"timestampNtz", "domainMetadata", "typeWidening", "vacuumProtocolCheck"})


def _writer_version_ok(protocol: dict[str, Any]) -> bool:
    """Writer version 2 at most (appends and removes need nothing more, invariants aside), or 7 with only
    the features in WRITER_FEATURES_OK."""
    version = int(protocol.get("minWriterVersion", 7))
    if version <= 2:
        return True
    return version == 7 and set(protocol.get("writerFeatures") or ()) <= WRITER_FEATURES_OK


def _plain_protocol(table: Any) -> bool:
    """Whether commits can be written here: a writer protocol this module honours, no column invariants."""
    try:
        p = table.protocol()
        fine = _writer_version_ok({"minWriterVersion": p.min_writer_version, "writerFeatures": p.writer_features})
        return fine and "delta.invariants" not in table.schema().to_json()
    except Exception:
        return False
