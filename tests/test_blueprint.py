"""The blueprint over Flask's test client and over a real socket on 127.0.0.1."""

from __future__ import annotations

import logging
from typing import Any

import orjson
import pytest
import requests
from flask import Flask, Request
from werkzeug.exceptions import Forbidden, Unauthorized

from tests.http_server import running
from zeh_mssql import create_blueprint
from zeh_mssql.source import Page, SourceError, SourceUnavailable, TypeFilter
from zeh_mssql.testing import MemorySource

PATH = "/orders/feed/v1"


def make_app(source: Any, path: str = PATH, **options: Any) -> Flask:
    app = Flask(__name__)
    app.register_blueprint(create_blueprint(source, path, **options))
    return app


def lines_of(body: bytes) -> list[dict[str, Any]]:
    assert body.endswith(b"\n") or body == b""
    return [orjson.loads(line) for line in body.splitlines()]


def drain(get: Any, partitions: int, start: str = "_first", hint: int = 7) -> dict[int, list[Any]]:
    """Read every partition to its end by following checkpoints, like a consumer does."""
    cursors = dict.fromkeys(range(partitions), start)
    seen: dict[int, list[Any]] = {p: [] for p in range(partitions)}
    for _ in range(10_000):
        query = {"n": partitions, "pagesizehint": hint}
        query.update({f"cursor{p}": c for p, c in cursors.items()})
        lines = lines_of(get(query))
        got_events = False
        for line in lines:
            if "cursor" in line:
                cursors[line["partition"]] = line["cursor"]
            else:
                seen[line["partition"]].append(line["data"])
                got_events = True
        if not got_events:
            return seen
    raise AssertionError("feed never ended")


@pytest.fixture
def source() -> MemorySource:
    source = MemorySource(4)
    for i in range(40):
        source.append(i % 4, {"i": i}, headers={"k": str(i), "other": "x"}, event_type="T")
    return source


def test_multi_partition_request(source):
    client = make_app(source).test_client()
    response = client.get(PATH, query_string={"n": 4, "cursor0": "_first", "cursor2": "_first"})
    assert response.status_code == 200
    assert response.mimetype == "application/x-ndjson"
    lines = lines_of(response.data)
    assert [line["partition"] for line in lines] == [0] * 11 + [2] * 11
    assert "cursor" in lines[10]
    assert "cursor" in lines[21]
    assert [line["data"]["i"] for line in lines[:10]] == list(range(0, 40, 4))
    assert all("headers" not in line for line in lines)


def test_headers_selection(source):
    client = make_app(source).test_client()
    query = {"n": 4, "cursor1": "_first", "pagesizehint": 1}
    every = lines_of(client.get(PATH, query_string={**query, "headers": "_all"}).data)
    assert every[0]["headers"] == {"k": "1", "other": "x"}
    some = lines_of(client.get(PATH, query_string={**query, "headers": "k,missing"}).data)
    assert some[0]["headers"] == {"k": "1"}


def test_paging_from_first_to_the_end(source):
    client = make_app(source).test_client()
    seen = drain(lambda q: client.get(PATH, query_string=q).data, 4, hint=3)
    assert seen == {p: [{"i": i} for i in range(p, 40, 4)] for p in range(4)}


def test_page_size_hint_is_split_and_capped(source):
    client = make_app(source, default_page_size=4, max_page_size=6).test_client()
    query = {"n": 4, "cursor0": "_first", "cursor1": "_first"}
    default = lines_of(client.get(PATH, query_string=query).data)
    assert sum("data" in line for line in default) == 4
    capped = lines_of(client.get(PATH, query_string={**query, "pagesizehint": 1000}).data)
    assert [line["partition"] for line in capped if "data" in line] == [0, 0, 0, 1, 1, 1]


