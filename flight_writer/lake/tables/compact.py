"""Compaction: a table dataset's small files rewritten into fewer, larger ones, as one replace commit.

**What it picks.** Per partition folder (``date=.../hour=...``), the files the table holds that are smaller
than the target size (64 MiB unless told), in name order (their first seq), packed into groups that stop
growing once they reach the target; a group needs at least two files. Files named in another compaction's
intent are left out (a compaction in progress elsewhere owns them).

**What it makes.** Each group becomes ONE new Parquet file in the same folder,
``part-<first seq, 12 digits (0 if none)>-<12 hex>.parquet``: the inputs' rows in input order (columns one
input lacks are null there), written with the writer's compression and row group size, its footer saying
``flight_writer.dataset``, ``flight_writer.seq_min``/``seq_max``, ``flight_writer.seqs`` (the union of the
inputs' seq ranges), ``flight_writer.compacted_files`` and ``flight_writer.version``.

**The protocol.** The committer adopts at start every ``part-*.parquet`` of a table dataset that its table
does not hold (write/commits.py). A compaction's new file is such a file until its commit lands, and its
inputs are such files once it has landed: a crash in between, followed by an adoption, would commit rows
twice. So every compaction writes down what it is doing first, and every step after that can be redone or
undone from what it wrote:

1. ``begin``: the intent ``{dataset}/_compacting/<id>.json`` is stored (its inputs and its output, relative
   to the dataset's folder), *then* the new file;
2. ``commit``: one replace commit, ``table.replace(inputs, [output])``, made only while the table (at the
   version the commit is made on: a compare-and-swap) still holds every input and the intent is still
   there;
3. ``finish``: the table read again; if the commit landed (the table holds the output, or no longer holds
   any input), the inputs are deleted; the output is deleted wherever the table does not hold it; then the
   intent is deleted. So once an intent is gone, each file it named is in the table or gone from storage.

``finish`` is also the recovery: :func:`recover` runs it for every intent left behind, whatever step the
crash came at, and :func:`excluded` names every file of a live intent, which adoption must never adopt
(before the intent is settled, neither the output nor the inputs may go into the table by adoption).
Deleting the intent last makes every step before it safe to repeat. Adoption reads the intents after it
listed the files and read the table, and reads a file's contents after that: a file whose intent went
meanwhile is then in the table (the commit's plan leaves it out) or gone (it cannot be read).

Recovery and a compaction in progress must not meet: servers (and ``flight-writer tables compact`` beside
a running server) recover only intents older than an hour (:data:`SHARED_AGE`), as
``Storage.remove_partials`` treats ``_tmp/`` on a shared root; until then an intent's files are kept out of
adoption. A compaction must finish within that hour. Should a recovery
settle an intent whose compaction still runs anyway, the compaction does not commit once its intent is gone,
and a ``finish`` that finds the table holding an output storage lacks keeps the inputs and says so.
"""

from __future__ import annotations

import contextlib
import io
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import opendal
import pyarrow as pa
import pyarrow.parquet as pq

from flight_writer._version import __version__
from flight_writer.config import WriterSettings
from flight_writer.lake.layout import partition_values
from flight_writer.lake.storage import Storage
from flight_writer.lake.tables.base import CommitConflict, DataFile, Table, TableError

MiB = 1024 * 1024
TARGET_BYTES = 64 * MiB
MIN_FILES = 2
INTENTS = "_compacting"
SHARED_AGE = 3600.0  # seconds: an intent this old belongs to no compaction still running
COMMIT_TRIES = 5  # replace commits tried when other commits keep landing first


# -- what storage holds ----------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class StoredFile:
    """One of a dataset's own data files in storage."""

    path: str  # relative to the dataset's folder
    size: int
    modified: float  # epoch seconds (the listing's time where storage does not say: never old enough to remove)

    @property
    def folder(self) -> str:
        return self.path.rsplit("/", 1)[0] if "/" in self.path else ""


def stored_files(storage: Storage, dataset: str) -> dict[str, StoredFile]:
    """The dataset's ``part-*.parquet`` files in its own partition folders (not a nested dataset's), from one
    listing, by relative path."""
    prefix = dataset + "/"
    found: dict[str, StoredFile] = {}
    now = time.time()
    for entry in storage.operator.scan(prefix):
        path = entry.path
        relative = path[len(prefix) :]
        name = relative.rsplit("/", 1)[-1]
        if not (relative.startswith("date=") and name.startswith("part-") and name.endswith(".parquet")):
            continue
        meta = entry.metadata
        size, modified = meta.content_length, meta.last_modified
        if modified is None:  # a listing without times: ask for the object's own
            meta = storage.operator.stat(path)
            size, modified = meta.content_length, meta.last_modified
        found[relative] = StoredFile(relative, int(size or 0), modified.timestamp() if modified is not None else now)
    return found


