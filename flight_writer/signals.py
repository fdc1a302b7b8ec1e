"""Signals for ``flight-writer serve``, handled where they cannot deadlock.

A Python signal handler runs on the main thread between two bytecodes, even inside ``Event.wait``: a handler
that takes a lock (``Event.set``, logging) can interrupt the main thread while it holds that same lock and wait
for it forever. So the handlers here do nothing at all: ``signal.set_wakeup_fd`` makes the interpreter's C
handler write each signal's number to a pipe, and the main thread reads the pipe (``SignalInbox.wait``) and
acts on what it reads, logging included, as ordinary code.

The same-stop window: make, shells and supervisors that signal a process group deliver a SIGTERM to the server
and to make, which forwards its own copy milliseconds later. A second SIGTERM/SIGINT within
``server.same_stop_window`` seconds (1 by default) of the first is that same request; a later one exits at
once (exit status 1), losing what is not durable yet.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time
from collections.abc import Iterable

from loguru import logger


def _noted(signum: int, frame: object) -> None:
    """The Python-level handler: nothing. The wakeup fd has the signal already."""


class SignalInbox:
    """The signals a process received, in order, read by the main thread from a self-pipe."""

    def __init__(self, signums: Iterable[signal.Signals]) -> None:
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)
        self._old_fd = signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)
        self._old_handlers = {signum: signal.signal(signum, _noted) for signum in signums}

    def wait(self, timeout: float) -> list[int]:
        """The signals received since the last call, waiting up to ``timeout`` seconds for one."""
        ready, _, _ = select.select([self._read], [], [], timeout)
        if not ready:
            return []
        try:
            return list(os.read(self._read, 256))
        except BlockingIOError:
            return []

    def close(self) -> None:
        """Give the signals back to the handlers they had, and the wakeup fd to what it was."""
        for signum, handler in self._old_handlers.items():
            signal.signal(signum, handler)
        signal.set_wakeup_fd(self._old_fd)
        os.close(self._read)
        os.close(self._write)


class StopRequests:
    """SIGTERM/SIGINT as stop requests: the first stops gracefully, a copy within ``window`` seconds is the
    same request, a later one exits the process at once. Runs on the main thread only."""

    def __init__(self, window: float) -> None:
        self.window = window
        self.asked = False
        self._first_at = 0.0

    def note(self, signum: int) -> None:
        name = signal.Signals(signum).name
        now = time.monotonic()
        if not self.asked:
            self.asked = True
            self._first_at = now
            logger.info("{}: stopping gracefully (a signal again after {:g} s exits at once)", name, self.window)
        elif now - self._first_at < self.window:
            logger.info("{} again within {:g} s: already stopping gracefully", name, self.window)
        else:
            logger.warning("{} again: exiting now; what is not durable yet is not written", name)
            logger.complete()
            sys.stderr.flush()
            os._exit(1)
