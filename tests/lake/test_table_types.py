"""Types a lake table cannot hold (lake/tables/mapping.py): ``types_problem`` names the column and why, for
each format; through a real server, a stream of such a type to a table dataset is refused at its start with
a FlightServerError naming the column, and the server goes on serving: the next stream is committed and read
back from the table. Types a table can hold land there with their values."""

from __future__ import annotations

import datetime as dt
import decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.flight as flight
import pytest

from flight_writer.lake.tables import make_tables, types_problem

from helpers import put, running, send

FORMATS = ["iceberg", "delta"]
# refused by both formats, whatever the types policy
BOTH = [
    pa.uint8(),
    pa.uint16(),
    pa.uint32(),
    pa.uint64(),
    pa.duration("s"),
    pa.duration("us"),
    pa.duration("ns"),
    pa.month_day_nano_interval(),
    pa.list_(pa.uint32()),
    pa.struct([("ok", pa.int32()), ("took", pa.duration("ms"))]),
    pa.map_(pa.string(), pa.uint64()),
    pa.dictionary(pa.int32(), pa.uint16()),
]
DELTA_ONLY = [pa.time32("s"), pa.time32("ms"), pa.time64("us"), pa.time64("ns"), pa.float16()]
ICEBERG_ONLY = [pa.timestamp("ns"), pa.timestamp("ns", "UTC"), pa.timestamp("ms", "UTC"), pa.time64("ns")]
# stored as they are by both (after the compatible policy, which makes these of the above microseconds)
HELD = [
    pa.int8(),
    pa.int16(),
    pa.int32(),
    pa.int64(),
    pa.float32(),
    pa.float64(),
    pa.bool_(),
    pa.string(),
    pa.large_string(),
    pa.binary(),
    pa.date32(),
    pa.decimal128(12, 3),
    pa.timestamp("us"),
    pa.timestamp("us", "UTC"),
    pa.list_(pa.string()),
    pa.struct([("k", pa.int32()), ("v", pa.string())]),
    pa.map_(pa.string(), pa.int64()),
    pa.dictionary(pa.int32(), pa.string()),
]


def schema_with(kind: pa.DataType) -> pa.Schema:
    return pa.schema([("id", pa.int64()), ("bad_column", kind)])


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("kind", BOTH, ids=str)
def test_types_neither_format_holds_are_refused_naming_the_column(fmt: str, kind: pa.DataType) -> None:
    problem = types_problem(fmt, schema_with(kind))
    assert problem is not None
    assert "'bad_column'" in problem and str(kind) in problem and f"'{fmt}'" in problem
    assert "cannot hold" in problem


@pytest.mark.parametrize("kind", DELTA_ONLY, ids=str)
def test_delta_refuses_times_of_day_and_half_floats(kind: pa.DataType) -> None:
    problem = types_problem("delta", schema_with(kind))
    assert problem is not None and "'bad_column'" in problem and "Delta" in problem
    assert ("times of day" if pa.types.is_time(kind) else "half floats") in problem


@pytest.mark.parametrize("kind", ICEBERG_ONLY, ids=str)
def test_iceberg_refuses_other_than_microsecond_times(kind: pa.DataType) -> None:
    problem = types_problem("iceberg", schema_with(kind))
    assert problem is not None and "'bad_column'" in problem and "Iceberg" in problem
    assert "microseconds" in problem


def test_what_one_format_refuses_the_other_may_hold() -> None:
    assert types_problem("iceberg", schema_with(pa.time64("us"))) is None
    assert types_problem("delta", schema_with(pa.timestamp("ns", "UTC"))) is None
    assert types_problem("iceberg", schema_with(pa.float16())) is not None  # neither has half floats
    assert types_problem("iceberg", schema_with(pa.date64())) is not None


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("kind", HELD, ids=str)
def test_types_both_formats_hold_pass(fmt: str, kind: pa.DataType) -> None:
    assert types_problem(fmt, schema_with(kind)) is None


@pytest.mark.parametrize("fmt", FORMATS)
def test_timestamps_in_a_zone_other_than_utc_are_refused(fmt: str) -> None:
    problem = types_problem(fmt, schema_with(pa.timestamp("us", "Europe/Paris")))
    assert problem is not None and "'bad_column'" in problem


# -- through a real server -------------------------------------------------------------------------------
def committed_rows(svc, dataset: str) -> list[dict]:
    """The dataset's table, read back through the seam (a handle of the test's own)."""
    s = svc.settings
    tables = make_tables(s.tables, s.datasets, s.storage)
    try:
        table = tables[s.datasets.rule_for(dataset).table].open(dataset, None)
        assert table is not None, f"no table for {dataset!r}"
        return sorted(table.scan().select(["id"]).to_pylist(), key=lambda r: r["id"])
    finally:
        for t in tables.values():
            t.close()