# -- intents ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Intent:
    """What one compaction does: its inputs and its output, relative to the dataset's folder (``""``: none,
    a Flight SQL replace, whose new files are committed with it and need no undoing). ``replacing``: a Flight
    SQL replace is under way (from its start to its commit or its end): the dataset's uncommitted files may be
    the replace's, so no process adopts any of them meanwhile (or, after a crash, for SHARED_AGE)."""

    id: str
    dataset: str
    inputs: tuple[str, ...]
    output: str
    created_at: float = field(default_factory=time.time)
    replacing: bool = False

    @property
    def path(self) -> str:
        return intent_path(self.dataset, self.id)

    def to_json(self) -> bytes:
        body = {
            "id": self.id,
            "dataset": self.dataset,
            "inputs": list(self.inputs),
            "output": self.output,
            "created_at": self.created_at,
            **({"replacing": True} if self.replacing else {}),
        }
        return json.dumps(body, indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Intent:
        body = json.loads(data)
        inputs, output, created = tuple(body["inputs"]), body["output"], float(body["created_at"])
        return cls(body["id"], body["dataset"], inputs, output, created, bool(body.get("replacing", False)))


def intent_path(dataset: str, intent_id: str) -> str:
    return f"{dataset}/{INTENTS}/{intent_id}.json"


def intents(storage: Storage, dataset: str) -> list[Intent]:
    """Every intent stored for the dataset. One that cannot be read raises ValueError naming it: its files
    cannot be told apart from others, so nothing may be adopted while it is there."""
    found = []
    for path in storage.list(f"{dataset}/{INTENTS}/"):
        if not path.endswith(".json"):
            continue
        try:
            found.append(Intent.from_json(storage.read(path)))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(
                f"compaction intent {path} cannot be read ({exc}): see what it names, then delete it"
            ) from exc
    return found


def excluded(storage: Storage, dataset: str) -> set[str] | None:
    """The files (relative to the dataset's folder) that live compaction intents name: never to be adopted,
    nor picked by another compaction, nor removed as orphans, until their intent is settled. None while a
    replace is under way: then no uncommitted file of the dataset may be adopted."""
    found = intents(storage, dataset)
    if any(intent.replacing for intent in found):
        return None
    return {path for intent in found for path in (*intent.inputs, intent.output)}


# -- planning -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Group:
    """Files of one partition folder to be rewritten into one."""

    folder: str
    inputs: tuple[str, ...]
    bytes: int


def plan(
    table: Table, files: dict[str, StoredFile], target_bytes: int = TARGET_BYTES, skip: set[str] | None = None
) -> list[Group]:
    """The groups to compact: per folder, the held files below ``target_bytes`` in name order, each group
    closed once it reaches ``target_bytes``; groups of fewer than two files left out."""
    held = table.paths()
    by_folder: dict[str, list[StoredFile]] = {}
    for f in files.values():
        if f.path in held and f.size < target_bytes and f.path not in (skip or ()):
            by_folder.setdefault(f.folder, []).append(f)
    groups: list[Group] = []
    for folder in sorted(by_folder):
        current: list[StoredFile] = []
        for f in sorted(by_folder[folder], key=lambda f: f.path.rsplit("/", 1)[-1]):
            current.append(f)
            if sum(c.size for c in current) >= target_bytes:
                groups += _group(folder, current)
                current = []
        groups += _group(folder, current)
    return groups


def _group(folder: str, files: list[StoredFile]) -> list[Group]:
    if len(files) < MIN_FILES:
        return []
    return [Group(folder, tuple(f.path for f in files), sum(f.size for f in files))]


# -- the steps ----------------------------------------------------------------------------------------------------
@dataclass
class Rewritten:
    """A group's output, stored and described, with the intent that names it."""

    intent: Intent
    file: DataFile
    rows: int


def begin(storage: Storage, dataset: str, group: Group, writer: WriterSettings) -> list[Rewritten]:
    """Read the group's files and store their rows as one new file, its intent stored first. Inputs whose
    schemas cannot be joined (a column changed type) are rewritten per schema instead: one output per
    schema that two or more inputs share. Returns what was stored (nothing if no two inputs fit together)."""
    read = []
    for path in group.inputs:
        parquet = pq.ParquetFile(io.BytesIO(storage.read(f"{dataset}/{path}")))
        rows = parquet.read()  # the footer's key/value metadata kept on the schema: the seqs are there
        read.append((path, rows.replace_schema_metadata(parquet.metadata.metadata)))
    done: list[Rewritten] = []
    try:
        for part in _joinable(read):
            if len(part) >= MIN_FILES:
                done.append(_rewrite(storage, dataset, group.folder, part, writer))
    except BaseException:
        for rewritten in done:  # stored, not committed: undone now rather than by a recovery an hour on
            with contextlib.suppress(Exception):
                _delete(storage, dataset, [rewritten.file.path])
                storage.delete(rewritten.intent.path)
        raise
    return done


def _joinable(read: list[tuple[str, pa.Table]]) -> list[list[tuple[str, pa.Table]]]:
    try:
        pa.unify_schemas([t.schema for _, t in read])
        return [read]
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        by_schema: dict[pa.Schema, list[tuple[str, pa.Table]]] = {}
        for path, t in read:
            by_schema.setdefault(t.schema.remove_metadata(), []).append((path, t))
        return list(by_schema.values())


def _rewrite(
    storage: Storage, dataset: str, folder: str, read: list[tuple[str, pa.Table]], writer: WriterSettings
) -> Rewritten:
    ranges = _union([r for _, t in read for r in _ranges(t.schema.metadata)])
    first = ranges[0][0] if ranges else 0
    name = f"part-{first:012d}-{uuid.uuid4().hex[:12]}.parquet"
    output = f"{folder}/{name}" if folder else name
    rows = pa.concat_tables([t.replace_schema_metadata(None) for _, t in read], promote_options="default")
    metadata = {
        b"flight_writer.dataset": dataset.encode(),
        b"flight_writer.seqs": ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in ranges).encode(),
        b"flight_writer.compacted_files": str(len(read)).encode(),
        b"flight_writer.version": __version__.encode(),
    }
    if ranges:
        metadata[b"flight_writer.seq_min"] = str(ranges[0][0]).encode()
        metadata[b"flight_writer.seq_max"] = str(ranges[-1][1]).encode()
    sink = pa.BufferOutputStream()
    with pq.ParquetWriter(
        sink, rows.schema, compression=writer.compression, compression_level=writer.compression_level or None
    ) as out:
        out.write_table(rows, row_group_size=writer.row_group_rows)
        out.add_key_value_metadata(metadata)
    data = sink.getvalue()
    footer = pq.read_metadata(pa.BufferReader(data))
    intent = Intent(uuid.uuid4().hex, dataset, tuple(path for path, _ in read), output)
    storage.write(intent.path, intent.to_json(), "application/json")  # first: the output is named before it exists
    storage.write(f"{dataset}/{output}", data)
    file = DataFile(
        output, data.size, footer.num_rows, footer.schema.to_arrow_schema(), partition_values(folder), footer
    )
    return Rewritten(intent, file, footer.num_rows)


