"""The client's FeedAPI v2 support and long-polling, against our blueprint and scripted servers."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask

from tests.http_server import running, serving_endpoint
from tests.misbehaving_server import Exchange, ScriptedServer, scripted_server
from tests.waiting import PATIENCE, eventually
from zeh_mssql.blueprint import FeedEndpoint, add_feed_routes
from zeh_mssql.client import (
    V1_TOKEN,
    Client,
    Cursor,
    EventPage,
    FeedInfo,
    IncompleteResponse,
    MalformedResponse,
    RediscoveryNeeded,
)
from zeh_mssql.protocol_v2 import feed_token
from zeh_mssql.testing import MemorySource

PATH = "/orders/feed/v1"


class Served:
    def __init__(self, source: MemorySource, url: str, endpoint: FeedEndpoint) -> None:
        self.source = source
        self.url = url
        self.endpoint = endpoint


@pytest.fixture
def served() -> Iterator[Served]:
    source = MemorySource(3)
    for i in range(20):
        source.append(i % 3, {"i": i}, event_type="odd" if i % 2 else "even")
    endpoint = FeedEndpoint(source, name="orders", poll_max_interval=0.2)
    with serving_endpoint(endpoint, PATH) as url:
        yield Served(source, url, endpoint)


def read_partition(client: Client, info: FeedInfo, partition: int, **options: Any) -> list[Any]:
    """Follow one partition's checkpoints to its end, one v2 page at a time."""
    page, cursor, seen = EventPage(), "_first", []
    for _ in range(1000):
        page.clear()
        client.fetch_partition(info.token, partition, cursor, 3, page, **options)
        assert all(e.partition == partition and e.headers == {} for e in page.events)
        seen += [e.data for e in page.events]
        if page.cursors[partition] == cursor:
            return seen
        cursor = page.cursors[partition]
    raise AssertionError("the partition never ended")


def test_discover_then_read_every_partition(served):
    with Client(served.url, 3) as client:
        info = client.discover()
        assert info == FeedInfo(feed_token(3), (0, 1, 2), exactly_once=True)
        for partition in info.partitions:
            expected = [{"i": i} for i in range(partition, 20, 3)]
            assert read_partition(client, info, partition) == expected


def test_event_type_filters_run_on_the_server(served):
    with Client(served.url, 3) as client:
        info = client.discover()
        evens = read_partition(client, info, 0, event_types=["EVEN"])
        assert evens == [{"i": i} for i in range(0, 20, 3) if i % 2 == 0]
        assert read_partition(client, info, 0, skip_event_types=["Odd"]) == evens
        with pytest.raises(ValueError, match="not both"):
            client.fetch_partition(
                info.token, 0, "_first", 0, EventPage(), event_types=["a"], skip_event_types=["b"]
            )
        with pytest.raises(ValueError, match="without ';'"):
            client.fetch_partition(info.token, 0, "_first", 0, EventPage(), event_types=["a;b"])


def test_a_stale_token_asks_for_rediscovery(served):
    with Client(served.url, 3) as client, pytest.raises(RediscoveryNeeded):
        client.fetch_partition(feed_token(4), 0, "_first", 0, EventPage())


def test_fetch_events_long_polls(served):
    page = EventPage()
    with Client(served.url, 3) as client:
        head = served.source.fetch(1, "_last", 1).cursor
        thread = threading.Thread(
            target=client.fetch_events, args=([Cursor(1, head)], 0, page), kwargs={"wait": 30}
        )
        started = time.monotonic()
        thread.start()
        eventually(lambda: served.endpoint.watcher.waiting(1) == 1, "the request waits")
        served.source.append(1, {"late": True})
        thread.join(30 + PATIENCE)
    assert [e.data for e in page.events] == [{"late": True}]
    assert time.monotonic() - started < 30 - PATIENCE


def test_fetch_partition_long_polls(served):
    page = EventPage()
    with Client(served.url, 3) as client:
        info = client.discover()
        thread = threading.Thread(
            target=client.fetch_partition,
            args=(info.token, 2, "_last", 0, page),
            kwargs={"wait": 30},
        )
        thread.start()
        eventually(lambda: served.endpoint.watcher.waiting(2) == 1, "the request waits")
        served.source.append(2, {"late": 2})
        thread.join(30 + PATIENCE)
    assert [e.data for e in page.events] == [{"late": 2}]


