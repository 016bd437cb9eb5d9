"""The server app's long-poll and FeedAPI v2 settings: ZEH_MSSQL_MAX_WAIT and the poll ceiling."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest

from tests.counting_source import CountingSource
from tests.logging_state import package_logger_restored  # noqa: F401
from tests.unreachable import down_dsn
from zeh_mssql.app import create_app
from zeh_mssql.catalog import StaticCatalog
from zeh_mssql.config import Config, ConfigError
from zeh_mssql.protocol_v2 import feed_token

DSN = "DRIVER={FreeTDS};SERVER=db;UID=reader;PWD=hunter2"
PATH = "/orders/feed/v1"


def lines(body: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in body.splitlines()]


def test_defaults():
    config = Config.from_env({"ZEH_MSSQL_DSN": DSN})
    assert (config.max_wait, config.poll_ceiling_ms) == (30, 1000)


def test_variables_are_read():
    env = {"ZEH_MSSQL_DSN": DSN, "ZEH_MSSQL_MAX_WAIT": "0", "ZEH_MSSQL_POLL_CEILING_MS": "250"}
    config = Config.from_env(env)
    assert (config.max_wait, config.poll_ceiling_ms) == (0, 250)


@pytest.mark.parametrize(
    ("variable", "value", "fragment"),
    [
        ("ZEH_MSSQL_MAX_WAIT", "-1", "must be at least 0"),
        ("ZEH_MSSQL_MAX_WAIT", "long", "expected an integer"),
        ("ZEH_MSSQL_POLL_CEILING_MS", "1", "must be at least 5"),
    ],
)
def test_errors_name_the_variable(variable, value, fragment):
    with pytest.raises(ConfigError, match=f"^{variable}: {fragment}"):
        Config.from_env({"ZEH_MSSQL_DSN": DSN, variable: value})


def make_client(source: Any, **options: Any) -> Any:
    config = Config(dsn=down_dsn(), login_timeout=1, **options)
    return create_app(config, catalog=StaticCatalog({"orders": source})).test_client()


def test_the_app_serves_discovery_and_v2_events_at_the_feed_path():
    source = CountingSource(2)
    source.append(1, {"x": 1}, event_type="Kept")
    source.append(1, {"x": 2}, event_type="dropped")
    client = make_client(source)
    discovery = client.get(PATH).get_json()
    assert discovery["token"] == feed_token(2)
    query = {"token": discovery["token"], "partition": 1, "cursor": "_first"}
    response = client.get(PATH + "/events", query_string={**query, "event-types": "kept"})
    assert response.status_code == 200
    body = lines(response.data)
    assert body[0] == {"data": {"x": 1}}
    assert body[1] == {"cursor": source.fetch(1, "_last", 1).cursor}
    stale = client.get(PATH + "/events", query_string={**query, "token": "old"})
    assert stale.status_code == 409


def test_max_wait_caps_a_requests_wait():
    client = make_client(CountingSource(2), max_wait=1)
    started = time.monotonic()
    response = client.get(PATH, query_string={"n": 2, "cursor0": "_first", "wait": 600})
    assert response.status_code == 200
    assert 0.95 <= time.monotonic() - started < 10


def test_max_wait_0_answers_at_once_without_polling():
    source = CountingSource(2)
    client = make_client(source, max_wait=0)
    response = client.get(PATH, query_string={"n": 2, "cursor0": "_first", "wait": 600})
    assert response.status_code == 200
    assert source.head_reads == 0


def test_the_poll_ceiling_reaches_the_watcher():
    source = CountingSource(1)
    client = make_client(source, poll_ceiling_ms=50)
    response = client.get(PATH, query_string={"n": 1, "cursor0": "_first", "wait": 1})
    assert response.status_code == 200
    # A 1 s idle wait polls a few times while backing off from 5 ms, then every 50 ms
    # (~20 in all): far more than the ~8 polls the default 1 s ceiling allows.
    assert source.head_reads >= 12
