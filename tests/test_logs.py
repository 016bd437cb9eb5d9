"""The JSON log line format and its redaction of connection-string passwords."""

from __future__ import annotations

import io
import logging

import orjson

from tests.logging_state import package_logger_restored  # noqa: F401
from zeh_mssql.logs import configure_logging


def test_records_become_json_lines_with_their_extras_and_no_password():
    stream = io.StringIO()
    configure_logging(logging.INFO, stream)
    log = logging.getLogger("zeh_mssql.test")
    log.info("connecting to %s", "SERVER=db;UID=app;PWD=hunter2;DATABASE=x", extra={"feed": "a"})
    try:
        raise RuntimeError("login with Password={hun;ter2} failed")
    except RuntimeError:
        log.exception("failed", extra={"dsn": "Server=db;pwd=hunter2"})
    first, second = (orjson.loads(line) for line in stream.getvalue().splitlines())
    assert first["message"] == "connecting to SERVER=db;UID=app;PWD=***;DATABASE=x"
    assert first["feed"] == "a"
    assert first["level"] == "INFO"
    assert first["logger"] == "zeh_mssql.test"
    assert second["dsn"] == "Server=db;pwd=***"
    assert "RuntimeError" in second["exception"]
    assert "hunter2" not in stream.getvalue()
    assert "hun;ter2" not in stream.getvalue()


def test_configuring_twice_does_not_double_the_lines():
    stream = io.StringIO()
    configure_logging(logging.INFO, io.StringIO())
    configure_logging(logging.INFO, stream)
    logging.getLogger("zeh_mssql.test").info("once")
    assert len(stream.getvalue().splitlines()) == 1


def test_the_level_is_applied():
    stream = io.StringIO()
    configure_logging(logging.WARNING, stream)
    log = logging.getLogger("zeh_mssql.test")
    log.info("hidden")
    log.warning("shown")
    assert [orjson.loads(line)["message"] for line in stream.getvalue().splitlines()] == ["shown"]
