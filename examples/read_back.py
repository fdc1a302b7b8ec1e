"""Read back what the other examples sent, with DuckDB, Polars and pyarrow.dataset, and print row counts.

    make serve                                 # in one shell; then run some of the other examples
    .venv/bin/python examples/read_back.py     # in another, from the folder `make serve` ran in

Files are Hive-partitioned (<root>/<dataset>/date=YYYY-MM-DD/hour=H/part-....parquet), so every reader
also sees `date` and `hour` as columns. A dataset's older files may lack columns added later (the default
datasets.schema = "evolve"), hence union_by_name for DuckDB and a unified schema for Polars and pyarrow.
Needs `.venv/bin/pip install duckdb polars` (`make test` installs them too).
"""

import os
from pathlib import Path

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.flight as flight
import pyarrow.parquet as pq

URL = os.environ.get("FLIGHT_WRITER_URL", "grpc://127.0.0.1:8815")
# where the server writes: `make serve` uses ./data (configs/settings.toml, storage.root; STORAGE_PATH overrides it)
ROOT = Path(os.environ.get("STORAGE_PATH", "./data"))

# First ask the server to write out everything it has received (a queued stream's batches are otherwise
# written within writer.flush_interval, 10 s). Reading needs no server: without one, read what is there.
try:
    with flight.connect(URL) as client:
        [result] = client.do_action(flight.Action("flush", b"{}"))
        print("flush:", result.body.to_pybytes().decode())
except flight.FlightUnavailableError:
    print(f"no server at {URL}: reading what is stored")


def unified_schema(folder: Path) -> pa.Schema:
    """The union of the schemas of a dataset's files (Polars and pyarrow otherwise take one file's schema)."""
    schemas = [pq.read_schema(f) for f in sorted(folder.rglob("*.parquet"))]
    return pa.unify_schemas(schemas, promote_options="permissive")


def with_duckdb(folder: Path) -> int:
    # In SQL (a duckdb shell, or duckdb.sql("...").show() in Python):
    #   SELECT count(*) FROM read_parquet('data/examples/pyarrow/**/part-*.parquet',
    #                                     hive_partitioning = true, union_by_name = true)
    query = "SELECT count(*) FROM read_parquet(?, hive_partitioning = true, union_by_name = true)"
    [(rows,)] = duckdb.execute(query, [f"{folder}/**/part-*.parquet"]).fetchall()
    return rows


def with_polars(folder: Path) -> int:
    frame = pl.scan_parquet(
        f"{folder}/**/part-*.parquet",
        hive_partitioning=True,
        schema=pl.from_arrow(unified_schema(folder).empty_table()).schema,
        missing_columns="insert",  # a file without a column reads as nulls in it
        cast_options=pl.ScanCastOptions(integer_cast="upcast", float_cast="upcast"),  # types widened later
    )
    return frame.collect().height  # scan_parquet is lazy: collect() reads


def with_pyarrow(folder: Path) -> int:
    folders = ds.dataset(folder, format="parquet", partitioning="hive").partitioning.schema  # date, hour
    schema = pa.unify_schemas([unified_schema(folder), folders])
    return ds.dataset(folder, format="parquet", partitioning="hive", schema=schema).to_table().num_rows


# The examples write datasets named examples/<something>: one folder each under the storage root.
datasets = sorted(p for p in (ROOT / "examples").glob("*") if p.is_dir() and any(p.rglob("*.parquet")))
if not datasets:
    raise SystemExit(f"no Parquet files under {ROOT / 'examples'}: run the other examples first")
for folder in datasets:
    name = folder.relative_to(ROOT).as_posix()
    print(
        f"{name}: DuckDB {with_duckdb(folder)} rows, Polars {with_polars(folder)} rows, "
        f"pyarrow.dataset {with_pyarrow(folder)} rows"
    )

# Any SQL over the files, e.g. all the example datasets together (every one has service and latency_ms).
# duckdb.sql(...).show() prints the result as a table; no duckdb command-line tool is needed.
everything = f"{ROOT}/examples/*/**/part-*.parquet"
duckdb.sql(
    """SELECT service, count(*) AS rows, round(avg(latency_ms), 2) AS avg_latency_ms
       FROM read_parquet($files, hive_partitioning = true, union_by_name = true)
       GROUP BY service ORDER BY service""",
    params={"files": everything},
).show()
