"""Log output for the server: one JSON object per line on stdout.

Request records (logger ``zeh_mssql.requests``) carry their fields as ``extra``
(feed, partitions, events, duration_ms, status, ...); they become keys of the
line. Messages, exception texts and string fields pass through ``db.redact_dsn``,
so a connection string that slips into a log never shows its password.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

import orjson

from zeh_mssql.db import redact_dsn

HANDLER_NAME = "zeh_mssql.stdout"
# Attributes every LogRecord has; anything else on a record came in through ``extra``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message"}


class JsonLineFormatter(logging.Formatter):
    """Formats a record as one line of JSON: time, level, logger, message and extras."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact_dsn(record.getMessage()),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                line[key] = redact_dsn(value) if isinstance(value, str) else value
        if record.exc_info:
            line["exception"] = redact_dsn(self.formatException(record.exc_info))
        return orjson.dumps(line, default=lambda value: redact_dsn(str(value))).decode()


def configure_logging(level: int, stream: TextIO | None = None) -> logging.Handler:
    """Send the package's log records to ``stream`` (default stdout) as JSON lines.

    Idempotent: a handler installed by an earlier call is replaced, not doubled.
    """
    logger = logging.getLogger("zeh_mssql")
    for handler in list(logger.handlers):
        if handler.get_name() == HANDLER_NAME:
            logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stdout if stream is None else stream)
    handler.set_name(HANDLER_NAME)
    handler.setFormatter(JsonLineFormatter())
    logger.addHandler(handler)
    logger.setLevel(level)
    return handler
