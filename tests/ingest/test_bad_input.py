"""Every bad input gets a clear error of the right class, stores nothing, and the server keeps serving."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.flight as flight
import pytest

from helpers import action, parquet_files, put, send

GOOD = pa.record_batch({"i": pa.array([1, 2, 3], pa.int64())})


@pytest.fixture(autouse=True)
def still_serving(client, data_root):
    """After each bad call, a good client is served correctly and nothing bad was stored."""
    yield
    assert parquet_files(data_root) == []
    [r] = put(client, "after", [GOOD])
    assert action(client, "flush")["durable_through"] == r["seq"]
    assert len(parquet_files(data_root, "after")) == 1


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ([], "1 to 3 segments"),
        (["a", "b", "c", "d"], "1 to 3 segments"),
        ([".."], "invalid dataset path segment '..'"),
        (["."], "invalid dataset path segment '.'"),
        (["ok", ".."], "invalid dataset path segment '..'"),
        (["has space"], "invalid dataset path segment 'has space'"),
        (["_hidden"], "invalid dataset path segment '_hidden'"),
        (["a/b"], "invalid dataset path segment 'a/b'"),
        (["x" * 129], "invalid dataset path segment"),
        ([""], "invalid dataset path segment ''"),
    ],
)
def test_invalid_dataset_paths(client, path, message):
    with pytest.raises(flight.FlightServerError, match=message):
        send(client, flight.FlightDescriptor.for_path(*path), GOOD)


def test_command_descriptor_that_is_not_flight_sql_is_refused(client):
    with pytest.raises(flight.FlightServerError, match="do_put command is not a Flight SQL command"):
        send(client, flight.FlightDescriptor.for_command(b"select 1"), GOOD)


def test_flight_sql_command_other_than_ingest_is_unimplemented(client):
    from flight_writer.ingest.flightsql import messages as flightsql

    query = flightsql.pack_any("CommandStatementUpdate", b"\n\x08delete *")
    with pytest.raises(pa.ArrowNotImplementedError, match="Flight SQL command CommandStatementUpdate is not supported"):
        send(client, flight.FlightDescriptor.for_command(query), GOOD)


def test_flight_methods_the_server_does_not_offer_say_what_to_use_instead(client):
    descriptor = flight.FlightDescriptor.for_path("x")
    with pytest.raises(pa.ArrowNotImplementedError, match=r"^list_flights is not supported: list datasets with"):
        list(client.list_flights())
    with pytest.raises(pa.ArrowNotImplementedError, match=r"^get_schema is not supported: .* GetTables"):
        client.get_schema(descriptor)
    with pytest.raises(pa.ArrowNotImplementedError, match=r"^do_exchange is not supported: send data with do_put"):
        _, reader = client.do_exchange(descriptor)
        reader.read_all()
    put(client, "still-serving", [GOOD])


def test_union_column_is_refused_naming_the_column(client):
    union = pa.UnionArray.from_sparse(pa.array([0, 1], pa.int8()), [pa.array([1, 2]), pa.array(["a", "b"])])
    batch = pa.record_batch({"ok": pa.array([1, 2]), "u": union})
    with pytest.raises(flight.FlightServerError, match="column 'u' of type sparse_union"):
        send(client, flight.FlightDescriptor.for_path("unions"), batch)


def test_bad_ack_header_is_refused_before_data(client):
    with pytest.raises(flight.FlightServerError, match="x-flight-writer-ack must be one of queued, durable"):
        send(client, flight.FlightDescriptor.for_path("hdr"), GOOD, [(b"x-flight-writer-ack", b"eventually")])
    assert action(client, "status")["received_seq"] == 0


def test_unknown_action(client):
    known = "ack, status, flush, CloseSession"
    with pytest.raises(flight.FlightServerError, match=f"unknown action 'explode'; known: {known}"):
        action(client, "explode")


@pytest.mark.parametrize(
    ("name", "body", "message"),
    [
        ("ack", b"", "body must be a JSON object"),
        ("ack", b"{not json", "body is not valid JSON"),
        ("ack", b"[1, 2]", "body must be a JSON object, got list"),
        ("ack", b'{"x": 1}', 'body needs "seqs"'),
        ("ack", b'{"seqs": [1, "2"]}', '"seqs" must be a list of integers'),
        ("ack", b'{"seqs": 3}', '"seqs" must be a list of integers'),
        ("ack", b'{"seq": true}', '"seq" must be an integer'),
        ("ack", b'{"seq": 1, "wait_ms": -5}', '"wait_ms" must be an integer'),
        ("ack", b'{"seq": 1, "wait_ms": 1.5}', '"wait_ms" must be an integer'),
        ("flush", b'{"dataset": 7}', '"dataset" must be a string'),
        ("flush", b'{"dataset": "../etc"}', "invalid dataset path segment '..'"),
        ("flush", b"\xff\xfe", "body is not valid JSON"),
    ],
)
def test_malformed_action_bodies(client, name, body, message):
    with pytest.raises(flight.FlightServerError, match=message):
        action(client, name, body)


@pytest.mark.parametrize("name", ["ack", "flush", "status"])
def test_an_action_body_nested_deeper_than_the_parser_goes_is_refused_without_a_traceback(client, name):
    body = b"[" * 200_000 + b"]" * 200_000  # under the 1 MiB body limit; Python's json recurses per level
    if name == "status":  # status reads no body: still answered
        assert "received_seq" in action(client, name, body)
        return
    with pytest.raises(flight.FlightServerError) as caught:
        action(client, name, body)
    assert "nests too deeply" in str(caught.value) and "Traceback" not in str(caught.value)
