"""What a client's input may cost the server (issue "Hardening round", finding 3): the nesting check of a new
dataset name does not grow with the number of datasets; Flight SQL catalog calls answer from the names the
server keeps, with bounded patterns, rows and schema reads; protobuf messages are bounded in fields."""

from __future__ import annotations

import random
import re
from pathlib import Path

import adbc_driver_flightsql.dbapi as dbapi
import adbc_driver_manager
import pyarrow as pa
import pyarrow.flight as flight
import pyarrow.parquet as pq
import pytest

from flight_writer.config import DatasetSettings
from flight_writer.ingest import admission as admission_module
from flight_writer.ingest.admission import Admission, AdmissionError
from flight_writer.ingest.flightsql import messages as flightsql
from flight_writer.ingest.flightsql.protowire import bytes_field, encode_varint, varint_field
from flight_writer.lake.datasets import Datasets

from helpers import action, put, running, send, wait_for

TABLE = pa.table({"a": pa.array([1, 2, 3], pa.int64()), "b": ["x", "y", "z"]})


def stored(root: Path, *names: str) -> None:
    """Datasets as another process would have left them in storage: one Parquet file each."""
    for name in names:
        folder = root / name / "date=2026-01-01"
        folder.mkdir(parents=True)
        pq.write_table(TABLE, folder / "part-1.parquet")


def get_tables(catalog=None, schema=None, table=None, types=(), include_schema=False) -> bytes:
    """A ``CommandGetTables`` in its ``Any``, as a ticket or command."""
    value = b"".join(
        bytes_field(number, text.encode())
        for number, text in ((1, catalog), (2, schema), (3, table))
        if text is not None
    )
    value += b"".join(bytes_field(4, t if isinstance(t, bytes) else t.encode()) for t in types)
    value += varint_field(5, 1) if include_schema else b""
    return flightsql.pack_any(flightsql.GET_TABLES, value)


def answer(client: flight.FlightClient, command: bytes) -> pa.Table:
    """GetFlightInfo then DoGet, as Flight SQL clients call."""
    info = client.get_flight_info(flight.FlightDescriptor.for_command(command))
    return client.do_get(info.endpoints[0].ticket).read_all()


def table_names(table: pa.Table) -> list[str]:
    return [
        "/".join(p for p in (r["catalog_name"], r["db_schema_name"], r["table_name"]) if p) for r in table.to_pylist()
    ]


# -- LIKE patterns ------------------------------------------------------------------------------------------


def test_a_1_mib_pattern_is_refused_naming_the_limit_and_one_of_1024_is_answered(service, client):
    """A 1 MiB pattern over 106 tables took 9-13.5 s of CPU, after the client had given up."""
    put(client, "team/spans_2026", [TABLE.to_batches()[0]])
    huge = "%" * (1 << 20) + "!"
    for command in (get_tables(table=huge), get_tables(schema=huge)):
        with pytest.raises(flight.FlightServerError, match=r"is 1048577 characters; 1024 is the most this server"):
            client.get_flight_info(flight.FlightDescriptor.for_command(command))
        with pytest.raises(flight.FlightServerError, match=r"filter_pattern is 1048577 characters; 1024 is the"):
            client.do_get(flight.Ticket(command)).read_all()
    assert table_names(answer(client, get_tables(table="%" * 1018 + "s_2026"))) == ["team/spans_2026"]
    assert table_names(answer(client, get_tables(table="%" * 1023 + "!"))) == []
    with (
        dbapi.connect(service.location, autocommit=True) as conn,
        pytest.raises(adbc_driver_manager.Error, match="1024 is the most"),
    ):
        conn.adbc_get_objects(depth="tables", table_name_filter="%" * 2000).read_all()


