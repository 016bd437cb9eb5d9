"""The shipped gunicorn settings follow the environment."""

from __future__ import annotations

import runpy

import pytest

from zeh_mssql.server import GUNICORN_CONF


def settings(monkeypatch: pytest.MonkeyPatch, **env: str) -> dict[str, object]:
    for name in (
        "ZEH_MSSQL_THREADS",
        "ZEH_MSSQL_WORKERS",
        "ZEH_MSSQL_MAX_WAIT",
        "ZEH_MSSQL_KEEP_HEAP",
    ):
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


def test_workers_keep_their_heap_unless_told_not_to(monkeypatch):
    import zeh_mssql.malloc

    calls: list[str] = []
    monkeypatch.setattr(zeh_mssql.malloc, "keep_heap", lambda: calls.append("kept") or True)
    settings(monkeypatch)["post_fork"](None, None)
    assert calls == ["kept"]
    settings(monkeypatch, ZEH_MSSQL_KEEP_HEAP="0")["post_fork"](None, None)
    assert calls == ["kept"]


def test_keep_heap_takes_effect_with_glibc():
    import platform

    from zeh_mssql.malloc import keep_heap

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("malloc tuning applies to glibc only")
    assert keep_heap() is True
