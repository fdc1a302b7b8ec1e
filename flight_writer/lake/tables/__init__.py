"""Lake tables: the files a dataset's folder holds, committed to an Apache Iceberg or Delta Lake table.

``base.py`` is the seam (:class:`Table`, :class:`Tables`, :class:`DataFile`, the conflict that makes commits
exactly once); ``iceberg.py`` and ``delta.py`` implement it; ``mapping.py`` maps the layout's partitions and
types onto a table. The committer that decides when to commit is the write role's (``write/commits.py``).
``compact.py`` rewrites small files into fewer as replace commits (with the intents that make a crash
harmless, and what adoption must leave alone); ``maintain.py`` measures maintenance and removes files no
version needs (``flight-writer tables``).

Tables sit where the files are: a dataset's folder is its table's location, under the same storage root
and credentials (``fs`` and ``s3``; Iceberg's catalog is SQL or REST, ``tables.*``). The packages are an
extra (``pip install 'flight-writer[tables]'``): :func:`make_tables` says so when they are missing.

May import: ``flight_writer.config`` and the rest of the lake; pyiceberg and deltalake only inside the
format modules, when a rule names the format.
"""

from __future__ import annotations

import os

from flight_writer.config import DatasetSettings, StorageSettings, TableSettings
from flight_writer.lake.tables.base import (
    APP_ID,
    CommitConflict,
    DataFile,
    Table,
    TableError,
    Tables,
)
from flight_writer.lake.tables.mapping import partition_columns, types_problem

__all__ = [
    "APP_ID",
    "CommitConflict",
    "DataFile",
    "Table",
    "TableError",
    "Tables",
    "make_tables",
    "partition_columns",
    "table_formats",
    "types_problem",
]

MODULES = {"iceberg": "pyiceberg", "delta": "deltalake"}


def table_formats(datasets: DatasetSettings) -> set[str]:
    """The table formats the dataset rules name (``none`` left out)."""
    return {r.table for r in (datasets, *(r for _, r in datasets.rules))} - {"none"}


def make_tables(settings: TableSettings, datasets: DatasetSettings, storage: StorageSettings) -> dict[str, Tables]:
    """The table formats the rules use, each opened on the storage the files go to. TableError naming what is
    missing (a package, a storage type tables do not support yet)."""
    formats = table_formats(datasets)
    if not formats:
        return {}
    for fmt in sorted(formats):
        try:
            __import__(MODULES[fmt])
        except ImportError:
            raise TableError(
                f"datasets.table = {fmt!r} needs the {MODULES[fmt]} package: pip install 'flight-writer[tables]'"
            ) from None
    base, iceberg_io, delta_options = _locations(storage)
    made: dict[str, Tables] = {}
    if "iceberg" in formats:
        from flight_writer.lake.tables.iceberg import IcebergTables

        made["iceberg"] = IcebergTables(settings, datasets, base, iceberg_io)
    if "delta" in formats:
        from flight_writer.lake.storage import Storage
        from flight_writer.lake.tables.delta import DeltaTables

        made["delta"] = DeltaTables(settings, datasets, base, delta_options, Storage.from_settings(storage))
    return made


def _locations(s: StorageSettings) -> tuple[str, dict[str, str], dict[str, str]]:
    """Where datasets are, as the table libraries name it, and the options they need to get there."""
    if s.type == "fs":
        return os.path.abspath(s.root), {}, {}
    if s.type != "s3":
        raise TableError(f"lake tables support storage.type fs and s3 so far, not {s.type!r}")
    options = dict(s.options)
    base = f"s3://{s.bucket}/{s.root.strip('/')}".rstrip("/")
    region = s.region or options.get("region", "us-east-1")
    key, secret = options.get("access_key_id", ""), options.get("secret_access_key", "")
    # bounded as the files' own operations are (storage.timeout, io_timeout): an outage is an error, retried
    iceberg = {"s3.region": region, "s3.connect-timeout": str(s.timeout), "s3.request-timeout": str(s.io_timeout)}
    delta = {
        "AWS_REGION": region,
        "AWS_CONDITIONAL_PUT": "etag",
        "connect_timeout": f"{s.timeout:g}s",
        "timeout": f"{s.io_timeout:g}s",
    }
    if s.endpoint:
        iceberg["s3.endpoint"] = s.endpoint
        delta["AWS_ENDPOINT_URL"] = s.endpoint
        if s.endpoint.startswith("http://"):
            delta["AWS_ALLOW_HTTP"] = "true"
    if key:
        iceberg["s3.access-key-id"], delta["AWS_ACCESS_KEY_ID"] = key, key
    if secret:
        iceberg["s3.secret-access-key"], delta["AWS_SECRET_ACCESS_KEY"] = secret, secret
    return base, iceberg, delta
