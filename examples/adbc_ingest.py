"""Write Arrow tables to flight-writer through ADBC's Flight SQL driver (bulk ingestion): a create, then an append.

    make serve                                   # in one shell
    .venv/bin/python examples/adbc_ingest.py     # in another

Needs `.venv/bin/pip install adbc-driver-flightsql` (`make test` installs it too). The server runs no SQL:
it takes adbc_ingest only, which returns once the rows are in Parquet (the server's flight_sql.ack = "durable").
"""

import os

import adbc_driver_flightsql.dbapi as flightsql
import pyarrow as pa

URL = os.environ.get("FLIGHT_WRITER_URL", "grpc://127.0.0.1:8815")

first = pa.table({"service": ["api", "db", "api"], "latency_ms": [12.5, 3.1, 8.0]})
more = pa.table({"service": ["cache", "api"], "latency_ms": [0.4, 9.9]})
rows_sent = 0

# autocommit=True: the server has no transactions; without it the driver warns that it cannot turn autocommit off.
with flightsql.connect(URL, autocommit=True) as conn, conn.cursor() as cur:
    # The table names the dataset, db_schema_name a leading segment: this writes the dataset "examples/adbc".
    # mode="create" refuses a dataset that already has data (ALREADY_EXISTS), as on a second run of this script.
    try:
        rows = cur.adbc_ingest("adbc", first, mode="create", db_schema_name="examples")
        print(f"create: {rows} rows stored")
        rows_sent += rows
    except flightsql.OperationalError as exc:
        if "ALREADY_EXISTS" not in str(exc):
            raise
        print("create: examples/adbc already has data (an earlier run), so this run only appends")

    # mode="append" adds to a dataset that has data (NOT_FOUND if it has none); "create_append" does either,
    # "replace" makes the new rows the dataset's whole content.
    rows = cur.adbc_ingest("adbc", more, mode="append", db_schema_name="examples")
    print(f"append: {rows} rows stored")
    rows_sent += rows

print(f"sent {rows_sent} rows to examples/adbc")
