"""Logging setup: loguru to stderr, human-readable or JSON lines (``log.json = true``). The package keeps its
logs off until this runs (see ``flight_writer``'s docstring): the command line calls it, a library user may."""

from __future__ import annotations

import sys

from loguru import logger

from flight_writer.config import LogSettings

FORMAT = "{time:YYYY-MM-DDTHH:mm:ss.SSSZ} {level: <7} {message}"


def configure_logging(settings: LogSettings) -> None:
    """flight-writer's logs on, to stderr only (loguru's other handlers removed), at ``log.level``."""
    logger.remove()
    logger.add(
        sys.stderr,
        level=settings.level.upper(),
        serialize=settings.json,
        format=FORMAT,
        backtrace=False,
        diagnose=False,
    )
    logger.enable("flight_writer")
