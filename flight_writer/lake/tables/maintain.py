"""Keeping tables flat and their folders clean, offline or from the committer: what ``flight-writer tables``
runs.

- :func:`maintain`: the format's own maintenance (``Table.maintain``: Iceberg expires snapshots beyond
  ``keep`` and deletes the manifest lists and manifests only they used; Delta checkpoints and deletes log
  entries past its retention), measured: the metadata files under ``_iceberg/`` or ``_delta_log/`` counted
  before and after.
- :func:`remove_orphans`: deletes the dataset's data files no version of its table needs. Iceberg: every
  ``part-*.parquet`` of the dataset's own partition folders that no snapshot the table keeps refers to;
  Delta: what its full vacuum finds (removed before the retention, or never in the log), kept to the
  dataset's own files (the vacuum lists a nested dataset's files too). Either way only files last modified
  more than ``older_than`` seconds ago (default an hour): a file just stored waits for its commit (the
  committer's ``tables.commit_interval``, longer while the catalog is unreachable), and files a compaction
  intent names are left to the compaction's recovery (compact.py).
"""

from __future__ import annotations

import time

from flight_writer.lake.storage import Storage
from flight_writer.lake.tables.base import Table
from flight_writer.lake.tables.compact import StoredFile, excluded, stored_files

ORPHAN_AGE = 3600.0  # seconds: younger files may be stored and not committed yet
METADATA = {"iceberg": "_iceberg", "delta": "_delta_log"}


def metadata_files(storage: Storage, table: Table) -> int:
    """How many files the table's metadata folder holds (``_iceberg/``, ``_delta_log/``)."""
    return len(storage.list(f"{table.dataset}/{METADATA[table.format]}/"))


def maintain(storage: Storage, table: Table, keep: int) -> dict[str, int]:
    """``table.maintain(keep)`` with the metadata files counted before and after (``metadata_files_before``,
    ``metadata_files_after``) besides what the format reports."""
    before = metadata_files(storage, table)
    done = dict(table.maintain(keep))
    done.update(metadata_files_before=before, metadata_files_after=metadata_files(storage, table))
    return done


def orphans(storage: Storage, table: Table, older_than: float = ORPHAN_AGE) -> list[StoredFile]:
    """The dataset's data files that no version of the table needs, last modified more than ``older_than``
    seconds ago, and named by no compaction intent, in path order."""
    table.refresh()
    files = stored_files(storage, table.dataset)
    cutoff = time.time() - older_than
    old = {path for path, f in files.items() if f.modified < cutoff}
    claimed = excluded(storage, table.dataset)
    if claimed is None:  # a replace under way: its files are not orphans
        return []
    old -= claimed
    old -= table.paths()  # the current version's files, whatever the format says of the others
    unreferenced = table.unreferenced(older_than)
    if unreferenced is None:
        old -= table.referenced()
    else:
        old &= unreferenced
    return [files[path] for path in sorted(old)]


def remove_orphans(
    storage: Storage, table: Table, older_than: float = ORPHAN_AGE, dry_run: bool = False
) -> dict[str, int]:
    """Delete :func:`orphans` (with ``dry_run``: only count them). Returns ``orphans`` found, their
    ``bytes``, and how many were ``deleted``."""
    found = orphans(storage, table, older_than)
    done = {"orphans": len(found), "bytes": sum(f.size for f in found), "deleted": 0}
    if dry_run:
        return done
    for f in found:
        storage.delete(f"{table.dataset}/{f.path}")
        done["deleted"] += 1
    return done
