"""The Flight actions: ``ack``, ``status``, ``flush`` (and Flight SQL's ``CloseSession``), answered from the
queue's durability position, which every ingest process shares through the queue.

Bodies and answers are JSON objects (CloseSession answers in protobuf, as Flight SQL clients expect). A bad
body is a ``FlightServerError`` naming the problem; a flush the queue cannot finish because it is closing is
``FlightUnavailableError``.

With principals, a principal sees only its own: ``status`` lists only the datasets it may write (and says
``last_error`` without its text, which may name another's files), ``ack`` names a seq's file or error only
if the principal may write its dataset, and ``flush`` writes out a dataset it may write; a flush of every
dataset needs an admin principal, one whose ``datasets`` include ``"*"`` (it sees everything).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pyarrow.flight as flight

from flight_writer.ingest.auth import Principal, authorize, principal_of
from flight_writer.ingest.flightsql import messages as flightsql
from flight_writer.ingest.paths import dataset_from_path
from flight_writer.ingest.refusals import Refusals
from flight_writer.queue import Ingest

MAX_WAIT_MS = 3_600_000
MAX_ACTION_BODY = 1 << 20  # bytes; ack/flush/status bodies are a few hundred bytes
MAX_ACK_SEQS = 10_000  # one ack of ~5 million seqs built a >2 GB reply and aborted the process


class Actions:
    """``list()`` for ``list_actions``, ``call()`` for ``do_action``. ``dataset_from_path`` checks a
    dataset name given to ``flush``."""

    def __init__(
        self,
        queue: Ingest,
        status: Callable[[], dict[str, Any]],
        refusals: Refusals | None = None,
    ) -> None:
        self.refusals = refusals or Refusals()
        self._queue = queue
        self._position = queue.position
        Handler = Callable[[bytes, Principal | None], dict[str, Any] | None]
        self._actions: dict[str, tuple[str, Handler]] = {
            "ack": (
                'Durability of seqs: {"seqs": [..]} or {"seq": n}, optional "wait_ms" and "until": "committed"',
                self._ack,
            ),
            "status": (
                "Server counters: received and durable seqs, pending data, files written, errors",
                lambda body, who: _status_for(status(), who),
            ),
            "flush": (
                'Write out everything received so far (optional {"dataset": name}); returns once durable '
                '(with "until": "committed": once committed to the tables)',
                self._flush,
            ),
            "CloseSession": ("Flight SQL session close (sessions hold nothing here)", lambda body, who: None),
        }

    def list(self) -> list[tuple[str, str]]:
        return [(name, description) for name, (description, _) in self._actions.items()]

    def call(self, context: flight.ServerCallContext, action: flight.Action) -> list[bytes]:
        entry = self._actions.get(action.type)
        if entry is None and action.type in flightsql.SQL_ACTIONS:
            raise NotImplementedError(
                f"Flight SQL action {action.type} is not supported: this server only ingests "
                "(adbc_ingest / CommandStatementIngest)"
            )
        if entry is None:
            raise flight.FlightServerError(f"unknown action {action.type!r}; known: {', '.join(self._actions)}")
        if action.body is not None and action.body.size > MAX_ACTION_BODY:
            raise flight.FlightServerError(
                f"{action.type}: action body of {action.body.size} bytes is over the limit of {MAX_ACTION_BODY}"
            )
        if action.type != "CloseSession":
            authorize(context, f"call action {action.type!r}", lambda who: action.type in who.actions)
        body = action.body.to_pybytes() if action.body is not None else b""
        try:
            result = entry[1](body, principal_of(context))
        except ValueError as exc:
            self.refusals.count("bad_request", f"action {action.type}: {exc}")
            raise flight.FlightServerError(f"{action.type}: {exc}") from None
        if result is None:  # CloseSession answers in protobuf, as Flight SQL clients expect
            return [flightsql.close_session_result()]
        return [json.dumps(result).encode()]

    def _ack(self, body: bytes, who: Principal | None) -> dict[str, Any]:
        request = _json_object(body, required=True)
        if "seqs" in request:
            seqs = request["seqs"]
            if not isinstance(seqs, list) or not all(_is_int(s) for s in seqs):
                raise ValueError('"seqs" must be a list of integers')
        elif "seq" in request:
            if not _is_int(request["seq"]):
                raise ValueError('"seq" must be an integer')
            seqs = [request["seq"]]
        else:
            raise ValueError('body needs "seqs": [<int>, ...] or "seq": <int>')
        if len(seqs) > MAX_ACK_SEQS:
            raise ValueError(f'"seqs" lists {len(seqs)} seqs; one ack takes at most {MAX_ACK_SEQS}')
        wait_ms = request.get("wait_ms", 0)
        if not _is_int(wait_ms) or not 0 <= wait_ms <= MAX_WAIT_MS:
            raise ValueError(f'"wait_ms" must be an integer from 0 to {MAX_WAIT_MS}')
        until = _until(request)
        last = self._queue.last_seq
        if any(s > last for s in seqs):  # issued since this process last asked (NATS: by another process)
            self._queue.refresh()
            last = self._queue.last_seq
        position = self._position
        if wait_ms:
            issued = [s for s in seqs if 1 <= s <= last]
            if until == "committed":
                position.wait_committed(issued, wait_ms / 1000)
            else:
                position.wait(issued, wait_ms / 1000)
        acks = [position.describe(s, last) for s in seqs]
        if who is not None and not is_admin(who):
            acks = [_own_only(ack, who) for ack in acks]
        return {
            "acks": acks,
            "durable_through": position.durable_through,
            "committed_through": position.committed_through,
        }

    def _flush(self, body: bytes, who: Principal | None) -> dict[str, Any]:
        request = _json_object(body, required=False)
        dataset = request.get("dataset")
        if dataset is not None:
            if not isinstance(dataset, str):
                raise ValueError('"dataset" must be a string')
            dataset = dataset_from_path(dataset.split("/"))
        if who is not None and not is_admin(who) and (dataset is None or not who.may_write(dataset)):
            what = f"flush dataset {dataset!r}" if dataset else 'flush every dataset (name one: {"dataset": ...})'
            raise flight.FlightUnauthorizedError(f"principal {who.name!r} may not {what}")
        through = None
        if _until(request) == "committed":  # everything put before this flush, by any process (NATS: asked)
            self._queue.refresh()
            through = self._queue.last_seq
        if not self._queue.flush(dataset, None):
            raise flight.FlightUnavailableError("server is shutting down: flush again once it is back")
        position = self._position
        if through is not None and not position.wait_committed_through(through, None):
            raise flight.FlightUnavailableError("server is shutting down: flush again once it is back")
        return {"durable_through": position.durable_through, "committed_through": position.committed_through}


def _until(request: dict[str, Any]) -> str:
    """What an ack's wait or a flush waits for: ``durable`` (the default) or ``committed`` (in the table)."""
    until = request.get("until", "durable")
    if until not in ("durable", "committed"):
        raise ValueError(f'"until" must be "durable" or "committed", got {until!r}')
    return str(until)


