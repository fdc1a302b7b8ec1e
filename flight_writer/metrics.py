"""Prometheus metrics and health checks over HTTP, on ``metrics.listen`` (off when empty).

- ``/metrics``: the Prometheus text format. Everything but the histograms is read from ``Service.status()``
  when scraped, so the per-batch path pays nothing for metrics; the encode, upload and put-to-durable
  histograms are fed once per stored file (a listener of the writer's ``Stored`` events). Process metrics
  (CPU, memory, file descriptors) come from prometheus-client.
- Per-dataset series are stable: a dataset exported once stays exported (``rate()`` and ``sum()`` need the
  series to go on); the first ``metrics.datasets`` names get series of their own, later ones are summed
  under ``dataset="(other)"``.
- ``/healthz``: 200 while the process answers HTTP (liveness), with storage's health as detail (JSON), from
  what the writer last saw: it asks neither storage nor the queue (a NATS server that stopped answering
  must not make a liveness probe wait).
- ``/readyz``: 200 when the server should get data: it is not starting or shutting down and the queue can
  take more (it holds at most ``metrics.ready_max_queue`` of ``queue.max_bytes``); else 503 with the reason.
  Storage errors do not make it unready unless ``metrics.ready_max_error_s`` is set (> 0): an outage all
  replicas share would take every endpoint away, while the queue exists to ride it out.
"""

from __future__ import annotations

import json
import platform
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pyarrow as pa
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from flight_writer._version import __version__
from flight_writer.config import MetricsSettings
from flight_writer.write.stored import Stored

# seconds: files take milliseconds (small, flushed) to minutes (large, slow storage)
FSYNC_SECONDS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5)
DURABLE_SECONDS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
FILE_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

# status() key -> (metric name, help); counters get _total from prometheus-client
COUNTERS = {
    "received_batches": ("flight_writer_received_batches", "Batches accepted by do_put since start"),
    "received_rows": ("flight_writer_received_rows", "Rows accepted by do_put since start"),
    "received_bytes": ("flight_writer_received_bytes", "Arrow bytes accepted by do_put since start"),
    "files_written": ("flight_writer_files_written", "Parquet files stored"),
    "rows_written": ("flight_writer_written_rows", "Rows stored in Parquet files"),
    "bytes_written": ("flight_writer_written_bytes", "Bytes of Parquet stored"),
    "batches_failed": ("flight_writer_failed_batches", "Batches the Parquet encoder rejected (kept under _failed/)"),
    "buffers_sealed_early": (
        "flight_writer_buffers_sealed_early",
        "Buffers written out before they were due because writer.max_open_buffers were filling",
    ),
    "wal_fsyncs": ("flight_writer_wal_fsyncs", "fsync calls of the write-ahead log"),
}
GAUGES = {
    "received_seq": ("flight_writer_received_seq", "Highest seq handed out"),
    "durable_through": ("flight_writer_durable_through_seq", "Every seq up to this one is durable or failed"),
    "committed_through": (
        "flight_writer_committed_through_seq",
        "Every seq up to this one is committed to its lake table (or needs no commit: no table, failed)",
    ),
    "pending_batches": ("flight_writer_queue_pending_batches", "Batches accepted and not yet durable"),
    "pending_bytes": ("flight_writer_queue_pending_bytes", "Arrow bytes accepted and not yet durable"),
    "queue_max_bytes": ("flight_writer_queue_max_bytes", "queue.max_bytes"),
    "active_streams": ("flight_writer_active_streams", "do_put streams open now"),
    "open_buffers": ("flight_writer_open_buffers", "Buffers (dataset, schema, hour) filling now"),
    "uptime_s": ("flight_writer_uptime_seconds", "Seconds since the service started"),
    "oldest_pending_age_s": (
        "flight_writer_oldest_pending_age_seconds",
        "Age of the oldest batch accepted and not yet durable (0 when none is pending)",
    ),
}
# per dataset (the busiest ``metrics.datasets``): status key -> (metric name, help)
DATASET_COUNTERS = {
    "received_batches": ("flight_writer_dataset_received_batches", "Batches accepted by do_put, per dataset"),
    "received_rows": ("flight_writer_dataset_received_rows", "Rows accepted by do_put, per dataset"),
    "received_bytes": ("flight_writer_dataset_received_bytes", "Arrow bytes accepted by do_put, per dataset"),
    "files_written": ("flight_writer_dataset_files_written", "Parquet files stored, per dataset"),
    "rows_written": ("flight_writer_dataset_written_rows", "Rows stored in Parquet files, per dataset"),
    "bytes_written": ("flight_writer_dataset_written_bytes", "Bytes of Parquet stored, per dataset"),
}


