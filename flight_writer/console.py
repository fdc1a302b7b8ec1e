"""Commands for people at a terminal: ``flight-writer status``, ``top`` and ``send`` (to be written)."""

from __future__ import annotations

import argparse


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add this module's subcommands; each sets ``run`` (a function of the parsed args returning the exit code)."""