def is_admin(who: Principal) -> bool:
    """A principal that may write every dataset sees everything."""
    return "*" in who.datasets


def dataset_of(path: str) -> str:
    """The dataset an object belongs to: its folders before the first ``key=value`` one (``_failed/``
    objects: after it)."""
    segments = path.split("/")
    if segments[0] == "_failed":
        segments = segments[1:]
    names = []
    for segment in segments[:-1]:
        if "=" in segment:
            break
        names.append(segment)
    return "/".join(names)


def _own_only(ack: dict[str, Any], who: Principal) -> dict[str, Any]:
    """An ack entry without the file or error of a dataset the principal may not write."""
    file = ack.get("file")
    if file is not None and not who.may_write(dataset_of(file)):
        ack = {k: v for k, v in ack.items() if k != "file"}
    error = ack.get("error", "")
    if "batch kept at " in error and not who.may_write(_kept_dataset(error)):
        ack = {**ack, "error": "failed (the error names a dataset this principal may not write)"}
    return ack


def _kept_dataset(error: str) -> str:
    return dataset_of(error.rsplit("batch kept at ", 1)[1].rstrip(")"))


def _status_for(status: dict[str, Any], who: Principal | None) -> dict[str, Any]:
    """The status a principal may see: only its datasets, and errors without their text (an admin and
    calls without authentication: everything)."""
    if who is None or is_admin(who):
        return status
    mine = {name: counts for name, counts in status.get("datasets", {}).items() if who.may_write(name)}
    seen = {**status, "datasets": mine}
    if seen.get("last_error"):
        seen["last_error"] = "an error (its text may name other datasets: an admin principal sees it)"
    return seen


def _json_object(body: bytes, required: bool) -> dict[str, Any]:
    if not body.strip():
        if required:
            raise ValueError("body must be a JSON object")
        return {}
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"body is not valid JSON: {exc}") from None
    except RecursionError:  # a body of a few KB can nest deeper than the parser's stack
        raise ValueError("body nests too deeply: send a flat JSON object") from None
    if not isinstance(value, dict):
        raise ValueError(f"body must be a JSON object, got {type(value).__name__}")
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
