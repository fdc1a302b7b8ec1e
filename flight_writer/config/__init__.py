"""Configuration, the lowest layer: settings read once at the edge (``load.py``: file, environment,
overrides), parsed (``values.py``), validated (``checks.py``) into frozen dataclasses (``settings.py``), and
which of them a running server may change on SIGHUP (``live.py``).

May import: the standard library and dynaconf-free parsing only; nothing else of flight_writer (a check
that needs a lake rule, such as a declared column type, imports it inside the function, at load time).
Everyone imports from here: ``from flight_writer.config import WriterSettings``.
"""

from __future__ import annotations

from flight_writer.config.load import *  # noqa: F403 - the names below, re-exported
from flight_writer.config.load import __all__  # noqa: F401
