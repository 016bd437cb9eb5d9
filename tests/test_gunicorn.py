"""gunicorn started for real on 127.0.0.1 with the shipped configuration.

The database is down (a closed port), so /healthz must answer 503: the server
starts and serves without it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson
import pytest
import requests

from tests.unreachable import PASSWORD, closed_port, down_dsn
from zeh_mssql.server import GUNICORN_CONF

BIN = Path(sys.executable).parent
STARTUP_LIMIT_S = 60.0


@contextmanager
def running(
    command: list[str], tmp_path: Path, *, port: int, env_port: int | None = None
) -> Iterator[tuple[str, Path]]:
    """Start ``command``, wait until ``port`` answers; yield the URL and the stdout file.

    ``ZEH_MSSQL_BIND`` names ``env_port`` (default: ``port``).
    """
    env = {
        **os.environ,
        "ZEH_MSSQL_DSN": down_dsn(),
        "ZEH_MSSQL_LOGIN_TIMEOUT": "1",
        "ZEH_MSSQL_BIND": f"127.0.0.1:{env_port or port}",
        "ZEH_MSSQL_WORKERS": "1",
        "ZEH_MSSQL_THREADS": "2",
    }
    out = tmp_path / "stdout.log"
    with out.open("wb") as sink:
        process = subprocess.Popen(
            command, env=env, stdout=sink, stderr=subprocess.STDOUT, cwd=tmp_path
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_LIMIT_S
        while True:
            assert process.poll() is None, out.read_text()
            try:
                requests.get(f"{url}/healthz", timeout=5)
                break
            except requests.ConnectionError:
                if time.monotonic() > deadline:
                    pytest.fail(f"gunicorn did not answer: {out.read_text()}")
                time.sleep(0.2)
        yield url, out
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def check_server(url: str) -> None:
    health = requests.get(f"{url}/healthz", timeout=10)
    assert health.status_code == 503
    assert "Retry-After" in health.headers
    feed = requests.get(f"{url}/orders/feed/v1", params={"n": 1, "cursor0": "_first"}, timeout=10)
    assert feed.status_code == 503
    assert PASSWORD not in feed.text


def check_log(out: Path) -> None:
    text = out.read_text()
    assert PASSWORD not in text
    records = [orjson.loads(line) for line in text.splitlines() if line.startswith("{")]
    messages = [r["message"] for r in records]
    assert any("gthread" in m for m in messages), messages
    feed_lines = [r for r in records if r["logger"] == "zeh_mssql.requests" and r.get("feed")]
    assert [r["status"] for r in feed_lines] == [503]


@pytest.mark.parametrize("how", ["gunicorn", "zeh-mssql serve"])
def test_the_shipped_config_serves_healthz_with_the_database_down(how, tmp_path):
    port = closed_port()
    if how == "gunicorn":
        command = [str(BIN / "gunicorn"), "-c", str(GUNICORN_CONF), "zeh_mssql.app:create_app()"]
    else:
        command = [str(BIN / "zeh-mssql"), "serve"]
    with running(command, tmp_path, port=port) as (url, out):
        check_server(url)
    check_log(out)


def test_serve_bind_option_overrides_the_environment(tmp_path):
    port = closed_port()
    command = [str(BIN / "zeh-mssql"), "serve", "--bind", f"127.0.0.1:{port}", "--threads", "3"]
    with running(command, tmp_path, port=port, env_port=closed_port()) as (url, _out):
        check_server(url)