def reference_like(pattern: str, text: str) -> bool:
    """SQL LIKE by a regular expression: exponential on some inputs, so for short ones only."""
    out, chars = [], iter(pattern)
    for c in chars:
        out.append(".*" if c == "%" else "." if c == "_" else re.escape(next(chars, "\\") if c == "\\" else c))
    return re.fullmatch("".join(out), text, re.DOTALL) is not None


def test_like_is_sql_like_with_backslash_escapes():
    rng = random.Random(7)
    for _ in range(20_000):
        pattern = "".join(rng.choice("ab%_\\") for _ in range(rng.randint(0, 8)))
        text = "".join(rng.choice("ab%_\\") for _ in range(rng.randint(0, 8)))
        assert flightsql.like(pattern, text) == reference_like(pattern, text), (pattern, text)
    assert flightsql.like("spans\\_2026", "spans_2026") and not flightsql.like("spans\\_2026", "spansx2026")
    assert flightsql.like("100\\%", "100%") and not flightsql.like("100\\%", "1000")
    assert flightsql.like("a\\\\b", "a\\b") and flightsql.like("end\\", "end\\")


def test_patterns_that_cost_the_old_matchers_are_answered_correctly():
    """Quadratic for the old matcher (len(pattern) x len(text) Python steps per name), exponential for a
    regular expression before it."""
    long_name = "a" * 128
    assert flightsql.like("%a" * 128, long_name) and not flightsql.like("%a" * 129, long_name)
    assert not flightsql.like("%a%a%a%a%a%a%a%a%a%a%a%b", "a" * 300)
    assert not flightsql.like("%" + "_" * 60 + "b%", long_name)
    assert flightsql.like("%" + "_" * 60 + "a%", long_name)
    assert flightsql.like("%a_a%" * 10 + "%", long_name)
    assert flightsql.like("%_%_" * 256, "x" * 512) and not flightsql.like("%_%_" * 256, "x" * 511)
    assert flightsql.like("%" * 1023 + "a", long_name) and not flightsql.like("%" * 1023 + "!", long_name)
    with pytest.raises(flightsql.LimitError, match="a LIKE pattern of 1025 characters; 1024 is the most"):
        flightsql.Like("%" * 1025)


def test_escaped_patterns_through_adbc(data_root):
    with running(data_root) as svc, dbapi.connect(svc.location, autocommit=True) as conn:
        for name in ("spans_2026", "spansx2026"):
            with conn.cursor() as cur:
                cur.adbc_ingest(name, TABLE, mode="create")

        def tables(pattern: str) -> set[str]:
            objects = conn.adbc_get_objects(depth="tables", table_name_filter=pattern).read_all().to_pylist()
            return {
                t["table_name"]
                for c in objects
                for s in c["catalog_db_schemas"] or []
                for t in s["db_schema_tables"] or []
            }

        assert tables("spans_2026") == {"spans_2026", "spansx2026"}
        assert tables("spans\\_2026") == {"spans_2026"}


# -- what one catalog call reads and answers ---------------------------------------------------------------


def test_catalog_calls_list_storage_once_and_see_datasets_admitted_since(data_root, monkeypatch):
    """Every call listed storage (10,000 directory listings at 10,000 datasets: 1-2.6 s a call)."""
    listings = []
    names = Datasets.names
    monkeypatch.setattr(Datasets, "names", lambda self: listings.append(1) or names(self))
    stored(data_root, "org/team/old", "solo")
    with running(data_root) as svc, flight.connect(svc.location) as c:
        for _ in range(3):
            assert table_names(answer(c, get_tables())) == ["org/team/old", "solo"]
        put(c, "org/team/new", [TABLE.to_batches()[0]])  # answered before it is stored
        assert table_names(answer(c, get_tables(catalog="org"))) == ["org/team/new", "org/team/old"]
        assert len(listings) == 1
        # another process's dataset shows once storage is listed again, in the background: RELIST seconds
        # after the last listing (0 here), a catalog call starts it and answers from what it has
        stored(data_root, "other/ds")
        monkeypatch.setattr(admission_module, "RELIST", 0.0)
        wait_for(lambda: "other/ds" in table_names(answer(c, get_tables())), "the relisting")
        assert len(listings) >= 2


