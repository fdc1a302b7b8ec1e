"""Spark reads what the server writes, with the README's one-line read: compatible types (nanosecond
timestamps, times of day), event-time and field partitions typed the same as the other readers.

Needs Java (Debian's openjdk-17-jre-headless) and pyspark (dev extras): skipped without them, except under
CI=true, where it fails."""

from __future__ import annotations

import datetime
import os
import shutil

import pyarrow as pa
import pyarrow.flight as flight
import pytest

from helpers import action, put, running

UTC = datetime.UTC


@pytest.fixture(scope="module")
def spark():
    missing = [] if shutil.which("java") else ["java (apt-get install openjdk-17-jre-headless)"]
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        missing.append("pyspark (pip install -e '.[dev]')")
    if missing:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"Spark test needs {', '.join(missing)}")
        pytest.skip(f"needs {', '.join(missing)}")
    session = (
        SparkSession.builder.master("local[1]")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.timeType.enabled", "true")  # README: times of day
        .config("spark.driver.bindAddress", "127.0.0.1")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


def test_spark_reads_types_and_partitions(spark, data_root):
    times = [datetime.datetime(2026, 11, 27, h, 1, tzinfo=UTC) for h in (9, 10, 9)]
    batch = pa.record_batch(
        {
            "ts": pa.array(times, pa.timestamp("ns", "UTC")),
            "at": pa.array([1_000, 2_000, 3_000], pa.time32("ms")),
            "service": pa.array(["api", "db", "api"]),
            "n": pa.array([1, 2, 3], pa.int64()),
            "h": pa.array([0.5, 1.5, 2.5], pa.float16()),
        }
    )
    rule = {"partition": "event", "time_column": "ts", "fields": ["service"]}
    with running(data_root, datasets=rule) as svc, flight.connect(svc.location) as c:
        put(c, "spans", [batch])
        action(c, "flush")
    df = spark.read.option("mergeSchema", "true").parquet(str(data_root / "spans"))
    types = dict(df.dtypes)
    assert types["ts"] == "timestamp" and types["at"].startswith("time") and types["h"] == "float"
    assert types["hour"] == "int" and types["date"] == "date" and types["service"] == "string"
    rows = sorted((r.n, r.hour, r.service, r.at) for r in df.where("hour < 10").collect())
    assert rows == [(1, 9, "api", datetime.time(0, 0, 1)), (3, 9, "api", datetime.time(0, 0, 3))]
