"""Signal handling that cannot deadlock: handlers only record (a self-pipe), the main thread acts. These
tests need no timing: signals are sent to this very process and read back from the inbox."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

from flight_writer.signals import SignalInbox, StopRequests

from helpers import REPO


def test_a_signal_that_arrives_while_the_main_thread_holds_a_lock_is_only_recorded():
    """The old handler called Event.set: arriving while the main thread was inside that event's lock, it
    waited for that lock forever. Now the handler runs under any lock and takes none."""
    inbox = SignalInbox((signal.SIGUSR1, signal.SIGUSR2))
    try:
        held = threading.Event()
        with held._cond:  # the lock Event.set would need: a handler that took it would hang here
            os.kill(os.getpid(), signal.SIGUSR1)  # the handler runs on this thread, at the next bytecode
            os.kill(os.getpid(), signal.SIGUSR2)
            held._flag = True
        assert inbox.wait(30) + inbox.wait(0) == [signal.SIGUSR1, signal.SIGUSR2]  # both, in order
        assert inbox.wait(0) == []
    finally:
        inbox.close()
        signal.signal(signal.SIGUSR1, signal.SIG_DFL)
        signal.signal(signal.SIGUSR2, signal.SIG_DFL)


def test_a_copy_within_the_window_is_the_same_stop(caplog_loguru):
    stops = StopRequests(window=3600)
    stops.note(signal.SIGTERM)
    stops.note(signal.SIGTERM)  # make's forwarded copy
    assert stops.asked
    assert "SIGTERM: stopping gracefully" in caplog_loguru.text
    assert "SIGTERM again within 3600 s: already stopping gracefully" in caplog_loguru.text


def test_a_later_stop_signal_exits_at_once_with_status_1():
    program = (
        "import signal\n"
        "from flight_writer.signals import StopRequests\n"
        "from loguru import logger\n"
        "logger.enable('flight_writer')  # the library is quiet until enabled; the CLI enables it\n"
        "stops = StopRequests(window=0)\n"
        "stops.note(signal.SIGTERM)\n"
        "stops.note(signal.SIGINT)\n"
        "print('not reached')\n"
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.returncode == 1 and "not reached" not in done.stdout
    assert "SIGINT again: exiting now; what is not durable yet is not written" in done.stderr
