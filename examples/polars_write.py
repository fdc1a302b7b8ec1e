"""Write a Polars DataFrame to flight-writer with DataFrame.write_database through ADBC (Flight SQL).

    make serve                                    # in one shell
    .venv/bin/python examples/polars_write.py     # in another

Needs `.venv/bin/pip install polars adbc-driver-flightsql` (`make test` installs them too).
"""

import os

import adbc_driver_flightsql.dbapi as flightsql
import polars as pl

URL = os.environ.get("FLIGHT_WRITER_URL", "grpc://127.0.0.1:8815")

df = pl.DataFrame({"service": ["api", "db", "api", "cache"], "latency_ms": [12.5, 3.1, 8.0, 0.4]})

# autocommit=True: the server has no transactions; without it the driver warns that it cannot turn autocommit off.
with flightsql.connect(URL, autocommit=True) as conn:
    # "examples.polars" is the schema "examples" and the table "polars": the dataset "examples/polars".
    # if_table_exists="append" creates the dataset on the first run and appends on later ones;
    # "fail" (Polars' default) creates it and fails if it has data; "replace" makes df its whole content.
    rows = df.write_database("examples.polars", connection=conn, engine="adbc", if_table_exists="append")

# write_database returns once the rows are in Parquet (the server's flight_sql.ack = "durable")
print(f"sent {rows} rows to examples/polars")