def test_include_schema_reads_at_most_max_table_schemas_and_answers_at_most_max_catalog_rows(data_root, monkeypatch):
    monkeypatch.setattr(flightsql, "MAX_TABLE_SCHEMAS", 2)
    monkeypatch.setattr(flightsql, "MAX_CATALOG_ROWS", 3)
    stored(data_root, "org/a/t1", "org/a/t2", "org/b/t3")
    with running(data_root) as svc, flight.connect(svc.location) as c:
        with pytest.raises(
            flight.FlightServerError, match=r"3 tables match with include_schema; 2 is the most one call reads"
        ):
            answer(c, get_tables(include_schema=True))
        two = answer(c, get_tables(schema="a", include_schema=True))
        assert table_names(two) == ["org/a/t1", "org/a/t2"]
        assert pa.ipc.read_schema(pa.py_buffer(two.column("table_schema")[0].as_py())) == TABLE.schema
        assert len(answer(c, get_tables())) == 3
        stored(data_root, "org/b/t4")
        put(c, "org/b/t5", [TABLE.to_batches()[0]])
        with pytest.raises(flight.FlightServerError, match="more than 3 rows, the most one call returns"):
            answer(c, get_tables())
        assert len(answer(c, get_tables(schema="b"))) == 2  # t3 and t5; t4 is storage's, not yet listed


def test_table_types_are_a_set_and_bad_ones_a_clear_error(client):
    put(client, "typed", [TABLE.to_batches()[0]])
    many = ["VIEW"] * 5000 + ["TABLE"]
    assert table_names(answer(client, get_tables(types=many))) == ["typed"]
    assert table_names(answer(client, get_tables(types=["VIEW"]))) == []
    with pytest.raises(flight.FlightServerError, match="malformed message: field 4 is not UTF-8") as info:
        client.do_get(flight.Ticket(get_tables(types=[b"\xff"]))).read_all()
    assert "Traceback" not in str(info.value)


# -- protobuf ------------------------------------------------------------------------------------------------


def sql_info(value: bytes) -> flight.Ticket:
    return flight.Ticket(flightsql.pack_any(flightsql.GET_SQL_INFO, value))


def test_protobuf_messages_are_bounded_in_fields_and_refused_naming_the_limit(client):
    ids = b"".join(varint_field(1, 0) for _ in range(10_000))
    assert client.do_get(sql_info(ids)).read_all().num_rows == 1  # each id answered once
    with pytest.raises(flight.FlightServerError, match="a message of more than 10000 fields; 10000 is the most"):
        client.do_get(sql_info(ids + varint_field(1, 1))).read_all()
    packed = lambda n: bytes_field(1, encode_varint(0) * n)  # noqa: E731
    assert client.do_get(sql_info(packed(10_000))).read_all().num_rows == 1
    with pytest.raises(flight.FlightServerError, match="a packed field of more than 10000 values"):
        client.do_get(sql_info(packed(10_001))).read_all()
    with pytest.raises(flight.FlightServerError, match="Flight SQL command refused: a message of more than 10000"):
        client.get_flight_info(flight.FlightDescriptor.for_command(b"\x18\x01" * 10_001))
    with pytest.raises(flight.FlightServerError, match="do_put Flight SQL command refused: a message of more than"):
        options = b"".join(bytes_field(1000, bytes_field(1, b"k") + bytes_field(2, b"v")) for _ in range(10_001))
        send(
            client,
            flight.FlightDescriptor.for_command(flightsql.pack_any(flightsql.INGEST, options)),
            TABLE.to_batches()[0],
        )
    for malformed in (bytes_field(1, b"\x80"), b"\x09\x01\x02", b"\x0d\x01"):  # varint, fixed64, fixed32 cut short
        with pytest.raises(flight.FlightServerError, match="malformed message: truncated") as info:
            client.do_get(sql_info(malformed)).read_all()
        assert "Traceback" not in str(info.value)
    assert action(client, "status")["version"]


