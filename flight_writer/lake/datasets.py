"""What storage holds for a dataset: its Parquet objects and their schema (for Flight SQL's table modes).

A dataset ``a`` owns the objects under ``a/date=...``; ``a/b`` is another dataset, not part of ``a``.
"""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq

from flight_writer.lake.storage import Storage


class Datasets:
    def __init__(self, storage: Storage) -> None:
        self._storage = storage

    def names(self) -> list[str]:
        """Every dataset in storage: directories up to three levels deep that hold ``date=`` partitions.
        Lists directories only (one level at a time), never every object."""
        found: list[str] = []
        level = [""]
        for depth in range(4):  # a dataset has 1 to 3 segments; its own listing shows its date= folders
            deeper = []
            for prefix in level:
                children = [e.path for e in self._storage.operator.list(prefix) if e.path != prefix]
                names = [c[len(prefix) :].rstrip("/") for c in children if c.endswith("/")]
                if prefix and any(n.startswith("date=") for n in names):
                    found.append(prefix.rstrip("/"))
                if depth < 3:
                    deeper += [f"{prefix}{n}/" for n in names if not n.startswith(("date=", "_", "."))]
            level = deeper
        return sorted(found)

    def objects(self, dataset: str) -> list[str]:
        prefix = dataset + "/"
        return [
            p for p in self._storage.list(prefix) if p.endswith(".parquet") and p[len(prefix) :].startswith("date=")
        ]

    def recent_schemas(self, dataset: str, count: int) -> list[pa.Schema]:
        """The Arrow schemas of the dataset's ``count`` newest objects, oldest first. Buffers opened before
        a schema change are written around the time of the first files after it, so the newest file alone
        may be an older shape."""
        schemas = []
        for path in self._recent(dataset, count):
            with self._storage.operator.open(path, "rb") as f:
                schemas.append(pq.ParquetFile(io.BufferedReader(f)).schema_arrow.remove_metadata())
        return schemas

    def _recent(self, dataset: str, count: int) -> list[str]:
        """The paths of the ``count`` objects written last, oldest first: by the modification time the
        listing gives (part names start with their first seq, and the memory queue's seqs start at 1 again
        after a restart), then by name."""
        prefix = dataset + "/"
        found = []
        for e in self._storage.operator.scan(prefix):
            if e.path.endswith(".parquet") and e.path[len(prefix) :].startswith("date="):
                modified = e.metadata.last_modified
                found.append((modified.timestamp() if modified is not None else 0.0, e.path.rsplit("/", 1)[-1], e.path))
        return [path for _, _, path in sorted(found)[-count:]]

    def schema(self, dataset: str) -> pa.Schema | None:
        """The Arrow schema of the dataset's newest object."""
        footer = self._footer(dataset)
        return footer.schema.to_arrow_schema().remove_metadata() if footer is not None else None

    def parquet_schema(self, dataset: str) -> pq.ParquetSchema | None:
        """The Parquet schema of the newest object: what readers see, so ``string`` and ``large_string``
        (or a dictionary and its values) are the same column type here."""
        footer = self._footer(dataset)
        return footer.schema if footer is not None else None

    def _footer(self, dataset: str) -> pq.FileMetaData | None:
        recent = self._recent(dataset, 1)
        if not recent:
            return None
        with self._storage.operator.open(recent[0], "rb") as f:  # reads the footer, not the whole object
            return pq.ParquetFile(io.BufferedReader(f)).metadata


def parquet_schema_of(schema: pa.Schema) -> pq.ParquetSchema:
    """How Parquet would store ``schema`` (written as an empty file, as the writer would)."""
    sink = pa.BufferOutputStream()
    pq.ParquetWriter(sink, schema).close()
    return pq.ParquetFile(pa.BufferReader(sink.getvalue())).schema
