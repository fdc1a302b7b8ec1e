"""After stored: the one event a writer emits once storage confirmed an object, and who hears it, in order.

A :class:`Stored` event says everything a follower needs about the object: where it is, which dataset and
seqs it holds, its rows and bytes, the schema it was stored with, its partition values, and its Parquet
footer (row groups, column statistics, our key/value metadata). The writer hands each event to
:class:`Followers`, which run one after another on the thread that stored the file, in this order:

1. the durability record: ``Feed.confirm`` (or ``reject``, for a batch set aside): the queue's position
   advances, the batches' capacity is released; retried until it succeeds (the object is stored already,
   and the queue's plan makes a retry store nothing twice);
2. the writer's own counters (files, rows, bytes written per dataset);
3. the watchers (the table committer: ``write/commits.py``), then the listeners (metrics), in the order they
   were added: one that raises is logged and does not stop the others, nor undo the durability record.

Watchers also hear, from the writer's thread, of each file as it is sealed (``sealed``: it will be stored)
and of each flush request (``flush_requested``), so a table commit can follow a flush at once.

A follower must be quick or hand its work to a thread of its own: the next file waits for it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.parquet as pq
from loguru import logger

from flight_writer.lake.layout import partition_values
from flight_writer.queue import Entry, Feed


@dataclass(frozen=True, slots=True, eq=False)
class Stored:
    """One object storage confirmed. ``kind`` is ``parquet``, or ``failed`` for a batch the encoder
    rejected (kept as Arrow IPC under ``_failed/``; ``error`` says why, ``footer`` is None)."""

    path: str
    dataset: str
    kind: str
    seqs: tuple[int, ...]
    rows: int
    nbytes: int
    schema: pa.Schema
    partition: dict[str, str | None]  # the partition folders' values (None: the null partition)
    footer: pq.FileMetaData | None  # the Parquet footer: row groups, statistics, key/value metadata
    encode_s: float = 0.0  # seconds spent encoding, all threads together
    upload_s: float = 0.0
    error: str | None = None
    received_at: tuple[float, ...] = ()  # when each batch arrived (UTC epoch seconds): put-to-durable times
    fields: pa.Schema | None = None  # the partition fields' types as the stream had them (datasets.fields)

    @property
    def metadata(self) -> dict[bytes, bytes]:
        """The footer's key/value metadata (``flight_writer.*``: dataset, seqs, version)."""
        return dict(self.footer.metadata or {}) if self.footer is not None else {}

    @staticmethod
    def folders_of(path: str, dataset: str) -> str:
        """The partition folders of an object's ``path`` (between the dataset and the file name)."""
        return path[len(dataset) + 1 : path.rfind("/")] if path.startswith(dataset + "/") else ""

    @classmethod
    def partition_of(cls, path: str, dataset: str) -> dict[str, str | None]:
        return partition_values(cls.folders_of(path, dataset))


Listener = Callable[[Stored], Any]


class Watcher(Protocol):
    """Who follows files from sealed to stored (the table committer)."""

    def sealed(self, path: str, dataset: str) -> None: ...

    def flush_requested(self, datasets: list[str | None]) -> None: ...

    def stored(self, event: Stored) -> None: ...

    def commits(self, dataset: str) -> bool:
        """Whether this dataset's files wait for a commit (their seqs are committed only then)."""
        ...


Retry = Callable[[str, Callable[[], Any], tuple[type[BaseException], ...]], Any]


class Followers:
    """Who hears of each stored object, in the order the module docstring gives."""

    def __init__(self, feed: Feed, retry: Retry, count: Callable[[Stored], None]) -> None:
        self._feed = feed
        self._retry = retry
        self._count = count
        self.listeners: list[Listener] = []
        self.watchers: list[Watcher] = []

    def sealed(self, path: str, dataset: str) -> None:
        for watcher in self.watchers:
            watcher.sealed(path, dataset)

    def flush_requested(self, datasets: list[str | None]) -> None:
        for watcher in self.watchers:
            watcher.flush_requested(datasets)

    def __call__(self, event: Stored, entries: list[Entry]) -> None:
        """``entries``: the queue's entries the object holds (the record releases them; the event does not
        keep them, so a listener that holds events holds no batches)."""
        feed = self._feed
        if event.kind == "failed":
            error = event.error or "rejected by the Parquet encoder"
            self._retry(f"confirm {event.path}", lambda: feed.reject(entries, error), (Exception,))
        else:
            table = any(w.commits(event.dataset) for w in self.watchers)
            self._retry(f"confirm {event.path}", lambda: feed.confirm(entries, event.path, table), (Exception,))
        self._count(event)
        for listener in [*(w.stored for w in self.watchers), *self.listeners]:
            try:
                listener(event)
            except Exception:
                logger.opt(exception=True).error("a listener of stored files failed on {}", event.path)
