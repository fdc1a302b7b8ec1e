"""Logging setup: loguru to stderr, human-readable or JSON lines (``log.json = true``)."""

from __future__ import annotations

import sys

from loguru import logger

from flight_writer.config import LogSettings

FORMAT = "{time:YYYY-MM-DDTHH:mm:ss.SSSZ} {level: <7} {message}"


def configure_logging(settings: LogSettings) -> None:
    logger.remove()
    logger.add(
        sys.stderr,
        level=settings.level.upper(),
        serialize=settings.json,
        format=FORMAT,
        backtrace=False,
        diagnose=False,
    )
