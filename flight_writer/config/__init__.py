"""Configuration, the lowest layer: settings read once at the edge (``load.py``: file, environment,
overrides), parsed (``values.py``), validated (``checks.py``) into frozen dataclasses (``settings.py``), and
which of them a running server may change on SIGHUP (``live.py``); declared column types are parsed here
too (``columns.py``), so a bad one is refused at load time.

May import: the standard library, dynaconf and pyarrow; nothing else of flight_writer. Everyone imports
from here: ``from flight_writer.config import WriterSettings``.
"""

from __future__ import annotations

from flight_writer.config.load import *  # noqa: F403 - the names below, re-exported
from flight_writer.config.load import __all__  # noqa: F401