def test_last_gives_a_concrete_cursor_then_new_events(source):
    client = make_app(source).test_client()
    (checkpoint,) = lines_of(client.get(PATH, query_string={"n": 4, "cursor3": "_last"}).data)
    assert checkpoint["cursor"] not in ("_last", "_first")
    source.append(3, {"new": True})
    lines = lines_of(client.get(PATH, query_string={"n": 4, "cursor3": checkpoint["cursor"]}).data)
    assert [line.get("data") for line in lines[:-1]] == [{"new": True}]


def test_empty_partition_answers_with_checkpoint_only():
    client = make_app(MemorySource(2)).test_client()
    lines = lines_of(
        client.get(PATH, query_string={"n": 2, "cursor0": "_first", "cursor1": "_last"}).data
    )
    assert lines == [{"partition": 0, "cursor": "_first"}, {"partition": 1, "cursor": "_first"}]


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"cursor0": "_first"}, "handshake error: partition count missing"),
        ({"n": 2, "cursor0": "_first"}, "handshake error: partition count mismatch"),
        ({"n": "x", "cursor0": "_first"}, "n: expected the partition count as an integer, got 'x'"),
        ({"n": 4}, "cursors are missing"),
        ({"n": 4, "cursor9": "_first"}, "partition doesn't exist"),
        ({"n": 4, "cursor0": "bogus"}, "cursor0: 'bogus' is not a cursor"),
        ({"n": 4, "cursor0": "_first", "pagesizehint": "-5"}, "pagesizehint: expected"),
    ],
)
def test_bad_requests_are_400_with_a_json_message(source, query, message):
    response = make_app(source).test_client().get(PATH, query_string=query)
    assert response.status_code == 400
    assert response.mimetype == "application/json"
    assert response.get_json()["error"].startswith(message)


class FailingSource:
    partition_count = 2

    def __init__(self, error: Exception, fail_on: int = 1) -> None:
        self.error = error
        self.fail_on = fail_on

    def fetch(
        self, partition: int, cursor: str, limit: int, type_filter: TypeFilter | None = None
    ) -> Page:
        if partition == self.fail_on:
            raise self.error
        return Page([], cursor)


def test_unavailable_source_is_503_with_retry_after_and_no_partial_body():
    error = SourceUnavailable("[08001] login timeout to Server=db;PWD=secret")
    response = (
        make_app(FailingSource(error))
        .test_client()
        .get(PATH, query_string={"n": 2, "cursor0": "_first", "cursor1": "_first"})
    )
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    assert response.get_json() == {"error": "the event store is unavailable; retry later"}
    assert b"secret" not in response.data
    assert b"partition" not in response.data


@pytest.mark.parametrize(
    "error", [SourceError("boom PWD=secret"), RuntimeError("Traceback PWD=secret")]
)
def test_other_failures_are_500_without_internals(error):
    response = (
        make_app(FailingSource(error))
        .test_client()
        .get(PATH, query_string={"n": 2, "cursor0": "_first", "cursor1": "_first"})
    )
    assert response.status_code == 500
    assert response.get_json() == {"error": "internal server error"}


def test_authorizer_refusals_become_json_errors(source):
    def authorize(request: Request) -> None:
        token = request.headers.get("Authorization")
        if token is None:
            raise Unauthorized("a bearer token is required", www_authenticate=None)
        if token != "Bearer good":
            raise Forbidden("this token may not read the feed")

    client = make_app(source, authorize=authorize).test_client()
    query = {"n": 4, "cursor0": "_first"}
    missing = client.get(PATH, query_string=query)
    assert missing.status_code == 401
    assert missing.get_json() == {"error": "a bearer token is required"}
    wrong = client.get(PATH, query_string=query, headers={"Authorization": "Bearer bad"})
    assert wrong.status_code == 403
    assert wrong.get_json() == {"error": "this token may not read the feed"}
    ok = client.get(PATH, query_string=query, headers={"Authorization": "Bearer good"})
    assert ok.status_code == 200


def test_authorizer_runs_before_validation(source):
    def refuse(request: Request) -> None:
        raise Forbidden("no")

    response = make_app(source, authorize=refuse).test_client().get(PATH)
    assert response.status_code == 403


