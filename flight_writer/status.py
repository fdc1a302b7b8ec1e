"""What one process reports about itself: the ``status`` action's answer (also the source of /metrics and
``flight-writer status``/``top``) and /readyz's reason not to send it data.

Counters come from the parts a process has: the queue (received, pending), the writer (files written,
errors; an ingest process has none of its own), the durability position, storage and the server.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from flight_writer._version import __version__

if TYPE_CHECKING:
    from flight_writer.service import Service


def not_ready(service: Service) -> str | None:
    """Why the server should not get data now (``/readyz``), or None."""
    m = service.settings.metrics
    if service.state != "opened":
        return "shutting down" if service.state in ("closing", "closed") else "starting"
    status = status_of(service)
    if status["pending_bytes"] > m.ready_max_queue * status["queue_max_bytes"]:
        return f"queue {status['pending_bytes']} of {status['queue_max_bytes']} bytes full"
    if m.ready_max_error_s > 0 and (status["error_for_s"] or 0) > m.ready_max_error_s:
        return f"storage failing for {status['error_for_s']:.0f} s: {status['last_error']}"
    return None


def status_of(service: Service) -> dict[str, Any]:
    """Counters of this process: received and durable seqs, the queue, the writer, storage, the busiest
    datasets (an ingest process reports no writer of its own; see ``_no_writer``)."""
    q = service.queue.stats()
    status = {
        "version": __version__,
        "received_seq": service.queue.last_seq,
        "durable_through": service.tracker.durable_through,
        "committed_through": service.tracker.committed_through,
        **q,
        **(service.writer.stats() if service.writer is not None else _no_writer(q)),
        "oldest_pending_seq": service.tracker.durable_through + 1
        if service.tracker.durable_through < service.queue.last_seq
        else None,
        "queue": service.queue.type,
        "queue_max_bytes": service.settings.queue.max_bytes,
        "active_streams": service.server.active_streams if service.server is not None else 0,
        "role": service.role,
        "storage": service.storage.describe(),
        "uptime_s": round(time.monotonic() - service.started_at, 3),
        "datasets": busiest_datasets(service, service.settings.metrics.datasets),
        "refused": service.server.refusals.totals() if service.server is not None else {},
        "tables": service.committer.table_stats() if service.committer is not None else {},
    }
    if status["last_error"] is None and q.get("queue_error"):  # NATS away: the queue says so
        status["last_error"] = q["queue_error"]
    return status


def busiest_datasets(service: Service, n: int) -> dict[str, dict[str, int]]:
    """Received and written counts of the ``n`` datasets that received the most Arrow bytes since start."""
    received = service.queue.received_by_dataset()
    written = service.writer.written_by_dataset() if service.writer is not None else {}
    names = sorted(received.keys() | written.keys(), key=lambda d: received.get(d, (0, 0, 0))[2], reverse=True)
    busiest = {}
    for name in names[:n]:
        r, w = received.get(name, (0, 0, 0)), written.get(name, (0, 0, 0))
        busiest[name] = {
            "received_batches": r[0],
            "received_rows": r[1],
            "received_bytes": r[2],
            "files_written": w[0],
            "rows_written": w[1],
            "bytes_written": w[2],
        }
    return busiest


def _no_writer(queue_stats: dict[str, Any]) -> dict[str, Any]:
    """An ingest process's writer counters: none of its own (the write processes have them); its last error
    is the queue's (NATS unreachable)."""
    error = queue_stats.get("queue_error")
    return {
        "files_written": 0,
        "rows_written": 0,
        "bytes_written": 0,
        "batches_failed": 0,
        "open_buffers": 0,
        "buffers_sealed_early": 0,
        "retries": 0,
        "retries_by_kind": [],
        "last_write_at": None,
        "last_error": error,
        "error_for_s": 0.0 if error else None,
    }


def health(service: Service) -> dict[str, Any]:
    """/healthz's detail: how storage went for this process's writer, from what it last saw (no call to
    storage or the queue: a liveness probe must answer at once). An ingest process has no writer: None."""
    if service.writer is None:
        return {"storage": None}
    stats = service.writer.stats()
    failing = stats["last_error"] is not None
    return {
        "storage": {
            "ok": not failing,
            "failing_for_s": stats["error_for_s"] if failing else None,
            "last_error": stats["last_error"],
            "last_write_at": stats["last_write_at"],
        }
    }
