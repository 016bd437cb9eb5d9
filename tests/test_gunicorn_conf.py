"""The shipped gunicorn settings follow the environment."""

from __future__ import annotations

import runpy

import pytest

from zeh_mssql.server import GUNICORN_CONF


def settings(monkeypatch: pytest.MonkeyPatch, **env: str) -> dict[str, object]:
    for name in ("ZEH_MSSQL_THREADS", "ZEH_MSSQL_WORKERS", "ZEH_MSSQL_MAX_WAIT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return runpy.run_path(str(GUNICORN_CONF))


def test_defaults_hold_64_long_polls_and_let_them_finish_on_shutdown(monkeypatch):
    conf = settings(monkeypatch)
    assert conf["worker_class"] == "gthread"
    assert conf["workers"] == 2
    assert conf["threads"] == 32
    assert conf["graceful_timeout"] == 40


def test_graceful_timeout_follows_the_long_poll_cap(monkeypatch):
    assert settings(monkeypatch, ZEH_MSSQL_MAX_WAIT="120")["graceful_timeout"] == 130
    assert settings(monkeypatch, ZEH_MSSQL_MAX_WAIT="0")["graceful_timeout"] == 10


def test_bad_values_stop_with_the_variable_named(monkeypatch):
    with pytest.raises(SystemExit, match="ZEH_MSSQL_THREADS: expected an integer"):
        settings(monkeypatch, ZEH_MSSQL_THREADS="many")
    with pytest.raises(SystemExit, match="ZEH_MSSQL_MAX_WAIT: must be at least 0"):
        settings(monkeypatch, ZEH_MSSQL_MAX_WAIT="-1")
