"""Admitting a stream to its dataset, once, at the stream's start: the dataset's rule (layout.py: partitions,
stored types), its schema mode and declared columns (schemas.py), and its name beside the other datasets'.

Both Flight doors (a path ``do_put`` and Flight SQL ingest) ask ``Admission.admit``; nothing here speaks
Flight: a refusal is an ``AdmissionError`` naming the problem, which the doors answer as FlightServerError.
Storage is read at most once per dataset (its newest file's schema) and, for the dataset names, once per
process before the first new name, then again in the background when a catalog answer (``names``) finds
the listing older than ``RELIST``; when listing fails, the stream is admitted on what this process knows,
with a warning. The names are kept in a :class:`NameIndex`: a new name is checked in a few set lookups,
however many datasets there are.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import pyarrow as pa
from loguru import logger

from flight_writer.config import DatasetRule, DatasetSettings
from flight_writer.lake.datasets import Datasets
from flight_writer.lake.layout import LayoutError, Partitioner, Shape, stored_type
from flight_writer.lake.schemas import Conformer, SchemaError, declared_schema, plan, union
from flight_writer.lake.tables import types_problem

LIST_AGAIN = 60.0  # seconds before a failed listing of the dataset names is tried again
RELIST = 30.0  # seconds: a catalog answer from an older listing of storage's names lists again, in the background
RECENT_FILES = 16  # a dataset's schema after a start: the union of its newest files' (footers read once)


class NameIndex:
    """Dataset names and their proper prefixes (``org`` and ``org/team`` of ``org/team/spans``), each prefix
    with one name under it: whether a name nests inside or around a known one is a lookup per segment."""

    def __init__(self) -> None:
        self._names: set[str] = set()
        self._under: dict[str, str] = {}  # a proper prefix -> the first known name under it

    def __contains__(self, name: str) -> bool:
        return name in self._names

    def add(self, name: str) -> None:
        if name not in self._names:
            self._names.add(name)
            for prefix in _prefixes(name):
                self._under.setdefault(prefix, name)

    def nests(self, name: str) -> str | None:
        """A known name that ``name`` would nest inside (the shortest) or around, or None."""
        for prefix in _prefixes(name):
            if prefix in self._names:
                return prefix
        return self._under.get(name)


def _prefixes(name: str) -> list[str]:
    """``a/b/c`` -> ``a``, ``a/b``: the names a dataset would nest inside, shortest first."""
    parts = name.split("/")
    return ["/".join(parts[:k]) for k in range(1, len(parts))]


class AdmissionError(ValueError):
    """The stream cannot go to its dataset (the message names the column, rule or dataset)."""


@dataclass(frozen=True)
class Admitted:
    """How a stream's batches are queued: under ``schema``, each through ``conform`` then ``split`` when set
    (both may raise ``LayoutError``/``SchemaError`` for one batch)."""

    schema: pa.Schema
    conform: Conformer | None
    split: Callable[[pa.RecordBatch], list[pa.RecordBatch]] | None
    version: int | None = None  # evolve: the dataset's schema version this was decided on


class Admission:
    def __init__(self, datasets: Datasets, layout: DatasetSettings) -> None:
        self._datasets = datasets
        self._layout = layout
        self._schemas: dict[str, pa.Schema] = {}  # evolve, strict: each dataset's schema so far
        #: evolve: a dataset's schema version, one more at each change; a stream that began on another
        #: version is admitted again (read without a lock per batch: a stale read only delays that)
        self.versions: dict[str, int] = {}
        self._schemas_lock = threading.Lock()
        self._cases: dict[str, dict[str, str]] = {}  # separate: each dataset's column names by lower case
        self._known = NameIndex()  # dataset names: those in storage (every listing's) and those admitted here
        self._stored: frozenset[str] | None = None  # the last listing of storage's names (None: none yet)
        self._admitted: set[str] = set()  # names admitted by this process
        self._catalog: list[str] | None = None  # names(), sorted, until one is added or listed
        self._listed_at = 0.0
        self._list_tried = -3600.0
        self._relisting = False
        self._known_lock = threading.Lock()  # held for lookups and updates, never while storage is listed
        self._list_lock = threading.Lock()  # one listing at a time

    def stored_schema(self, dataset: str, schema: pa.Schema) -> pa.Schema:
        """What the dataset's files hold of a stream of this schema (partition fields out, stored types)."""
        return Shape.of(schema, self._layout.rule_for(dataset)).schema

    def admit(
        self,
        dataset: str,
        schema: pa.Schema,
        check: Callable[[pa.Schema, pa.Schema], str | None],
        fresh: bool = False,
    ) -> Admitted:
        """Decide how this stream's batches are queued. ``check(schema, stored)`` says what else refuses it
        (limits, what Parquet cannot store); the name is taken last, so a refused stream does not take it.
        ``fresh``: the stream replaces the dataset's data (Flight SQL replace), its schema starts anew."""
        rule = self._layout.rule_for(dataset)
        try:
            partitioner = Partitioner(rule, schema)
        except LayoutError as exc:
            raise AdmissionError(f"dataset {dataset!r}: {exc}") from None
        shape = Shape.of(schema, rule)
        stored = shape.schema
        if (problem := check(schema, stored)) is not None:
            raise AdmissionError(problem)
        if rule.table != "none" and (problem := types_problem(rule.table, pa.schema([*stored, *shape.fields]))):
            raise AdmissionError(f"dataset {dataset!r}: {problem}")
        conform, version = self._conformer(dataset, rule, schema, stored, fresh)
        if rule.schema == "separate":
            self._check_case(dataset, stored, fresh)
        self._check_nesting(dataset)
        return Admitted(
            conform.schema if conform is not None else schema,
            conform,
            partitioner.split if partitioner.splits else None,
            version,
        )

    def forget(self, dataset: str) -> None:
        """Take the dataset's schema from storage again at its next stream (a replace that failed)."""
        with self._schemas_lock:
            self._schemas.pop(dataset, None)
            self._cases.pop(dataset, None)
            self.versions[dataset] = self.versions.get(dataset, 0) + 1

    def _conformer(
        self, dataset: str, rule: DatasetRule, schema: pa.Schema, stored: pa.Schema, fresh: bool
    ) -> tuple[Conformer | None, int | None]:
        """How this stream's batches become what the dataset's schema mode and declared columns say (None
        when they are queued as sent), and, under evolve, the schema version that was decided on."""
        declared = declared_schema(rule.columns)
        if rule.schema == "separate" and declared is None:
            return None, None
        look = rule.schema != "separate" and not fresh
        stored_now = self._dataset_schema(dataset) if look else None  # outside the lock
        try:
            with self._schemas_lock:
                if stored_now is not None:
                    self._schemas.setdefault(dataset, stored_now)
                current = self._schemas.get(dataset) if look else None
                if current is not None and rule.fields:  # partition fields live in folder names, not files
                    current = pa.schema([f for f in current if f.name not in rule.fields], current.metadata)
                target = plan(rule.schema, current, stored, declared)
                if rule.schema == "evolve" or current is None:
                    if self._schemas.get(dataset) != target:
                        self.versions[dataset] = self.versions.get(dataset, 0) + 1
                    self._schemas[dataset] = target
                version = self.versions.get(dataset) if rule.schema == "evolve" else None
        except SchemaError as exc:
            raise AdmissionError(f"dataset {dataset!r} (schema = {rule.schema}): {exc}") from None
        conform = Conformer(target, schema, rule.fields, lambda kind: stored_type(kind, rule.types))
        return (None if conform.identity else conform), version

    def _check_case(self, dataset: str, stored: pa.Schema, fresh: bool) -> None:
        """``separate``: each stream keeps its schema, but readers read the dataset's files together; a column
        whose name differs only in case from one the dataset already has would be two columns to pyarrow,
        one to Spark (which refuses the files) and a renamed one to DuckDB. Refused, naming both. The
        dataset's names come from this process's streams and, once, from its newest files in storage; the
        check and the taking of the names are one step under the lock (two first streams cannot both pass)."""
        with self._schemas_lock:
            known = fresh or dataset in self._cases
        from_storage = None if known else self._stored_names(dataset)  # outside the lock: it reads storage
        with self._schemas_lock:
            if fresh:
                self._cases[dataset] = {}  # a replace starts the dataset anew
            seen = self._cases.setdefault(dataset, from_storage or {})
            for f in stored:
                other = seen.get(f.name.lower())
                if other is not None and other != f.name:
                    raise AdmissionError(
                        f"dataset {dataset!r}: column {f.name!r} differs only in case from the dataset's column "
                        f"{other!r}: Spark reads them as one column and refuses the files, DuckDB renames one; "
                        f"send it as {other!r} or rename it"
                    )
            for f in stored:
                seen.setdefault(f.name.lower(), f.name)

    def _stored_names(self, dataset: str) -> dict[str, str]:
        """The column names of the dataset's newest files, by lower case ({} if storage cannot say)."""
        try:
            schema = union(self._datasets.recent_schemas(dataset, RECENT_FILES))
        except Exception as exc:  # ingest never waits for a failing storage: this process's names count
            logger.warning("dataset {}: cannot read its names from storage ({}: {})", dataset, type(exc).__name__, exc)
            return {}
        return {f.name.lower(): f.name for f in schema} if schema is not None else {}

    def _dataset_schema(self, dataset: str) -> pa.Schema | None:
        """The dataset's schema so far: this process's, else (read once) the union of its newest files'."""
        if dataset in self._schemas:
            return self._schemas[dataset]
        try:
            return union(self._datasets.recent_schemas(dataset, RECENT_FILES))
        except Exception as exc:  # ingest never waits for a failing storage: the stream's schema starts it
            logger.warning("dataset {}: cannot read its schema from storage ({}: {})", dataset, type(exc).__name__, exc)
            return None

    def names(self) -> list[str]:
        """The datasets for catalog answers: storage's (listed now if never yet, else from the last listing,
        listed again in the background when older than ``RELIST``) and those admitted here, sorted. A
        failing first listing raises."""
        if self._stored is None:
            with self._list_lock:
                if self._stored is None:
                    self._list_now()
        elif time.monotonic() - self._listed_at > RELIST:
            with self._known_lock:
                start, self._relisting = not self._relisting, True
            if start:
                threading.Thread(target=self._relist, name="dataset-names", daemon=True).start()
        with self._known_lock:
            if self._catalog is None:
                self._catalog = sorted((self._stored or frozenset()) | self._admitted)
            return self._catalog

    def _list_now(self) -> None:
        """List storage's names into the index and the catalog (``_list_lock`` held: one listing at a time;
        lookups and admissions of known names go on meanwhile)."""
        names = frozenset(self._datasets.names())
        with self._known_lock:
            for name in sorted(names):  # in name order: an "around" refusal names the first under it
                self._known.add(name)
            self._stored, self._listed_at, self._catalog = names, time.monotonic(), None

    def _relist(self) -> None:
        try:
            with self._list_lock:
                self._list_now()
        except Exception as exc:  # the catalog keeps the last listing; a later answer tries again
            logger.warning("cannot list datasets in storage ({}: {})", type(exc).__name__, exc)
            self._listed_at = time.monotonic()
        finally:
            self._relisting = False

    def _check_nesting(self, dataset: str) -> None:
        """Refuse a dataset name inside another dataset's folder, or one that would hold another: readers
        of the outer one would read the inner one's files too."""
        with self._known_lock:
            if dataset in self._known:
                self._admitted_here(dataset)
                return
        if self._stored is None:  # storage's names first, once; a listing under way is waited for
            with self._list_lock:
                if self._stored is None and time.monotonic() - self._list_tried > LIST_AGAIN:
                    self._list_tried = time.monotonic()
                    try:
                        self._list_now()
                    except Exception as exc:  # ingest never waits for storage: check the names seen here
                        logger.warning(
                            "cannot list datasets in storage ({}: {}); nesting checked against this process's "
                            "datasets only, listing again in {:g} s",
                            type(exc).__name__,
                            exc,
                            LIST_AGAIN,
                        )
        with self._known_lock:
            if (other := self._known.nests(dataset)) is not None:
                outer, inner = sorted((dataset, other), key=len)
                raise AdmissionError(
                    f"dataset {dataset!r} would nest {'inside' if dataset == inner else 'around'} dataset "
                    f"{other!r}: readers of {outer!r} would read {inner!r}'s files too. Name it beside it, "
                    f"e.g. {inner.replace('/', '-')!r}"
                )
            self._known.add(dataset)
            self._admitted_here(dataset)

    def _admitted_here(self, dataset: str) -> None:
        """``dataset`` is in the catalog from now on (``_known_lock`` held)."""
        if dataset not in self._admitted:
            self._admitted.add(dataset)
            if self._stored is None or dataset not in self._stored:
                self._catalog = None
