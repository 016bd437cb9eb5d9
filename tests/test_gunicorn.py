"""gunicorn started for real on 127.0.0.1 with the shipped configuration.

The database is down (a closed port), so /healthz must answer 503: the server
starts and serves without it.
"""

from __future__ import annotations

import orjson
import pytest
import requests

from tests.gunicorn_process import BIN, GUNICORN_COMMAND, free_port, running
from tests.unreachable import PASSWORD, down_dsn

DOWN = {"ZEH_MSSQL_DSN": down_dsn(), "ZEH_MSSQL_LOGIN_TIMEOUT": "1", "ZEH_MSSQL_THREADS": "2"}


def check_server(url: str) -> None:
    health = requests.get(f"{url}/healthz", timeout=10)
    assert health.status_code == 503
    assert "Retry-After" in health.headers
    feed = requests.get(f"{url}/orders/feed/v1", params={"n": 1, "cursor0": "_first"}, timeout=10)
    assert feed.status_code == 503
    assert "Retry-After" in feed.headers
    assert PASSWORD not in feed.text


def check_log(text: str) -> None:
    assert PASSWORD not in text
    records = [orjson.loads(line) for line in text.splitlines() if line.startswith("{")]
    messages = [r["message"] for r in records]
    assert any("gthread" in m for m in messages), messages
    feed_lines = [r for r in records if r["logger"] == "zeh_mssql.requests" and r.get("feed")]
    assert [r["status"] for r in feed_lines] == [503]


@pytest.mark.parametrize("how", ["gunicorn", "zeh-mssql serve"])
def test_the_shipped_config_serves_healthz_with_the_database_down(how, tmp_path):
    command = GUNICORN_COMMAND if how == "gunicorn" else [str(BIN / "zeh-mssql"), "serve"]
    log = tmp_path / "server.log"
    with running(DOWN, log, command=command) as url:
        check_server(url)
    check_log(log.read_text())


def test_serve_bind_option_overrides_the_environment(tmp_path):
    port = free_port()
    command = [str(BIN / "zeh-mssql"), "serve", "--bind", f"127.0.0.1:{port}", "--threads", "3"]
    env = {**DOWN, "ZEH_MSSQL_BIND": f"127.0.0.1:{free_port()}"}
    with running(env, tmp_path / "server.log", command=command, port=port) as url:
        check_server(url)
