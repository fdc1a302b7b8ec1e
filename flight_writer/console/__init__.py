"""Commands for people at a terminal, drawn with rich:

- ``flight-writer status``: the server's ``status`` action as a table (``--json``: as JSON, for scripts);
- ``flight-writer top``: a live view of ``status`` polled every ``--interval`` seconds, with rates derived
  from the counters between two polls (``q`` or Ctrl-C quits; ``--once`` prints one frame);
- ``flight-writer send``: Parquet, Arrow IPC, CSV or JSON-lines files (or stdin) streamed to a dataset in
  batches with idempotent ids; a dropped connection is re-opened and every batch without a reply is sent
  again (the server drops the ones it already has); ``--durable`` returns once all of it is in Parquet.

All three connect alike: ``--location``, ``--tls-ca``, a bearer secret (``--token`` or
``FLIGHT_WRITER_TOKEN``) or a Basic login (``FLIGHT_WRITER_USER`` and ``FLIGHT_WRITER_PASSWORD``).
Expected failures (no server, a refused call, a file that cannot be read) end in one line and exit 1.

One module per command (status.py, top.py, send.py; send's inputs are read in sources.py, its sending
done by sender.py); common.py holds what they share: the connection options, ``Connection``, one-line
errors and numbers for people."""

from __future__ import annotations

import argparse

from flight_writer.console import send, status, top

__all__ = ["add_commands"]


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add the subcommands; each sets ``run`` (a function of the parsed args returning the exit code)."""
    for command in (status, top, send):
        command.add_command(sub)