def commit(storage: Storage, table: Table, rewritten: Rewritten) -> bool:
    """The replace commit: the inputs out, the output in, on a version of the table that holds every input
    (read again after a conflict, up to :data:`COMMIT_TRIES` times). False if the inputs are no longer all
    in the table (another compaction took some), or if the intent is gone (a recovery settled it: it must
    not have been this one's): nothing was committed then."""
    intent = rewritten.intent
    inputs = list(intent.inputs)
    for _ in range(COMMIT_TRIES):
        if not set(inputs) <= table.paths() or not _exists(storage, intent.path):
            return False
        try:
            table.replace(inputs, [rewritten.file])
            return True
        except CommitConflict:
            continue  # the table was read again: check the inputs on the new version
    raise CommitConflict(f"table {table.dataset!r}: {COMMIT_TRIES} replace commits lost to other commits")


def finish(storage: Storage, table: Table, intent: Intent) -> dict[str, int]:
    """Settle an intent from the table as it is now (after a commit, or a crash at any step): if the commit
    landed, the inputs go; the output goes wherever the table does not hold it; then the intent goes.
    Returns the files deleted (``inputs_deleted``, ``outputs_deleted``)."""
    table.refresh()
    held = table.paths()
    # a replace of the whole table (Flight SQL) has no output of its own: it landed once no input is held
    landed = (bool(intent.output) and intent.output in held) or not (set(intent.inputs) & held)
    done = {"inputs_deleted": 0, "outputs_deleted": 0}
    if intent.output and intent.output in held and not _exists(storage, f"{intent.dataset}/{intent.output}"):
        # only a recovery that settled this intent while its compaction still ran can get here: the
        # inputs hold the rows now, and stay (the intent too, which keeps them from adoption)
        raise TableError(
            f"table {intent.dataset!r} holds {intent.output}, which storage lacks: the inputs that {intent.path} "
            "names are kept; add them back to the table by hand"
        )
    if landed:
        done["inputs_deleted"] = _delete(storage, intent.dataset, [p for p in intent.inputs if p not in held])
    if intent.output and intent.output not in held:
        done["outputs_deleted"] = _delete(storage, intent.dataset, [intent.output])
    storage.delete(intent.path)
    return done