OTHER = "(other)"


class _StatusCollector(Collector):
    """Reads the service's status (and every dataset's counts) at every scrape."""

    def __init__(
        self,
        status: Callable[[], dict[str, Any]],
        dataset_counts: Callable[[], dict[str, dict[str, int]]],
        max_datasets: int,
    ) -> None:
        self._status = status
        self._dataset_counts = dataset_counts
        self._max = max_datasets
        self._exported: dict[str, None] = {}  # dataset names with series of their own, once given one
        self._lock = threading.Lock()

    def _stable(self, counts: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
        """Every dataset exported before, new ones while there is room, the rest summed as ``(other)``."""
        with self._lock:
            for name in sorted(counts, key=lambda d: -counts[d]["received_bytes"]):
                if len(self._exported) >= self._max:
                    break
                self._exported.setdefault(name)
            exported = list(self._exported)
        zero = dict.fromkeys(DATASET_COUNTERS, 0)
        series = {name: counts.get(name, zero) for name in exported}
        rest = [c for name, c in counts.items() if name not in self._exported]
        if rest:
            series[OTHER] = {key: sum(c[key] for c in rest) for key in DATASET_COUNTERS}
        return series

    def collect(self) -> Iterator[Metric]:
        status = self._status()
        build = GaugeMetricFamily(
            "flight_writer_build_info", "The running build (always 1)", labels=["version", "pyarrow", "python"]
        )
        build.add_metric([__version__, pa.__version__, platform.python_version()], 1)
        yield build
        for key, (name, doc) in COUNTERS.items():
            if status.get(key) is not None:
                yield CounterMetricFamily(name, doc, value=status[key])
        for key, (name, doc) in GAUGES.items():
            if key in status:
                yield GaugeMetricFamily(name, doc, value=status[key] or 0)
        series = self._stable(self._dataset_counts())
        for key, (name, doc) in DATASET_COUNTERS.items():
            family = CounterMetricFamily(name, doc, labels=["dataset"])
            for dataset, counts in series.items():
                family.add_metric([dataset], counts[key])
            yield family
        refused = CounterMetricFamily(
            "flight_writer_refused_calls",
            "Calls refused, by reason: unauthenticated, unauthorized, auth_busy, queue_full, limits, schema, "
            "bad_request",
            labels=["reason"],
        )
        for reason, n in sorted(status.get("refused", {}).items()):
            refused.add_metric([reason], n)
        yield refused
        retries = CounterMetricFamily(
            "flight_writer_retries",
            "Failed storage, encoding or queue operations that were retried, by operation and cause",
            labels=["operation", "error"],
        )
        for kind in status.get("retries_by_kind", ()):
            retries.add_metric([kind["operation"], kind["error"]], kind["retries"])
        yield retries
        yield GaugeMetricFamily(
            "flight_writer_durability_lag_batches",
            "received_seq - durable_through: batches received and not yet durable or failed",
            value=status["received_seq"] - status["durable_through"],
        )
        yield from _table_metrics(status.get("tables", {}))
        error_for = status.get("error_for_s")
        yield GaugeMetricFamily(
            "flight_writer_storage_error_seconds",
            "How long storage (or the queue's log) has been failing; 0 when the last operation succeeded",
            value=error_for or 0.0,
        )
        yield GaugeMetricFamily(
            "flight_writer_storage_up",
            "1 while the last storage (or queue log) operation succeeded, 0 while they fail",
            value=0.0 if status.get("last_error") else 1.0,
        )
        if status.get("last_write_at"):
            yield GaugeMetricFamily(
                "flight_writer_last_write_timestamp_seconds",
                "When storage last confirmed a file (Unix time)",
                value=status["last_write_at"],
            )


class Metrics:
    """The HTTP listener. ``status`` is ``Service.status``; ``ready`` says why the server is not ready
    (None if it is)."""

    def __init__(
        self,
        settings: MetricsSettings,
        status: Callable[[], dict[str, Any]],
        not_ready: Callable[[], str | None],
        dataset_counts: Callable[[], dict[str, dict[str, int]]] | None = None,
        health: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        counts = dataset_counts or (lambda: status()["datasets"])
        self.registry.register(_StatusCollector(status, counts, settings.datasets))
        ProcessCollector(registry=self.registry)
        self.encode_seconds = Histogram(
            "flight_writer_file_encode_seconds",
            "Seconds spent encoding one Parquet file (all its row groups, all threads together)",
            buckets=FILE_SECONDS,
            registry=self.registry,
        )
        self.upload_seconds = Histogram(
            "flight_writer_file_upload_seconds",
            "Seconds from a file's first upload attempt until storage confirmed it (retries included)",
            buckets=FILE_SECONDS,
            registry=self.registry,
        )
        self.durable_seconds = Histogram(
            "flight_writer_put_to_durable_seconds",
            "Seconds from a batch's arrival to storage confirming the file that holds it",
            buckets=DURABLE_SECONDS,
            registry=self.registry,
        )
        self.fsync_seconds = Histogram(
            "flight_writer_wal_fsync_seconds",
            "Seconds one fsync round of the write-ahead log took (queue.type = wal)",
            buckets=FSYNC_SECONDS,
            registry=self.registry,
        )
        host, _, port = settings.listen.rpartition(":")
        self._http = ThreadingHTTPServer(
            (host.strip("[]"), int(port)), _handler(self.registry, not_ready, health or (lambda: {}))
        )
        self._http.daemon_threads = True
        self._thread = threading.Thread(target=self._http.serve_forever, name="flight-writer-metrics", daemon=True)

    @property
    def port(self) -> int:
        return self._http.server_address[1]

    def file_stored(self, event: Stored) -> None:
        """A listener of the writer's stored files (write/stored.py)."""
        self.encode_seconds.observe(event.encode_s)
        self.upload_seconds.observe(event.upload_s)
        now = time.time()
        for received_at in event.received_at:
            self.durable_seconds.observe(now - received_at)

    def wal_fsync(self, seconds: float) -> None:
        self.fsync_seconds.observe(seconds)

    def start(self) -> Metrics:
        self._thread.start()
        return self

    def close(self) -> None:
        self._http.shutdown()
        self._http.server_close()
        self._thread.join()


def _handler(
    registry: CollectorRegistry, not_ready: Callable[[], str | None], health: Callable[[], dict[str, Any]]
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif path == "/healthz":  # 200 whatever storage does: liveness; the detail says how it goes
                self._send(200, json.dumps({"alive": True, **health()}).encode() + b"\n", "application/json")
            elif path == "/readyz":
                reason = not_ready()
                body = json.dumps({"ready": reason is None, "reason": reason}).encode() + b"\n"
                self._send(200 if reason is None else 503, body, "application/json")
            else:
                self._send(404, b"not found: try /metrics, /healthz or /readyz\n", "text/plain; charset=utf-8")

        def _send(self, code: int, body: bytes, content_type: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # scrapes every few seconds: not worth a line
            pass

    return Handler


def _table_metrics(tables: dict[str, dict[str, Any]]) -> Iterator[Any]:
    """Per lake table: commits, files committed, files pending, conflicts, errors, last commit time."""
    commits = CounterMetricFamily(
        "flight_writer_table_commits", "Commits to a lake table since start", labels=["table"]
    )
    files = CounterMetricFamily(
        "flight_writer_table_committed_files", "Files committed to a lake table since start", labels=["table"]
    )
    pending = GaugeMetricFamily(
        "flight_writer_table_pending_files", "Stored files waiting for their table commit", labels=["table"]
    )
    conflicts = CounterMetricFamily(
        "flight_writer_table_commit_conflicts",
        "Commits that found the table moved on (planned again from the new version)",
        labels=["table"],
    )
    errors = CounterMetricFamily(
        "flight_writer_table_commit_errors", "Commits that failed and were retried", labels=["table"]
    )
    last = GaugeMetricFamily(
        "flight_writer_table_last_commit_timestamp_seconds", "When a table commit last landed", labels=["table"]
    )
    for name, t in tables.items():
        commits.add_metric([name], t["commits"])
        files.add_metric([name], t["files_committed"])
        pending.add_metric([name], t["pending_files"])
        conflicts.add_metric([name], t["conflicts"])
        errors.add_metric([name], t["errors"])
        if t.get("last_commit_at"):
            last.add_metric([name], t["last_commit_at"])
    yield from (commits, files, pending, conflicts, errors, last)
