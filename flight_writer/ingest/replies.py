"""A stream's PutResults sent from a thread of its own, in the order the batches came, as the queue settles
each batch (or, for a packed batch, once the queue says which record holds it: its seq)."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import pyarrow as pa


class Replies:
    """One stream's PutResults for batches not yet settled, sent in seq order by a thread of their own as
    each batch is logged, while the stream's handler goes on reading. gRPC lets one thread write a stream
    while another reads it; every reply of the stream goes through here once this exists."""

    MAX_WAITING = 4096  # replies held before the handler stops reading to wait for the log

    def __init__(self, settle: Callable[[int, bool], bool], reply: Callable[[pa.Buffer], None]) -> None:
        self._settle = settle
        self._reply = reply
        # (seq, answer), or (a packed batch's receipt, its answer given the seq)
        self._waiting: deque[tuple[Any, Any]] = deque()
        self._cond = threading.Condition()
        self._ending = False
        self._error: Exception | None = None
        self._thread = threading.Thread(target=self._run, name="flight-writer-replies", daemon=True)
        self._thread.start()

    def add(self, seq: int | Future[Any], answer: bytes | Callable[[int], bytes]) -> None:
        with self._cond:
            while len(self._waiting) >= self.MAX_WAITING and self._error is None:
                self._cond.wait()
            self._raise_error()
            self._waiting.append((seq, answer))
            self._cond.notify_all()

    def finish(self) -> None:
        """Wait until every reply is sent; raise what stopped them."""
        with self._cond:
            self._ending = True
            self._cond.notify_all()
        self._thread.join()
        self._raise_error()

    def stop(self) -> None:
        """Give up on what is not sent (the stream failed)."""
        with self._cond:
            self._ending = True
            self._waiting.clear()
            self._cond.notify_all()
        self._thread.join()

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._ending:
                    self._cond.wait()
                if not self._waiting:
                    return
                seq, answer = self._waiting[0]
            try:
                if isinstance(seq, Future):  # raises what kept the batch out of the queue
                    seq = seq.result().seq
                    answer = answer(seq)
                self._settle(seq, True)
                self._reply(pa.py_buffer(answer))
            except Exception as exc:  # raised again in the handler's thread
                with self._cond:
                    self._error = exc
                    self._waiting.clear()
                    self._cond.notify_all()
                return
            with self._cond:
                if self._waiting:
                    self._waiting.popleft()
                self._cond.notify_all()