# -- dataset names -------------------------------------------------------------------------------------------


class _Counted(str):
    """A dataset name from storage that counts how often it is compared with another."""

    examined = 0

    def startswith(self, *args):  # type: ignore[override]
        _Counted.examined += 1
        return super().startswith(*args)

    def __eq__(self, other):
        _Counted.examined += 1
        return super().__eq__(other)

    __hash__ = str.__hash__


class _Storage:
    def __init__(self, names: list[str]) -> None:
        self._names = names

    def names(self) -> list[str]:
        return self._names

    def recent_schemas(self, dataset: str, count: int) -> list[pa.Schema]:
        return []


def test_a_new_name_is_checked_in_lookups_not_against_every_known_name():
    """The check compared each new name with every known one: 10-16 ms a name at 20,000 names."""
    known = [_Counted(f"org{k % 10}/team{k // 10 % 100}/t{k}") for k in range(20_000)] + [_Counted("solo")]
    admission = Admission(_Storage(known), DatasetSettings())  # type: ignore[arg-type]
    schema = pa.schema([("a", pa.int64())])

    def admit(name: str) -> int:
        _Counted.examined = 0
        admission.admit(name, schema, lambda schema, stored: None)
        return _Counted.examined

    admit("first")  # lists storage
    assert [admit(f"org{k}/team{k}/new") for k in range(10)] == [0] * 10
    for name, message in (
        ("org1/team2/t21/x", "'org1/team2/t21/x' would nest inside dataset 'org1/team2/t21'"),
        ("org1/team2", "'org1/team2' would nest around dataset 'org1/team2/t10021': readers of 'org1/team2' would"),
        ("org1", "'org1' would nest around dataset 'org1/team0/t1'"),  # the first known under it, in name order
        ("solo/x", "'solo/x' would nest inside dataset 'solo': readers of 'solo' would read 'solo/x''s files too. "
         "Name it beside it, e.g. 'solo-x'"),
        ("first/x", "'first/x' would nest inside dataset 'first'"),
        ("org1/team1/new/y", "'org1/team1/new/y' would nest inside dataset 'org1/team1/new'"),
    ):  # fmt: skip
        _Counted.examined = 0
        with pytest.raises(AdmissionError, match=re.escape(message)):
            admission.admit(name, schema, lambda schema, stored: None)
        assert _Counted.examined <= 2
    assert admit("org1/team2/t21") <= 2  # known: admitted again
    assert "first" in admission.names() and "org1/team1/new" in admission.names() and len(admission.names()) == 20_012


def test_nesting_is_refused_against_storage_names_through_both_doors(data_root):
    stored(data_root, "org/team", "solo")
    batch = TABLE.to_batches()[0]
    with running(data_root) as svc, flight.connect(svc.location) as c:
        with pytest.raises(flight.FlightServerError, match="'org/team/spans' would nest inside dataset 'org/team'"):
            send(c, flight.FlightDescriptor.for_path("org", "team", "spans"), batch)
        with pytest.raises(flight.FlightServerError, match="'org' would nest around dataset 'org/team'"):
            send(c, flight.FlightDescriptor.for_path("org"), batch)
        with (
            dbapi.connect(svc.location, autocommit=True) as conn,
            conn.cursor() as cur,
            pytest.raises(adbc_driver_manager.Error, match="'solo/spans' would nest inside dataset 'solo'"),
        ):
            cur.adbc_ingest("spans", TABLE, mode="create_append", db_schema_name="solo")
        put(c, "org/team-spans", [batch])  # beside it is fine
        assert table_names(answer(c, get_tables())) == ["org/team", "org/team-spans", "solo"]
