"""create_app: routes, authentication, the database being down, and the request log.

The database is "down" for real here: the DSN points at a closed port on
127.0.0.1. Feed routing is checked with a StaticCatalog of MemorySources.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from flask.testing import FlaskClient

from tests.logging_state import package_logger_restored  # noqa: F401
from tests.unreachable import PASSWORD, down_dsn
from zeh_mssql.app import create_app
from zeh_mssql.catalog import StaticCatalog
from zeh_mssql.config import Config
from zeh_mssql.source import EventSource
from zeh_mssql.testing import MemorySource

TOKEN = "tok-8d2b0f"


def make_config(**options: Any) -> Config:
    return Config(dsn=down_dsn(), login_timeout=1, **options)


class RecordingCatalog(StaticCatalog):
    """A StaticCatalog that records which feed names it was asked for."""

    def __init__(self, feeds: dict[str, EventSource]) -> None:
        super().__init__(feeds)
        self.asked: list[str] = []

    def get(self, name: str) -> EventSource | None:
        self.asked.append(name)
        return super().get(name)


@pytest.fixture
def orders() -> MemorySource:
    source = MemorySource(2)
    for i in range(6):
        source.append(i % 2, {"order": i}, headers={"trace": f"t{i}"}, event_type="created")
    return source


@pytest.fixture
def catalog(orders: MemorySource) -> RecordingCatalog:
    return RecordingCatalog({"orders": orders, "payments": MemorySource(3)})


def lines(body: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in body.splitlines()]


def assert_no_internals(body: bytes) -> None:
    text = body.decode()
    for secret in (PASSWORD, "FreeTDS", "127.0.0.1", "Traceback", "reader", "Adaptive"):
        assert secret not in text


# --- the database is down -------------------------------------------------------


def test_the_app_starts_while_the_database_is_down():
    app = create_app(make_config())  # nothing connects while the app is built
    assert app.extensions["zeh_mssql"]["primary"].idle_count == 0


def test_healthz_answers_503_with_retry_after_when_the_database_is_down():
    response = create_app(make_config()).test_client().get("/healthz")
    assert response.status_code == 503
    assert response.headers["Retry-After"].isdigit()
    assert response.get_json() == {"status": "unavailable"}
    assert_no_internals(response.data)


def test_a_feed_request_answers_503_with_retry_after_and_no_internals():
    client = create_app(make_config()).test_client()
    response = client.get("/orders/feed/v1?n=2&cursor0=_first&cursor1=_first")
    assert response.status_code == 503
    assert int(response.headers["Retry-After"]) >= 1
    assert response.mimetype == "application/json"
    assert "error" in response.get_json()
    assert_no_internals(response.data)


def test_the_feed_list_answers_503_when_the_database_is_down():
    response = create_app(make_config()).test_client().get("/feeds")
    assert response.status_code == 503
    assert "Retry-After" in response.headers
    assert_no_internals(response.data)


def test_the_database_is_asked_again_on_every_request_while_down():
    # No failure is cached: each request tries again, which is how the app recovers
    # on its own once the database is back (see the integration tests).
    client = create_app(make_config()).test_client()
    assert [client.get("/healthz").status_code for _ in range(3)] == [503, 503, 503]


# --- feeds through the dispatcher ----------------------------------------------------


def client_for(catalog: RecordingCatalog, **options: Any) -> FlaskClient:
    return create_app(make_config(**options), catalog=catalog).test_client()


def test_a_feed_is_served_at_the_path_template(catalog):
    client = client_for(catalog)
    response = client.get("/orders/feed/v1?n=2&cursor0=_first&cursor1=_first&headers=_all")
    assert response.status_code == 200
    assert response.mimetype == "application/x-ndjson"
    got = lines(response.data)
    assert [line["data"] for line in got if "data" in line] == [
        {"order": 0},
        {"order": 2},
        {"order": 4},
        {"order": 1},
        {"order": 3},
        {"order": 5},
    ]
    assert got[0]["headers"] == {"trace": "t0"}
    assert [line["partition"] for line in got if "cursor" in line] == [0, 1]


def test_following_checkpoints_reads_each_event_once(catalog, orders):
    client = client_for(catalog)
    cursors = {0: "_first", 1: "_first"}
    seen: list[int] = []
    for _ in range(20):
        query = "&".join(f"cursor{p}={c}" for p, c in cursors.items())
        got = lines(client.get(f"/orders/feed/v1?n=2&pagesizehint=2&{query}").data)
        events = [line["data"]["order"] for line in got if "data" in line]
        cursors.update({line["partition"]: line["cursor"] for line in got if "cursor" in line})
        if not events:
            break
        seen.extend(events)
    assert sorted(seen) == list(range(6))
    orders.append(1, {"order": 6})
    query = "&".join(f"cursor{p}={c}" for p, c in cursors.items())
    got = lines(client.get(f"/orders/feed/v1?n=2&{query}").data)
    assert [line["data"] for line in got if "data" in line] == [{"order": 6}]


def test_the_blueprints_validation_applies(catalog):
    response = client_for(catalog).get("/orders/feed/v1?n=3&cursor0=_first")
    assert response.status_code == 400
    assert response.get_json() == {"error": "handshake error: partition count mismatch"}


def test_an_unknown_feed_is_a_json_404(catalog):
    response = client_for(catalog).get("/nope/feed/v1?n=1&cursor0=_first")
    assert response.status_code == 404
    assert response.mimetype == "application/json"
    assert "nope" in response.get_json()["error"]


def test_unknown_paths_below_a_feed_and_elsewhere_are_json_404s(catalog):
    client = client_for(catalog)
    for path in ("/orders/feed/v1/nothing-here", "/orders", "/"):
        response = client.get(path)
        assert response.status_code == 404, path
        assert "error" in response.get_json()


def test_other_methods_are_refused_with_json(catalog):
    response = client_for(catalog).post("/orders/feed/v1?n=2&cursor0=_first")
    assert response.status_code == 405
    assert "error" in response.get_json()


def test_a_custom_path_template(catalog):
    client = client_for(catalog, path_template="/streams/{feed}")
    assert client.get("/streams/payments?n=3&cursor2=_last").status_code == 200
    assert client.get("/payments/feed/v1?n=3&cursor2=_last").status_code == 404


def test_feeds_lists_names_partition_counts_and_paths(catalog):
    response = client_for(catalog, path_template="/x/{feed}/v1").get("/feeds")
    assert response.status_code == 200
    assert response.get_json() == {
        "feeds": [
            {"name": "orders", "partition_count": 2, "path": "/x/orders/v1"},
            {"name": "payments", "partition_count": 3, "path": "/x/payments/v1"},
        ]
    }


# --- bearer tokens ----------------------------------------------------------------


FEED_URL = "/orders/feed/v1?n=2&cursor0=_first"


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Bearer wrong", f"Basic {TOKEN}", f"Bearer {TOKEN}x", TOKEN],
)
def test_a_request_without_a_valid_token_gets_401_and_never_reaches_a_source(
    catalog, authorization
):
    client = client_for(catalog, tokens=frozenset({TOKEN, "another"}))
    headers = {} if authorization is None else {"Authorization": authorization}
    for path in (FEED_URL, "/feeds"):
        response = client.get(path, headers=headers)
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert response.get_json() == {"error": "a valid bearer token is required"}
    assert catalog.asked == []


def test_a_valid_token_is_let_through(catalog):
    client = client_for(catalog, tokens=frozenset({TOKEN, "another"}))
    for token in (TOKEN, "another"):
        response = client.get(FEED_URL, headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 200
        assert client.get("/feeds", headers={"Authorization": f"bearer {token}"}).status_code == 200
    assert catalog.asked == ["orders", "orders"]


def test_healthz_needs_no_token():
    client = create_app(make_config(tokens=frozenset({TOKEN}))).test_client()
    assert client.get("/healthz").status_code == 503  # answered, not refused


def test_without_tokens_configured_no_token_is_needed(catalog):
    assert client_for(catalog).get(FEED_URL).status_code == 200


# --- the request log --------------------------------------------------------------


def test_one_json_log_line_per_request_without_the_password(catalog, capsys):
    client = client_for(catalog)
    capsys.readouterr()  # the start-up line is checked below, separately
    client.get("/orders/feed/v1?n=2&cursor0=_first&cursor1=_first")
    client.get("/nope/feed/v1?n=1&cursor0=_first")
    records = [orjson.loads(line) for line in capsys.readouterr().out.splitlines()]
    requests = [r for r in records if r["logger"] == "zeh_mssql.requests"]
    assert len(requests) == 2
    served, missing = requests
    assert served["feed"] == "orders"
    assert served["status"] == 200
    assert served["partitions"] == [0, 1]
    assert served["events"] == 6
    assert served["duration_ms"] >= 0
    assert missing["feed"] == "nope"
    assert missing["status"] == 404


def test_logs_never_show_the_password(capsys):
    client = create_app(make_config()).test_client()
    client.get("/healthz")
    client.get("/orders/feed/v1?n=1&cursor0=_first")
    out = capsys.readouterr().out
    assert "PWD=***" in out  # the start-up line names the database, redacted
    assert PASSWORD not in out
    records = [orjson.loads(line) for line in out.splitlines()]
    statuses = [r["status"] for r in records if r["logger"] == "zeh_mssql.requests"]
    assert statuses == [503, 503]


def test_everything_the_blueprint_serves_below_the_path_is_dispatched_too(catalog):
    # FeedAPI v2: discovery at the bare path, fetches at <path>/events.
    client = client_for(catalog)
    discovery = client.get("/orders/feed/v1")
    assert discovery.status_code == 200
    token = discovery.get_json()["token"]
    assert [p["id"] for p in discovery.get_json()["partitions"]] == ["0", "1"]
    events = client.get(f"/orders/feed/v1/events?token={token}&partition=1&cursor=_first")
    assert events.status_code == 200
    got = lines(events.data)
    assert [line["data"] for line in got if "data" in line] == [
        {"order": 1},
        {"order": 3},
        {"order": 5},
    ]
    assert "cursor" in got[-1]
