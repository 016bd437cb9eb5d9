"""FeedAPI v2 served by the blueprint next to v1, over Flask's test client and real HTTP."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import requests
from flask import Flask, Request
from werkzeug.exceptions import Forbidden

from tests.counting_source import CountingSource
from tests.http_server import running
from zeh_mssql import create_blueprint
from zeh_mssql.protocol_v2 import feed_token
from zeh_mssql.testing import MemorySource

PATH = "/orders/feed/v1"
EVENTS = PATH + "/events"


def make_app(source: Any, **options: Any) -> Flask:
    app = Flask(__name__)
    app.register_blueprint(create_blueprint(source, PATH, **options))
    return app


def lines_of(body: bytes) -> list[dict[str, Any]]:
    assert body.endswith(b"\n")
    return [orjson.loads(line) for line in body.splitlines()]


@pytest.fixture
def source() -> MemorySource:
    source = MemorySource(3)
    for i in range(12):
        kind = ("Created", "paid", "NOISE")[i % 3]
        source.append(i % 3 if i % 4 else 0, {"i": i, "type": kind}, event_type=kind)
    return source


def discover(client: Any) -> dict[str, Any]:
    response = client.get(PATH)
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    return dict(response.get_json())


def test_bare_path_is_the_discovery_document(source):
    document = discover(make_app(source).test_client())
    assert document == {
        "token": feed_token(3),
        "partitions": [{"id": "0"}, {"id": "1"}, {"id": "2"}],
        "exactlyOnce": True,
    }


def test_token_changes_with_the_partition_count():
    a = discover(make_app(MemorySource(3)).test_client())
    b = discover(make_app(MemorySource(4)).test_client())
    assert a["token"] != b["token"]
    assert len(b["partitions"]) == 4


def follow(client: Any, url: str, token: str, partition: int, **extra: Any) -> list[Any]:
    """Read a partition to its end by following cursors, as a v2 consumer does."""
    cursor, seen = "_first", []
    for _ in range(1000):
        query = {"token": token, "partition": partition, "cursor": cursor, **extra}
        response = client.get(url, query_string=query)
        assert response.status_code == 200, response.data
        assert response.mimetype == "application/x-ndjson"
        lines = lines_of(response.data)
        assert "cursor" in lines[-1]
        assert all(set(line) == {"data"} for line in lines[:-1])
        seen += [line["data"] for line in lines[:-1]]
        if lines[-1]["cursor"] == cursor:
            return seen
        cursor = lines[-1]["cursor"]
    raise AssertionError("partition never ended")


@pytest.mark.parametrize("url", [EVENTS, PATH])
def test_fetch_by_partition_at_events_and_at_the_path_with_a_token(source, url):
    client = make_app(source).test_client()
    token = discover(client)["token"]
    for partition in range(3):
        expected = [orjson.loads(e.data) for e in source.fetch(partition, "_first", 1000).events]
        assert follow(client, url, token, partition, pagesizehint=2) == expected


def test_empty_partition_answers_with_a_cursor_only():
    client = make_app(MemorySource(2)).test_client()
    token = discover(client)["token"]
    for cursor in ("_first", "_last"):
        response = client.get(
            EVENTS, query_string={"token": token, "partition": 1, "cursor": cursor}
        )
        assert lines_of(response.data) == [{"cursor": "_first"}]


def test_last_resolves_to_the_head_and_new_events_follow(source):
    client = make_app(source).test_client()
    token = discover(client)["token"]
    query = {"token": token, "partition": 2, "cursor": "_last"}
    (checkpoint,) = lines_of(client.get(EVENTS, query_string=query).data)
    source.append(2, {"new": True})
    lines = lines_of(
        client.get(EVENTS, query_string={**query, "cursor": checkpoint["cursor"]}).data
    )
    assert lines[0] == {"data": {"new": True}}
    assert len(lines) == 2


def test_event_types_filter_is_case_insensitive_and_the_cursor_passes_skipped_events(source):
    client = make_app(source).test_client()
    token = discover(client)["token"]
    only = follow(client, EVENTS, token, 0, **{"event-types": "created;PAID", "pagesizehint": 2})
    assert only
    assert {d["type"] for d in only} <= {"Created", "paid"}
    skipped = follow(client, EVENTS, token, 0, **{"skip-event-types": "Noise"})
    assert only == skipped
    everything = follow(client, EVENTS, token, 0)
    assert [d for d in everything if d["type"] != "NOISE"] == only

    # A page whose window holds only filtered-out events still moves the cursor on.
    noise_only = MemorySource(1)
    noise_only.append(0, {"n": 1}, event_type="noise")
    noise_only.append(0, {"n": 2}, event_type="noise")
    head = noise_only.fetch(0, "_last", 1).cursor
    c = make_app(noise_only).test_client()
    response = c.get(
        EVENTS,
        query_string={
            "token": feed_token(1),
            "partition": 0,
            "cursor": "_first",
            "event-types": "x",
        },
    )
    assert lines_of(response.data) == [{"cursor": head}]


def test_filters_reach_the_source_as_a_type_filter():
    source = CountingSource(1)
    seen: list[Any] = []
    original = source.fetch

    def fetch(partition, cursor, limit, type_filter=None):
        seen.append(type_filter)
        return original(partition, cursor, limit, type_filter)

    source.fetch = fetch  # type: ignore[method-assign]
    client = make_app(source).test_client()
    query = {"token": feed_token(1), "partition": 0, "cursor": "_first"}
    client.get(EVENTS, query_string={**query, "skip-event-types": "A;b"})
    client.get(EVENTS, query_string={**query, "event-types": "C"})
    client.get(EVENTS, query_string=query)
    assert [(f.types, f.exclude) if f else None for f in seen] == [
        (frozenset({"a", "b"}), True),
        (frozenset({"c"}), False),
        None,
    ]


def test_stale_token_is_409(source):
    client = make_app(source).test_client()
    response = client.get(
        EVENTS, query_string={"token": feed_token(2), "partition": 0, "cursor": "_first"}
    )
    assert response.status_code == 409
    assert "discovery" in response.get_json()["error"]


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"partition": 0, "cursor": "_first"}, "token: missing"),
        ({"partition": 3, "cursor": "_first"}, "partition doesn't exist"),
        ({"partition": "one", "cursor": "_first"}, "partition: expected"),
        ({"partition": 0, "cursor": "nope"}, "cursor: 'nope' is not a cursor"),
        ({"partition": 0}, "cursor: missing"),
        (
            {"partition": 0, "cursor": "_first", "event-types": "a", "skip-event-types": "b"},
            "event-types and skip-event-types: give one of them, not both",
        ),
        ({"partition": 0, "cursor": "_first", "wait": "-1"}, "wait: expected"),
    ],
)
def test_bad_v2_requests_are_400(source, query, message):
    client = make_app(source).test_client()
    if "token: missing" not in message:
        query = {"token": feed_token(3), **query}
    response = client.get(EVENTS, query_string=query)
    assert response.status_code == 400
    assert response.get_json()["error"].startswith(message)


def test_v1_is_unchanged_at_the_same_path(source):
    client = make_app(source).test_client()
    response = client.get(PATH, query_string={"n": 3, "cursor1": "_first", "headers": "_all"})
    assert response.status_code == 200
    lines = lines_of(response.data)
    assert lines[-1]["partition"] == 1
    assert all(line["partition"] == 1 for line in lines)
    assert all("headers" in line for line in lines[:-1])
    mismatch = client.get(PATH, query_string={"n": 2, "cursor0": "_first"})
    assert mismatch.get_json() == {"error": "handshake error: partition count mismatch"}
    assert client.get(PATH, query_string={"cursor0": "_first"}).status_code == 400


def test_authorizer_guards_discovery_and_events(source):
    def refuse(request: Request) -> None:
        raise Forbidden("no")

    client = make_app(source, authorize=refuse).test_client()
    assert client.get(PATH).status_code == 403
    query = {"token": feed_token(3), "partition": 0, "cursor": "_first"}
    assert client.get(EVENTS, query_string=query).status_code == 403


def test_only_get_on_events(source):
    assert make_app(source).test_client().post(EVENTS).status_code == 405


def test_v2_over_real_http_with_the_go_clients_request_shape(source):
    """The Go feedapi client: discover at the path, then GET path/events, types joined by ';'."""
    with running(make_app(source)) as base, requests.Session() as http:
        info = http.get(base + PATH, timeout=10).json()
        assert [p["id"] for p in info["partitions"]] == ["0", "1", "2"]
        url = (
            f"{base}{EVENTS}?token={info['token']}&partition=0&cursor=_first"
            "&pagesizehint=100&event-types=created%3Bpaid"
        )
        response = http.get(url, timeout=10)
        assert response.status_code == 200
        lines = lines_of(response.content)
        assert {line["data"]["type"] for line in lines[:-1]} == {"Created", "paid"}
        stale = http.get(f"{base}{EVENTS}?token=old&partition=0&cursor=_first", timeout=10)
        assert stale.status_code == 409