def _delete(storage: Storage, dataset: str, paths: list[str]) -> int:
    """Delete files that may be gone already; returns how many were there."""
    deleted = 0
    for path in paths:
        full = f"{dataset}/{path}"
        if _exists(storage, full):
            storage.delete(full)
            deleted += 1
    return deleted


def _exists(storage: Storage, path: str) -> bool:
    try:
        storage.operator.stat(path)
        return True
    except opendal.exceptions.NotFound:
        return False


# -- the whole of it ----------------------------------------------------------------------------------------------
def compact(
    storage: Storage,
    table: Table,
    writer: WriterSettings,
    target_bytes: int = TARGET_BYTES,
    dry_run: bool = False,
) -> dict[str, int]:
    """Compact one table dataset (``table.dataset``): plan, then begin, commit and finish group by group.
    With ``dry_run`` only the plan is counted. Returns counts: ``groups``, ``files_in`` and ``bytes_in``
    (planned), and unless a dry run ``files_out``, ``bytes_out``, ``rows``, ``commits``, ``skipped`` (groups
    whose inputs another commit took first) and the deletions."""
    dataset = table.dataset
    table.refresh()
    claimed = excluded(storage, dataset)
    groups = [] if claimed is None else plan(table, stored_files(storage, dataset), target_bytes, claimed)
    done = {
        "groups": len(groups),
        "files_in": sum(len(g.inputs) for g in groups),
        "bytes_in": sum(g.bytes for g in groups),
    }
    if dry_run:
        return done
    done.update(files_out=0, bytes_out=0, rows=0, commits=0, skipped=0, inputs_deleted=0, outputs_deleted=0)
    for group in groups:
        for rewritten in begin(storage, dataset, group, writer):
            try:
                landed = commit(storage, table, rewritten)
            except Exception:
                _settle_or_leave(storage, table, rewritten.intent)
                raise
            settled = finish(storage, table, rewritten.intent)
            for key, n in settled.items():
                done[key] += n
            if landed:
                done["commits"] += 1
                done["files_out"] += 1
                done["bytes_out"] += rewritten.file.size
                done["rows"] += rewritten.rows
            else:
                done["skipped"] += 1
    return done


def _settle_or_leave(storage: Storage, table: Table, intent: Intent) -> None:
    """After a failed commit: settle the intent if the table can be read now; else recovery will."""
    with contextlib.suppress(Exception):  # the commit's error is the one to report; the intent stays for recovery
        finish(storage, table, intent)


def recover(storage: Storage, table: Table, older_than: float | None = SHARED_AGE) -> dict[str, int]:
    """Settle the intents a crash left for ``table.dataset``: every one (``older_than`` None: this process
    has the storage root to itself), or those created more than ``older_than`` seconds ago. Returns
    ``intents`` settled and the files deleted."""
    done = {"intents": 0, "inputs_deleted": 0, "outputs_deleted": 0}
    now = time.time()
    for intent in intents(storage, table.dataset):
        if older_than is not None and now - intent.created_at <= older_than:
            continue  # a compaction elsewhere may still be at it
        for key, n in finish(storage, table, intent).items():
            done[key] += n
        done["intents"] += 1
    return done


# -- seq ranges in footers ----------------------------------------------------------------------------------------
def _ranges(metadata: dict[bytes, bytes] | None) -> Iterator[tuple[int, int]]:
    """The seq ranges a file's footer names (``flight_writer.seqs``: ``1-4,7``), or its min..max."""
    metadata = metadata or {}
    text = metadata.get(b"flight_writer.seqs", b"").decode()
    if text:
        for part in text.split(","):
            first, _, last = part.partition("-")
            yield int(first), int(last or first)
    elif b"flight_writer.seq_min" in metadata and b"flight_writer.seq_max" in metadata:
        yield int(metadata[b"flight_writer.seq_min"]), int(metadata[b"flight_writer.seq_max"])


def _union(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Ranges merged where they touch or overlap, ascending."""
    merged: list[tuple[int, int]] = []
    for first, last in sorted(ranges):
        if merged and first <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], last))
        else:
            merged.append((first, last))
    return merged


def describe(done: dict[str, Any]) -> str:
    """Counts as ``key=value`` pairs, for a log line or the command's output."""
    return " ".join(f"{k}={v}" for k, v in done.items())
