"""Delta tables through delta-rs (the ``deltalake`` package): no catalog, the log is ``_delta_log/`` in the
dataset's folder.

Files are added as they are (``create_write_transaction`` with add actions; statistics from each file's
footer: row count, and per top-level column minimum, maximum and null count where the footer has them).
Partition columns live in the log, never in the files: our Hive layout exactly. Every commit carries an app
transaction (``flight-writer``, our commit count) and runs with delta-rs's retry off
(``max_commit_retries = 0``): two commits from the same version cannot both land, the loser comes back as
:class:`CommitConflict` and plans again.

Checkpoints are Parquet files in ``_delta_log/``: a glob over the dataset's folder must say
``part-*.parquet`` (as the documentation's do) to read data files only.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import time
from typing import Any

import pyarrow as pa

from flight_writer.config import DatasetSettings, TableSettings
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

CONFIGURATION = {"delta.checkpointInterval": "100"}


class DeltaTables(Tables):
    format = "delta"

    def __init__(self, settings: TableSettings, datasets: DatasetSettings, base: str, options: dict[str, str]) -> None:
        self._settings = settings
        self._datasets = datasets
        self._base = base.rstrip("/")
        self._options = options  # delta-rs storage options (endpoint, credentials)

    def open(self, dataset: str, schema: pa.Schema | None, fields: pa.Schema | None = None) -> Table | None:
        from deltalake import DeltaTable
        from deltalake.exceptions import TableNotFoundError

        uri = f"{self._base}/{dataset}"
        partitions = partition_columns(self._datasets.rule_for(dataset), fields, "delta")
        try:
            return DeltaTableOf(dataset, DeltaTable(uri, storage_options=self._options), partitions)
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
        return DeltaTableOf(dataset, DeltaTable(uri, storage_options=self._options), partitions)


def _delta_schema(schema: pa.Schema) -> Any:
    from deltalake import Schema

    return Schema.from_arrow(schema)


class DeltaTableOf(Table):
    """One Delta table (named so beside delta-rs's own ``DeltaTable``)."""

    format = "delta"

    def __init__(self, dataset: str, table: Any, partitions: list[PartitionColumn]) -> None:
        self.dataset = dataset
        self._table = table
        self._partitions = partitions
        self._paths: set[str] | None = None
        self._commits: int | None = None

    def paths(self) -> set[str]:
        if self._paths is None:
            actions = self._table.get_add_actions(flatten=False)
            self._paths = set(actions.column("path").to_pylist()) if actions.num_rows else set()
        return self._paths

    def commits(self) -> int:
        if self._commits is None:
            self._commits = self._table.transaction_version(APP_ID) or 0
        return self._commits

    def refresh(self) -> None:
        self._table.update_incremental()
        self._paths = None
        self._commits = None

    def referenced(self) -> set[str]:
        """The current version's files (removed ones are Delta's to vacuum: ``maintain`` leaves them)."""
        return set(self.paths())

    def scan(self) -> pa.Table:
        return self._table.to_pyarrow_table()

    def append(self, files: list[DataFile], seqs: str = "") -> None:
        self._commit([], files, seqs)

    def recent_seqs(self, commits: int) -> list[str]:
        found = []
        for entry in self._table.history(commits):
            text = entry.get(SEQS_KEY)
            if isinstance(text, str) and text:
                found.append(text)
        return found

    def replace(self, removed: list[str], added: list[DataFile], seqs: str = "") -> None:
        self._commit(removed, added, seqs)

    def _commit(self, removed: list[str], added: list[DataFile], seqs: str = "") -> None:
        from deltalake import CommitProperties, Transaction
        from deltalake.exceptions import CommitFailedError
        from deltalake.transaction import AddAction, RemoveAction

        count = self.commits() + 1
        now = int(time.time() * 1000)
        change = not removed  # a replace (compaction) moves rows between files: no data change for readers
        actions: list[Any] = [RemoveAction(path, change, now) for path in removed]
        actions += [AddAction(f.path, f.size, self._partition_values(f), now, change, _stats(f)) for f in added]
        self._widen(added)
        properties = CommitProperties(
            custom_metadata={COMMITS_KEY: str(count), FILES_KEY: str(len(added)), **({SEQS_KEY: seqs} if seqs else {})},
            max_commit_retries=0,
            app_transactions=[Transaction(APP_ID, count)],
        )
        try:
            self._table.create_write_transaction(
                actions,
                "append",
                self._table.schema(),
                partition_by=[p.name for p in self._partitions] or None,
                commit_properties=properties,
            )
        except CommitFailedError as exc:
            self.refresh()
            raise CommitConflict(f"table {self.dataset!r} moved on: {exc}") from None
        except (OSError, ValueError) as exc:
            self.refresh()
            raise TableError(f"commit to table {self.dataset!r} failed: {exc}") from exc
        made = self._table.version()  # the version this commit was made on
        self._table.update_incremental()  # a handle does not see its own commit until it reads the log
        self._commits = count
        if self._table.version() != made + 1:  # others committed after it: what they hold is not known here
            self._paths = None
            self._commits = None
        elif self._paths is not None:
            self._paths.difference_update(removed)
            self._paths.update(f.path for f in added)

    def _widen(self, files: list[DataFile]) -> None:
        """Add the columns the files bring that the table lacks (by name): a commit of its own, before the
        data's (delta-rs cannot change the schema in a commit of add actions)."""
        from deltalake.exceptions import CommitFailedError

        known = set(pa.schema(self._table.schema().to_arrow()).names)
        extra: list[pa.Field] = []
        for f in files:
            for field in table_schema(f.schema, []):
                if field.name not in known:
                    extra.append(field)
                    known.add(field.name)
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
            self._paths = None
            self._commits = None
            raise CommitConflict(f"table {self.dataset!r} moved on while adding columns")

    def _partition_values(self, f: DataFile) -> dict[str, str | None]:
        return {p.name: f.partition.get(p.name) for p in self._partitions}

    def maintain(self, keep: int) -> dict[str, int]:
        """A checkpoint at the current version, then the log entries before it that are older than the
        table's ``delta.logRetentionDuration`` (30 days unless set) deleted. Delta keeps its log by age, not
        by count: ``keep`` does not apply. Commits stay flat anyway: a commit reads the log from the newest
        checkpoint on (delta-rs also checkpoints every ``delta.checkpointInterval`` commits by itself)."""
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
        if lows and (kind := _json_value(min(lows))) is not None:
            low[name] = kind
            high[name] = _json_value(max(highs))
    stats.update(minValues=low, maxValues=high, nullCount=nulls)
    return json.dumps(stats)


def _json_value(value: Any) -> Any:
    if isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            return value.isoformat(timespec="microseconds")
        return value.astimezone(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    if isinstance(value, dt.date):
        return value.isoformat()
    return None
