"""Prometheus metrics and health checks, scraped over real HTTP from a live server."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pyarrow as pa
import pyarrow.flight as flight
import pytest
from prometheus_client.parser import text_string_to_metric_families

import flight_writer
from flight_writer import Service
from flight_writer.config import ConfigError, build_settings

from helpers import action, ints, put, running, send, settings_for, wait_for

METRICS = {"listen": "127.0.0.1:0"}


class Labels(dict):
    """A sample's labels, usable as a dict key."""

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(frozenset(self.items()))


def get(svc, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{svc.metrics.port}{path}", timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def stuck_storage(data_root: Path) -> Path:
    """A file where the dataset "stuck" must have its folder: every upload of it fails until it is removed."""
    data_root.mkdir(parents=True)
    blocker = data_root / "stuck"
    blocker.write_text("where the dataset's directory must go: every upload fails")
    return blocker


def put_then_flush_behind(client: flight.FlightClient) -> threading.Thread:
    """A batch into "stuck", and a flush waiting for it on a thread of its own (it returns once storage works)."""
    put(client, "stuck", [ints(10)])
    flusher = threading.Thread(target=action, args=(client, "flush"))
    flusher.start()
    return flusher


def scrape(svc) -> dict[str, float]:
    status, text = get(svc, "/metrics")
    assert status == 200
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}


def test_metrics_count_what_happened(data_root):
    with running(data_root, metrics=METRICS) as svc, flight.connect(svc.location) as c:
        before = scrape(svc)
        assert before["flight_writer_received_batches_total"] == 0 and before["process_resident_memory_bytes"] > 0
        put(c, "m", [ints(100, k * 100) for k in range(5)])
        action(c, "flush")
        m = scrape(svc)
        assert m["flight_writer_received_batches_total"] == 5
        assert m["flight_writer_received_rows_total"] == 500
        assert m["flight_writer_received_bytes_total"] == 5 * 800
        assert m["flight_writer_files_written_total"] == 1 and m["flight_writer_written_rows_total"] == 500
        assert (
            m["flight_writer_written_bytes_total"]
            == (data_root / next(p for p in svc.storage.list("m/") if p.endswith(".parquet"))).stat().st_size
        )
        assert m["flight_writer_durability_lag_batches"] == 0 and m["flight_writer_queue_pending_bytes"] == 0
        assert m["flight_writer_durable_through_seq"] == 5 and m["flight_writer_storage_error_seconds"] == 0
        assert m["flight_writer_storage_up"] == 1 and m["flight_writer_last_write_timestamp_seconds"] > 0
        assert m["flight_writer_put_to_durable_seconds_count"] == 5  # one per batch, when its file was stored
        [build] = labelled(svc, "flight_writer_build_info")
        assert build["version"] == flight_writer.__version__ and build["pyarrow"] == pa.__version__
        assert m["flight_writer_file_encode_seconds_count"] == 1 and m["flight_writer_file_upload_seconds_count"] == 1
        assert m["flight_writer_active_streams"] == 0
        writer, reader = c.do_put(flight.FlightDescriptor.for_path("open"), ints(1).schema)
        writer.write_batch(ints(1))
        assert reader.read() is not None
        assert scrape(svc)["flight_writer_active_streams"] == 1  # the stream is open now
        writer.close()
        code, body = get(svc, "/healthz")
        assert code == 200 and json.loads(body)["storage"]["ok"] is True
        assert get(svc, "/nothing")[0] == 404


def test_readyz_fails_while_storage_fails_and_recovers(data_root):
    blocker = stuck_storage(data_root)
    metrics = {**METRICS, "ready_max_error_s": "0.1"}
    with running(data_root, metrics=metrics) as svc, flight.connect(svc.location) as c:
        assert get(svc, "/readyz") == (200, '{"ready": true, "reason": null}\n')
        flusher = put_then_flush_behind(c)
        _, body = wait_for(lambda: (r := get(svc, "/readyz"))[0] == 503 and r, "/readyz to fail")
        assert "storage failing" in json.loads(body)["reason"]
        blocker.unlink()
        flusher.join(60)
        assert get(svc, "/readyz")[0] == 200


def test_storage_errors_leave_readiness_alone_by_default_and_health_says_them(data_root, caplog_loguru):
    """A bucket outage shared by every replica must not take every endpoint away: the queue is there to ride
    it out. /healthz and the metrics say it; a line says when storage works again."""
    blocker = stuck_storage(data_root)
    with running(data_root, metrics=METRICS) as svc, flight.connect(svc.location) as c:
        flusher = put_then_flush_behind(c)
        failing = wait_for(lambda: (r := json.loads(get(svc, "/healthz")[1])) and not r["storage"]["ok"] and r, "bad")
        assert "not a directory" in failing["storage"]["last_error"].lower()
        assert get(svc, "/readyz")[0] == 200 and scrape(svc)["flight_writer_storage_up"] == 0
        blocker.unlink()
        flusher.join(60)
        assert json.loads(get(svc, "/healthz")[1])["storage"]["ok"] and scrape(svc)["flight_writer_storage_up"] == 1
    assert "succeeded: working again after" in caplog_loguru.text