REFUSED_BY_SERVER = {
    # (format, types policy): columns the stored schema still has that the table cannot hold
    ("delta", "compatible"): [("u", pa.array([1, 2], pa.uint32())), ("t", pa.array([1, 2], pa.time32("s")))],
    ("iceberg", "compatible"): [("u", pa.array([1, 2], pa.uint64())), ("took", pa.array([1, 2], pa.duration("s")))],
    ("iceberg", "exact"): [("ts", pa.array([1, 2], pa.timestamp("ns", "UTC"))), ("h", pa.array([1, 2], pa.float16()))],
    ("delta", "exact"): [("h", pa.array([1.5, 2.5], pa.float16()))],
}


@pytest.mark.parametrize(("fmt", "types"), list(REFUSED_BY_SERVER), ids=lambda v: str(v))
def test_the_server_refuses_a_stream_a_table_cannot_hold_and_goes_on(tmp_path: Path, fmt: str, types: str) -> None:
    with (
        running(tmp_path / "data", datasets={"table": fmt, "types": types}, tables={"commit_interval": 3600}) as svc,
        flight.connect(svc.location) as client,
    ):
        for name, values in REFUSED_BY_SERVER[(fmt, types)]:
            batch = pa.record_batch({"id": pa.array([1, 2], pa.int64()), name: values})
            with pytest.raises(flight.FlightServerError, match=f"column '{name}'.*cannot hold") as refused:
                send(client, flight.FlightDescriptor.for_path("typed"), batch)
            assert f"datasets.table = '{fmt}'" in str(refused.value)
        good = pa.record_batch({"id": pa.array([10, 11, 12], pa.int64()), "v": pa.array(["a", "b", "c"])})
        [*_, final] = put(client, "typed", [good], ack="committed")
        assert final["state"] == "committed"
        assert committed_rows(svc, "typed") == [{"id": 10}, {"id": 11}, {"id": 12}]  # only the good stream's


def rich_batch(fmt: str) -> pa.RecordBatch:
    n = 3
    at = [dt.datetime(2026, 12, 6, 9, 0, k, 250_000, tzinfo=dt.UTC) for k in range(n)]
    columns = {
        "id": pa.array(range(n), pa.int64()),
        "i8": pa.array([-1, 0, 1], pa.int8()),
        "i16": pa.array([-300, 0, 300], pa.int16()),
        "f32": pa.array([0.5, None, 1.5], pa.float32()),
        "f16": pa.array([0.5, 1.0, 1.5], pa.float16()),  # compatible: stored as float32
        "s": pa.array(["a", None, "c"]),
        "ls": pa.array(["x", "y", "z"], pa.large_string()),
        "d": pa.array(["p", "q", "p"]).dictionary_encode(),
        "b": pa.array([b"\x00", b"", None]),
        "ok": pa.array([True, False, None]),
        "at": pa.array(at, pa.timestamp("us", "UTC")),
        "at_ns": pa.array(at, pa.timestamp("ns", "UTC")),  # compatible: stored as microseconds
        "local": pa.array([a.replace(tzinfo=None) for a in at], pa.timestamp("us")),
        "day": pa.array([dt.date(2026, 12, k + 1) for k in range(n)], pa.date32()),
        "dec": pa.array([decimal.Decimal("1.250"), None, decimal.Decimal("-3.000")], pa.decimal128(12, 3)),
        "tags": pa.array([["a", "b"], [], None], pa.list_(pa.string())),
        "st": pa.array([{"k": k, "v": f"v{k}"} for k in range(n)], pa.struct([("k", pa.int32()), ("v", pa.string())])),
        "m": pa.array([[("a", 1)], [], [("b", 2), ("c", 3)]], pa.map_(pa.string(), pa.int64())),
    }
    if fmt == "iceberg":
        columns["t"] = pa.array([dt.time(9, 0, k) for k in range(n)], pa.time64("us"))
    return pa.record_batch(columns)


@pytest.mark.parametrize("fmt", FORMATS)
def test_types_a_table_holds_are_read_back_from_it_value_for_value(tmp_path: Path, fmt: str) -> None:
    batch = rich_batch(fmt)
    with (
        running(tmp_path / "data", datasets={"table": fmt}, tables={"commit_interval": 3600}) as svc,
        flight.connect(svc.location) as client,
    ):
        [*_, final] = put(client, "rich", [batch], ack="committed")
        assert final["state"] == "committed"
        s = svc.settings
        tables = make_tables(s.tables, s.datasets, s.storage)
        table = tables[fmt].open("rich", None)
        assert table is not None
        got = table.scan()
        for t in tables.values():
            t.close()
    got = got.sort_by("id")
    sent = batch.to_pylist()
    for name in batch.schema.names:
        values = got.column(name).to_pylist()
        expected = [r[name] for r in sent]
        if name == "m":  # maps come back as lists of pairs
            values = [None if v is None else [tuple(p) for p in v] for v in values]
        assert values == expected, name
    assert got.column("date").to_pylist()[0] is not None and got.column("hour").to_pylist()[0] is not None
