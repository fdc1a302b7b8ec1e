"""Write a pandas DataFrame to flight-writer with DataFrame.to_sql through ADBC (Flight SQL).

    make serve                                     # in one shell
    .venv/bin/python examples/pandas_to_sql.py     # in another

Needs `.venv/bin/pip install pandas adbc-driver-flightsql` (`make test` installs them too).
"""

import os

import adbc_driver_flightsql.dbapi as flightsql
import pandas as pd

URL = os.environ.get("FLIGHT_WRITER_URL", "grpc://127.0.0.1:8815")

df = pd.DataFrame({"service": ["api", "db", "api"], "latency_ms": [12.5, 3.1, 8.0]})

# autocommit=True: the server has no transactions; without it the driver warns that it cannot turn autocommit off.
with flightsql.connect(URL, autocommit=True) as conn:
    # The dataset "examples/pandas". if_exists="append" creates it on the first run and appends on later ones.
    # Not if_exists="replace": pandas then runs DROP TABLE, and this server runs no SQL
    # (use the ADBC cursor's adbc_ingest(..., mode="replace") instead: examples/adbc_ingest.py).
    rows = df.to_sql("pandas", conn, schema="examples", index=False, if_exists="append")

# to_sql returns once the rows are in Parquet (the server's flight_sql.ack = "durable")
print(f"sent {rows} rows to examples/pandas")