def test_two_feeds_on_two_paths_in_one_app():
    orders, payments = MemorySource(1), MemorySource(2)
    orders.append(0, {"order": 1})
    payments.append(1, {"payment": 1})
    app = Flask(__name__)
    app.register_blueprint(create_blueprint(orders, "/orders/feed/v1"))
    app.register_blueprint(create_blueprint(payments, "/payments/feed/v1"))
    client = app.test_client()
    a = lines_of(client.get("/orders/feed/v1?n=1&cursor0=_first").data)
    b = lines_of(client.get("/payments/feed/v1?n=2&cursor1=_first").data)
    assert a[0]["data"] == {"order": 1}
    assert b[0]["data"] == {"payment": 1}


def test_blueprint_options_are_checked():
    with pytest.raises(ValueError, match="must start with '/'"):
        create_blueprint(MemorySource(1), "feed/v1")
    with pytest.raises(ValueError, match="default_page_size <= max_page_size"):
        create_blueprint(MemorySource(1), "/f", default_page_size=10, max_page_size=5)


def test_only_get_is_served(source):
    assert make_app(source).test_client().post(PATH).status_code == 405


def test_one_log_line_per_request(source, caplog):
    client = make_app(source, name="orders").test_client()
    with caplog.at_level(logging.INFO, logger="zeh_mssql.requests"):
        client.get(PATH, query_string={"n": 4, "cursor0": "_first", "cursor1": "_first"})
        client.get(PATH, query_string={"n": 9, "cursor0": "_first"})
    ok, bad = (r for r in caplog.records if r.name == "zeh_mssql.requests")
    assert (ok.feed, ok.status, ok.partitions, ok.events) == ("orders", 200, [0, 1], 20)
    assert (bad.status, bad.events) == (400, 0)
    assert ok.duration_ms >= 0


# --- a real server on 127.0.0.1 -------------------------------------------------------


def test_real_http_paging_last_and_two_feeds():
    orders, payments = MemorySource(4), MemorySource(1)
    for i in range(103):
        orders.append(i % 4, {"i": i})
    payments.append(0, {"p": 0})
    app = Flask(__name__)
    app.register_blueprint(create_blueprint(orders, "/orders/feed/v1"))
    app.register_blueprint(create_blueprint(payments, "/payments/feed/v1"))
    with running(app) as base, requests.Session() as http:

        def get(url: str) -> Any:
            def fetch(query: dict[str, Any]) -> bytes:
                response = http.get(url, params=query, timeout=10)
                assert response.status_code == 200, response.text
                assert response.headers["Content-Type"] == "application/x-ndjson"
                return response.content

            return fetch

        seen = drain(get(f"{base}/orders/feed/v1"), 4, hint=10)
        assert seen == {p: [{"i": i} for i in range(p, 103, 4)] for p in range(4)}
        assert drain(get(f"{base}/payments/feed/v1"), 1) == {0: [{"p": 0}]}

        head = lines_of(get(f"{base}/orders/feed/v1")({"n": 4, "cursor2": "_last"}))
        orders.append(2, {"after": "last"})
        lines = lines_of(get(f"{base}/orders/feed/v1")({"n": 4, "cursor2": head[0]["cursor"]}))
        assert lines[0] == {"partition": 2, "data": {"after": "last"}}

        refused = http.get(
            f"{base}/orders/feed/v1", params={"n": 3, "cursor0": "_first"}, timeout=10
        )
        assert refused.status_code == 400
        assert refused.json() == {"error": "handshake error: partition count mismatch"}


def test_go_reference_client_request_shape():
    """The Go client joins headers with commas and omits a zero pagesizehint."""
    source = MemorySource(4)
    source.append(1, {"x": 1}, headers={"a": "1", "b": "2", "c": "3"})
    app = make_app(source)
    with running(app) as base:
        url = f"{base}{PATH}?n=4&cursor1=_first&headers=a,c"
        body = requests.get(url, timeout=10).content
    assert lines_of(body)[0] == {"partition": 1, "headers": {"a": "1", "c": "3"}, "data": {"x": 1}}
