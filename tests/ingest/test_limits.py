"""Server limits: each refusal names its setting, costs the other clients nothing, keeps acknowledged data."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.flight as flight
import pytest

from helpers import action, answered_then_refused, put, read_dataset, running, send

GOOD = pa.record_batch({"i": pa.array(range(10), pa.int64())})


def test_too_many_columns_or_too_deep_a_schema_is_refused_at_stream_start(data_root):
    wide = pa.record_batch({f"c{k}": [k] for k in range(6)})
    deep_type = pa.list_(pa.list_(pa.list_(pa.int64())))  # 4 levels
    deep = pa.record_batch({"d": pa.array([[[[1]]]], deep_type)})
    with running(data_root, server={"max_columns": "5", "max_nesting": "3"}) as svc, flight.connect(svc.location) as c:
        with pytest.raises(flight.FlightServerError, match=r"6 fields .*server\.max_columns is 5"):
            send(c, flight.FlightDescriptor.for_path("wide"), wide)
        with pytest.raises(flight.FlightServerError, match=r"nests 4 levels deep; server\.max_nesting is 3"):
            send(c, flight.FlightDescriptor.for_path("deep"), deep)
        put(c, "fine", [GOOD])
        action(c, "flush")
        assert action(c, "status")["received_seq"] == 1
    assert read_dataset(data_root, "fine").num_rows == 10


def test_oversized_app_metadata_ends_the_stream_after_answering_what_was_taken(data_root):
    with running(data_root, server={"max_metadata_bytes": "100"}) as svc, flight.connect(svc.location) as c:
        ids = json.dumps({"id": "a"}).encode(), json.dumps({"id": "b" * 200}).encode()
        message = r"app_metadata of \d+ bytes is over server\.max_metadata_bytes \(100\)"
        assert answered_then_refused(c, "meta", GOOD, GOOD, message, ids)["id"] == "a"
        action(c, "flush")
    assert read_dataset(data_root, "meta").num_rows == 10  # the first batch, acknowledged, is stored


def test_streams_beyond_max_streams_are_refused_until_one_closes(data_root):
    with running(data_root, server={"max_streams": "2"}) as svc, flight.connect(svc.location) as c:
        open_streams = []
        for _ in range(2):
            writer, reader = c.do_put(flight.FlightDescriptor.for_path("many"), GOOD.schema)
            writer.write_batch(GOOD)
            assert reader.read() is not None  # the stream is open and served
            open_streams.append(writer)
        with pytest.raises(flight.FlightUnavailableError, match=r"2 streams are open.*server\.max_streams"):
            send(c, flight.FlightDescriptor.for_path("many"), GOOD)
        open_streams.pop().close()
        put(c, "many", [GOOD])  # room again
        for writer in open_streams:
            writer.close()
        action(c, "flush")
    assert read_dataset(data_root, "many").num_rows == 30


def test_a_batch_over_max_batch_bytes_ends_the_stream_after_answering_what_was_taken(data_root):
    big = pa.record_batch({"i": pa.array(range(1000), pa.int64())})  # 8,000 bytes
    with running(data_root, server={"max_batch_bytes": "1000"}) as svc, flight.connect(svc.location) as c:
        message = r"a record batch of 8000 Arrow bytes \(1000 rows\) is over server\.max_batch_bytes \(1000\)"
        assert answered_then_refused(c, "sized", GOOD, big, message)["seq"] == 1
        put(c, "other", [GOOD])  # the server and other streams go on
        action(c, "flush")
        assert action(c, "status")["received_seq"] == 2
    assert read_dataset(data_root, "sized").num_rows == 10


def test_one_buffer_beyond_max_open_buffers_writes_out_the_oldest(data_root):
    writer_settings = {"max_open_buffers": "2", "flush_interval": "600"}
    with running(data_root, writer=writer_settings) as svc, flight.connect(svc.location) as c:
        for name in ("a", "b", "c"):
            put(c, name, [GOOD])  # seqs 1, 2, 3: a third dataset's buffer seals the first one's
        [first] = action(c, "ack", {"seq": 1, "wait_ms": 30_000})["acks"]
        assert first["state"] == "durable"
        [second] = action(c, "ack", {"seq": 2})["acks"]
        assert second["state"] != "durable"  # b and c still fill, flush_interval is far away
        status = action(c, "status")
        assert status["open_buffers"] == 2 and status["buffers_sealed_early"] == 1
    assert read_dataset(data_root, "a").num_rows == 10


def test_deeply_nested_app_metadata_is_not_a_batch_id_and_the_batch_is_taken(client, data_root):
    writer, reader = client.do_put(flight.FlightDescriptor.for_path("deep"), GOOD.schema)
    writer.write_with_metadata(GOOD, pa.py_buffer(b"[" * 60_000))  # json.loads recurses per level
    reply = json.loads(reader.read().to_pybytes())
    writer.close()
    assert "id" not in reply and reply["rows"] == 10
    assert action(client, "flush")["durable_through"] == reply["seq"]
    assert read_dataset(data_root, "deep").num_rows == 10


def test_a_batch_id_longer_than_256_characters_is_refused_naming_the_limit(client, data_root):
    """Ids are kept (queue.dedupe_window of them): 100,000 ids of 60 KB each would hold 6 GB."""
    writer, reader = client.do_put(flight.FlightDescriptor.for_path("ids"), GOOD.schema)
    writer.write_with_metadata(GOOD, pa.py_buffer(json.dumps({"id": "a" * 256}).encode()))
    assert json.loads(reader.read().to_pybytes())["id"] == "a" * 256  # at the limit: taken
    writer.write_with_metadata(GOOD, pa.py_buffer(json.dumps({"id": "b" * 257}).encode()))
    with pytest.raises(flight.FlightServerError, match="batch id of 257 characters is over the limit of 256"):
        reader.read()
        writer.close()
    assert action(client, "flush")["durable_through"] == 1
    assert read_dataset(data_root, "ids").num_rows == 10


def test_a_batch_id_with_a_lone_surrogate_is_refused_naming_it(client, data_root):
    """JSON lets "\\ud800" through; no UTF-8 (a WAL record, a NATS header) can hold it."""
    writer, reader = client.do_put(flight.FlightDescriptor.for_path("bad_ids"), GOOD.schema)
    writer.write_with_metadata(GOOD, pa.py_buffer(b'{"id": "ok-\\u00e9"}'))
    assert json.loads(reader.read().to_pybytes())["id"] == "ok-\u00e9"
    writer.write_with_metadata(GOOD, pa.py_buffer(b'{"id": "ab\\ud800"}'))
    with pytest.raises(flight.FlightServerError, match=r"batch id holds a lone surrogate \(U\+D800\) at character 2"):
        reader.read()
        writer.close()
    assert action(client, "flush")["durable_through"] == 1  # the batch before it, and the server goes on
    put(client, "bad_ids", [GOOD])
    action(client, "flush")
    assert read_dataset(data_root, "bad_ids").num_rows == 20