def test_refused_calls_are_counted_by_reason(data_root):
    settings = {"metrics": METRICS, "server": {"max_batch_bytes": "1024"}}
    with running(data_root, **settings) as svc, flight.connect(svc.location) as c:
        with pytest.raises(flight.FlightServerError):
            send(c, flight.FlightDescriptor.for_path("too-big"), ints(1000))  # 8,000 bytes
        with pytest.raises(flight.FlightServerError):
            send(c, flight.FlightDescriptor.for_path("x", ".."), ints(1))
        with pytest.raises(flight.FlightServerError):
            action(c, "ack", b"not json")
        assert labelled(svc, "flight_writer_refused_calls_total") == {
            Labels(reason="limits"): 1,
            Labels(reason="bad_request"): 2,
        }
        assert action(c, "status")["refused"] == {"limits": 1, "bad_request": 2}


def test_readyz_says_shutting_down_during_the_stop(data_root):
    svc = Service(settings_for(data_root, metrics=METRICS)).start()
    with flight.connect(svc.location) as c:
        writer, reader = c.do_put(flight.FlightDescriptor.for_path("s"), ints(1).schema)
        writer.write_batch(ints(1))
        assert reader.read() is not None  # an open stream holds the stop
        stopper = threading.Thread(target=svc.stop)
        stopper.start()
        _, body = wait_for(lambda: (r := get(svc, "/readyz"))[0] == 503 and r, "/readyz to fail")
        assert json.loads(body)["reason"] == "shutting down" and get(svc, "/healthz")[0] == 200
        writer.close()
        stopper.join(60)
    with pytest.raises(OSError):  # the listener is gone with the service
        urllib.request.urlopen(f"http://127.0.0.1:{svc.metrics.port}/healthz", timeout=5)


@pytest.mark.parametrize("listen", ["9464", "localhost", "host:port"])
def test_a_bad_listen_address_is_refused(listen):
    with pytest.raises(ConfigError, match=r"metrics\.listen must be host:port"):
        build_settings({"metrics": {"listen": listen}})


def labelled(svc, name: str) -> dict[Labels, float]:
    """``name``'s samples by their labels."""
    _, text = get(svc, "/metrics")
    return {
        Labels(s.labels): s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name
    }


def test_per_dataset_series_are_stable_and_bounded(data_root):
    """Once exported, a dataset keeps its series (rate() and sum() need them to go on); beyond
    metrics.datasets names, the rest are summed as (other)."""
    with running(data_root, metrics={**METRICS, "datasets": "2"}) as svc, flight.connect(svc.location) as c:
        for name, batches in (("big", 3), ("mid", 2), ("small", 1)):
            put(c, name, [ints(100)] * batches)
        action(c, "flush")
        rows = labelled(svc, "flight_writer_dataset_received_rows_total")
        expected = {Labels(dataset="big"): 300, Labels(dataset="mid"): 200, Labels(dataset="(other)"): 100}
        assert rows == expected  # "small" is beyond metrics.datasets
        assert labelled(svc, "flight_writer_dataset_written_rows_total") == expected
        status = action(c, "status")  # status lists the busiest now
        assert list(status["datasets"]) == ["big", "mid"] and status["datasets"]["big"]["files_written"] == 1
        put(c, "small", [ints(100)] * 10)  # now the busiest: it does not take another's series
        action(c, "flush")
        assert labelled(svc, "flight_writer_dataset_received_rows_total") == {
            Labels(dataset="big"): 300,
            Labels(dataset="mid"): 200,
            Labels(dataset="(other)"): 1100,
        }
        assert scrape(svc)["flight_writer_oldest_pending_age_seconds"] == 0  # nothing pending


def test_oldest_pending_age_and_retries_by_operation_and_error(data_root):
    blocker = stuck_storage(data_root)
    with running(data_root, metrics=METRICS) as svc, flight.connect(svc.location) as c:
        flusher = put_then_flush_behind(c)
        retries = wait_for(lambda: labelled(svc, "flight_writer_retries_total"), "a retry to be counted")
        assert {labels["operation"] for labels in retries} <= {"encode", "write", "upload"}
        assert {labels["error"] for labels in retries} == {"disk"} and min(retries.values()) >= 1  # by cause
        assert scrape(svc)["flight_writer_oldest_pending_age_seconds"] > 0
        blocker.unlink()
        flusher.join(60)
        assert scrape(svc)["flight_writer_oldest_pending_age_seconds"] == 0


def test_wal_fsync_latency_is_a_histogram(tmp_path):
    queue = {"type": "wal", "path": str(tmp_path / "wal")}
    with running(tmp_path / "data", metrics=METRICS, queue=queue) as svc, flight.connect(svc.location) as c:
        put(c, "w", [ints(10)] * 3)
        m = scrape(svc)
        assert m["flight_writer_wal_fsync_seconds_count"] >= 1
        assert m["flight_writer_wal_fsync_seconds_count"] == m["flight_writer_wal_fsyncs_total"]
