"""Undo what create_app/configure_logging do to the package logger, after each test."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def package_logger_restored() -> Iterator[None]:
    """Leave the ``zeh_mssql`` logger's handlers and level as the test found them."""
    logger = logging.getLogger("zeh_mssql")
    handlers, level = list(logger.handlers), logger.level
    yield
    logger.handlers[:] = handlers
    logger.setLevel(level)
