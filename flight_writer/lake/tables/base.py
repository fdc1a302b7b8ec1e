"""The table seam: one lake table (Iceberg or Delta) over a dataset's folder, as the committer uses it.

A :class:`Table` holds files that storage holds already: committing never writes data, only the format's
metadata. Every commit is a compare-and-swap on the table's current version (Iceberg: the catalog's
metadata pointer, with pyiceberg's own retry off; Delta: the next log version, with delta-rs's retry off),
so two commits made from the same version cannot both land. After :class:`CommitConflict` the committer
calls ``refresh`` and plans again from the table as it is now: files the table already holds are left out,
which is what makes a commit exactly once, whoever else commits the same files.

Paths are relative to the dataset's folder (``date=2026-12-06/hour=9/part-....parquet``), as the Stored
event's path is relative to the storage root.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

#: what our commits carry, in the Iceberg snapshot summary and the Delta commit's metadata: the app id (Delta
#: app transaction) and the count of our commits, read back on start and after every conflict
APP_ID = "flight-writer"
COMMITS_KEY = "flight-writer.commits"
FILES_KEY = "flight-writer.files"
SEQS_KEY = "flight-writer.seqs"  # the queue's seqs the commit's files hold (ranges): who knows they are committed


class TableError(Exception):
    """The table cannot be opened or committed to (the message says why; the committer retries)."""


class CommitConflict(TableError):
    """Someone else committed since this table's version was read: refresh and plan again."""


@dataclass(frozen=True, slots=True)
class DataFile:
    """One stored Parquet file to commit: where it is in the dataset's folder, what it holds."""

    path: str  # relative to the dataset's folder
    size: int
    rows: int
    schema: pa.Schema  # as stored in the file (partition columns out)
    partition: dict[str, str | None]  # the partition folders' values (None: the null partition)
    footer: pq.FileMetaData | None = None
    seqs: tuple[int, ...] = field(default=(), compare=False)  # the queue's seqs it holds (none if adopted)


class Table(abc.ABC):
    """A table of one dataset, as of the version last read (``refresh`` reads it again)."""

    format: str
    dataset: str

    @abc.abstractmethod
    def paths(self) -> set[str]:
        """The data files the table holds at the version read (relative paths)."""

    @abc.abstractmethod
    def commits(self) -> int:
        """How many commits flight-writer made to this table, as the table itself says."""

    @abc.abstractmethod
    def recent_seqs(self, commits: int) -> list[str]:
        """What the last ``commits`` commits said of the queue seqs they made safe (``append``'s ``seqs``, as
        given): a process that died between its commit and telling the queue, the next one tells it."""

    @abc.abstractmethod
    def refresh(self) -> None:
        """Read the table's current version (after a conflict, before planning again)."""

    @abc.abstractmethod
    def append(self, files: list[DataFile], seqs: str = "") -> None:
        """One commit adding these files (the table's schema widened first where they add columns); ``seqs``
        (the queue's seqs they hold, as ranges) goes into the commit's metadata.
        :class:`CommitConflict` if the table moved since it was read; nothing landed then."""

    @abc.abstractmethod
    def replace(self, removed: list[str], added: list[DataFile], seqs: str = "", data_change: bool = False) -> None:
        """One commit that takes ``removed`` out and puts ``added`` in: a compaction (the rows stay the same),
        or with ``data_change`` an overwrite (a Flight SQL replace: Delta says so to its readers; Iceberg
        commits both as an overwrite)."""

    @abc.abstractmethod
    def maintain(self, keep: int) -> dict[str, int]:
        """Keep commits flat: expire old snapshots/log versions beyond ``keep``, merge manifests, checkpoint,
        delete metadata no version needs. Returns what it did (counts by kind). Data files are not deleted."""

    @abc.abstractmethod
    def referenced(self) -> set[str]:
        """Every data file any version the table keeps refers to (what file removal must leave alone)."""

    def unreferenced(self, older_than: float) -> set[str] | None:
        """The files the format itself finds that no version it keeps needs and that are older than
        ``older_than`` seconds (Delta: its vacuum, as a dry run); None: decide from ``referenced`` and the
        files' ages (Iceberg). Deletes nothing."""
        return None

    @abc.abstractmethod
    def scan(self) -> pa.Table:
        """The table's rows at its current version (for tests and small checks; readers use their own)."""


class Tables(abc.ABC):
    """The tables of one format under one storage root (and, for Iceberg, one catalog)."""

    format: str

    @abc.abstractmethod
    def open(self, dataset: str, schema: pa.Schema | None) -> Table | None:
        """The dataset's table; made from ``schema`` (a file's stored schema) when there is none yet.
        None when there is none and ``schema`` is None."""

    def close(self) -> None:  # noqa: B027 - optional
        """Release connections (a catalog's engine)."""