def test_the_read_timeout_is_extended_by_the_wait(served):
    page = EventPage()
    # A 1 s read timeout alone would give up while the server holds the 2 s wait.
    with Client(served.url, 3, timeout=1) as client:
        started = time.monotonic()
        client.fetch_events([Cursor(0, "_last")], 0, page, wait=2)
    assert page.events == []
    assert page.cursors == {0: served.source.fetch(0, "_last", 1).cursor}
    assert time.monotonic() - started >= 1.9


def test_a_v1_only_server_is_read_through_the_v1_token():
    source = MemorySource(2)
    source.append(1, {"v1": True})
    app = Flask(__name__)
    add_feed_routes(app, PATH, FeedEndpoint(source, name="orders"))

    def v1_only(environ: dict[str, Any], start_response: Any) -> Any:
        # What a ZeroEventHub v1 server answers to a GET without parameters.
        if not environ.get("QUERY_STRING"):
            start_response("400 Bad Request", [("Content-Type", "application/json")])
            return [b'{"error":"handshake error: partition count missing"}']
        return app(environ, start_response)

    with running(v1_only) as base, Client(base + PATH, 2) as client:
        info = client.discover()
        assert info == FeedInfo(V1_TOKEN, (0, 1))
        page = EventPage()
        client.fetch_partition(info.token, 1, "_first", 0, page)
        assert [e.data for e in page.events] == [{"v1": True}]
        with pytest.raises(ValueError, match="need a FeedAPI v2 server"):
            client.fetch_partition(info.token, 1, "_first", 0, page, event_types=["x"])


# --- what a well-behaved server never sends ------------------------------------------


@pytest.fixture
def scripted() -> Iterator[ScriptedServer]:
    with scripted_server() as server:
        yield server


def answer(body: bytes, status: int = 200) -> Callable[[Exchange], None]:
    return lambda exchange: exchange.respond(status, body)


def test_request_shape_matches_the_go_feedapi_client(scripted):
    scripted.answer(answer(b'{"cursor":"c1"}\n'))
    with Client(scripted.url, 1) as client:
        client.fetch_partition(
            "tok", 4, "_first", 50, EventPage(), event_types=["a", "B"], wait=2.5
        )
    (exchange,) = scripted.requests
    assert exchange.handler.path.split("?")[0] == "/feed/v1/events"
    assert exchange.query == [
        ("token", "tok"),
        ("partition", "4"),
        ("cursor", "_first"),
        ("pagesizehint", "50"),
        ("event-types", "a;B"),
        ("wait", "2.5"),
    ]


def test_unknown_commands_are_ignored_and_events_reach_the_receiver(scripted):
    body = b'{"data":{"a":1}}\n{"resync":"partitions"}\n{"data":"text"}\n{"cursor":"c2"}\n'
    scripted.answer(answer(body))
    page = EventPage()
    with Client(scripted.url, 1) as client:
        client.fetch_partition("tok", 7, "_first", 0, page)
    assert [(e.partition, e.data) for e in page.events] == [(7, {"a": 1}), (7, "text")]
    assert page.cursors == {7: "c2"}


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b'{"data":{"a":1}}\n', IncompleteResponse),
        (b"", IncompleteResponse),
        (b'{"cursor":"c"}\n{"data":1}\n', IncompleteResponse),
        (b"[1]\n", MalformedResponse),
        (b'{"cursor":""}\n', MalformedResponse),
        (b"not json\n", MalformedResponse),
    ],
)
def test_broken_v2_responses_are_errors(scripted, body, error):
    scripted.answer(answer(body))
    page = EventPage()
    with Client(scripted.url, 1) as client, pytest.raises(error):
        client.fetch_partition("tok", 0, "_first", 0, page)


@pytest.mark.parametrize(
    "body",
    [b"[]", b'{"partitions":[]}', b'{"token":"t","partitions":[{"id":1}]}', b'{"token":"t"}'],
)
def test_a_broken_discovery_document_is_malformed(scripted, body):
    scripted.answer(answer(body))
    with Client(scripted.url, 1) as client, pytest.raises(MalformedResponse):
        client.discover()


def test_wait_values_are_sent_as_plain_seconds(scripted):
    scripted.answer(answer(b'{"partition":0,"cursor":"c"}\n'))
    with Client(scripted.url, 1) as client:
        for wait in (30, 0.25, 0.0001, 0):
            client.fetch_events([Cursor(0, "_first")], 0, EventPage(), wait=wait)
        with pytest.raises(ValueError, match="wait must not be negative"):
            client.fetch_events([Cursor(0, "_first")], 0, EventPage(), wait=-1)
    waits = [dict(e.query).get("wait") for e in scripted.requests]
    assert waits == ["30", "0.25", None, None]
