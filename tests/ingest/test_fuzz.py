"""Generated bad input against a live server: every call ends in success or a Flight error, the server keeps
serving, and data acknowledged before is intact (Hypothesis)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.flight as flight
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from flight_writer import Service
from flight_writer.ingest.flightsql import messages as flightsql

from helpers import action, put, read_dataset, running, send

KEEP = [pa.record_batch({"i": pa.array(range(k * 100, k * 100 + 100), pa.int64())}) for k in range(3)]
EXAMPLES = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[tuple[Service, flight.FlightClient]]:
    root = tmp_path_factory.mktemp("fuzz") / "data"
    with running(root, server={"max_columns": "200", "max_nesting": "8"}) as svc, flight.connect(svc.location) as c:
        put(c, "keep", KEEP)  # acknowledged before any bad input
        yield svc, c
        action(c, "flush")
        table = read_dataset(root, "keep", sort_by="i")
        assert table.column("i").to_pylist() == list(range(300))


def survives(c: flight.FlightClient, call) -> None:
    """``call`` ends in success or a Flight error whose message carries no Python traceback (UNIMPLEMENTED
    arrives as ``ArrowNotImplementedError``, with one: pyarrow has no Flight class for it, see README), and
    the server answers ``status`` afterwards."""
    try:
        call()
    except pa.ArrowNotImplementedError:
        pass
    except flight.FlightError as exc:
        assert "Traceback" not in str(exc), exc
    assert action(c, "status")["version"]


text = st.text(min_size=0, max_size=40)
segments = st.lists(st.one_of(text, st.sampled_from(["..", ".", "a/b", "ok", "x" * 200])), min_size=0, max_size=5)


def arrow_types(depth: int = 3) -> st.SearchStrategy[pa.DataType]:
    leaves = st.sampled_from(
        [pa.int8(), pa.int64(), pa.uint64(), pa.float32(), pa.string(), pa.large_binary(), pa.bool_(),
         pa.timestamp("ns", "UTC"), pa.timestamp("s"), pa.time32("ms"), pa.date32(), pa.decimal128(10, 2),
         pa.null(), pa.dictionary(pa.int32(), pa.string()), pa.duration("us"), pa.binary(4)]
    )  # fmt: skip
    if depth == 0:
        return leaves
    inner = arrow_types(depth - 1)
    return st.one_of(
        leaves,
        inner.map(pa.list_),
        st.lists(st.tuples(st.sampled_from("abcde"), inner), min_size=1, max_size=3, unique_by=lambda f: f[0]).map(
            pa.struct
        ),
        st.tuples(st.sampled_from([pa.string(), pa.int32()]), inner).map(lambda kv: pa.map_(*kv)),
    )


@EXAMPLES
@given(path=segments, metadata=st.binary(max_size=200), ack=st.one_of(st.none(), text))
def test_do_put_paths_metadata_and_headers(server, path, metadata, ack):
    _, c = server
    headers = [] if ack is None else [(b"x-flight-writer-ack", ack.encode("utf-8", "surrogatepass"))]

    descriptor = flight.FlightDescriptor.for_path(*[p.encode("utf-8", "surrogatepass") for p in path])
    survives(c, lambda: send(c, descriptor, KEEP[0], headers, metadata))


@EXAMPLES
@given(fields=st.lists(st.tuples(text, arrow_types()), min_size=1, max_size=6))
def test_do_put_schemas(server, fields):
    _, c = server

    try:  # what the client itself cannot build is not a server test
        schema = pa.schema(fields)
        batch = pa.RecordBatch.from_pylist([{}], schema=schema)
    except (pa.ArrowException, ValueError, TypeError):
        assume(False)

    survives(c, lambda: send(c, flight.FlightDescriptor.for_path("fuzz-schemas"), batch))


@EXAMPLES
@given(
    kind=st.one_of(st.sampled_from(["ack", "status", "flush", "CloseSession", "CreatePreparedStatement"]), text),
    body=st.one_of(
        st.binary(max_size=300),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | text,
            lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
            max_leaves=12,
        ).map(lambda v: json.dumps(v).encode()),
        st.fixed_dictionaries({"seqs": st.lists(st.integers(), max_size=20), "wait_ms": st.integers(-5, 50)}).map(
            lambda v: json.dumps(v).encode()
        ),
    ),
)
def test_actions(server, kind, body):
    _, c = server
    survives(c, lambda: list(c.do_action(flight.Action(kind, body))))


@EXAMPLES
@given(
    command=st.one_of(
        st.binary(max_size=200),
        st.tuples(st.sampled_from([flightsql.INGEST, flightsql.GET_TABLES, flightsql.GET_SQL_INFO, "Nope"]),
                  st.binary(max_size=120)).map(
            lambda nv: b"\n" + bytes([len(u := f"type.googleapis.com/arrow.flight.protocol.sql.{nv[0]}".encode())])
            + u + b"\x12" + bytes([len(nv[1])]) + nv[1]
        ),
    ),
    door=st.sampled_from(["info", "get", "put"]),
)  # fmt: skip
def test_flight_sql_commands(server, command, door):
    _, c = server

    def call() -> None:
        if door == "info":
            c.get_flight_info(flight.FlightDescriptor.for_command(command))
        elif door == "get":
            c.do_get(flight.Ticket(command)).read_all()
        else:
            send(c, flight.FlightDescriptor.for_command(command), KEEP[0])

    survives(c, call)
