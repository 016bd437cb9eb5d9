"""Our client against our blueprint serving a MemorySource, over real HTTP on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests
from flask import Request
from werkzeug.exceptions import Unauthorized

from tests.http_server import serving
from zeh_mssql.client import (
    ALL_HEADERS,
    Client,
    Cursor,
    EventDecodeError,
    EventPage,
    FeedEvent,
    HTTPStatusError,
    TypedEventPage,
)
from zeh_mssql.testing import MemorySource

TOKEN = "s3cret"


@dataclass
class Feed:
    source: MemorySource
    url: str


def require_token(request: Request) -> None:
    if request.headers.get("Authorization") != f"Bearer {TOKEN}":
        raise Unauthorized("a bearer token is required")


def serve(source: MemorySource, **blueprint_args: Any) -> Iterator[Feed]:
    with serving(source, "/orders/feed/v1", **blueprint_args) as url:
        yield Feed(source, url)


@pytest.fixture
def feed() -> Iterator[Feed]:
    yield from serve(MemorySource(3))


@pytest.fixture
def guarded_feed() -> Iterator[Feed]:
    yield from serve(MemorySource(1), authorize=require_token)


def authorize(request: requests.PreparedRequest) -> None:
    request.headers["Authorization"] = f"Bearer {TOKEN}"


def test_paging_through_every_partition_to_the_end(feed: Feed) -> None:
    appended: dict[int, list[tuple[int, str]]] = {0: [], 1: [], 2: []}
    for n in range(40):
        partition = n % 3 if n < 30 else 2  # partition 2 ends up the longest
        appended[partition].append((n, feed.source.append(partition, {"n": n})))

    client = Client(feed.url, 3)
    cursors = {p: "_first" for p in range(3)}
    received: dict[int, list[int]] = {0: [], 1: [], 2: []}
    page = EventPage()
    pages = 0
    while True:
        page.clear()
        client.fetch_events([Cursor(p, c) for p, c in cursors.items()], 6, page)
        if not page.events:
            break
        pages += 1
        assert len(page.events) <= 6
        for event in page.events:
            received[event.partition].append(event.data["n"])
        cursors.update(page.cursors)

    assert pages >= 40 // 6
    for partition, events in appended.items():
        assert received[partition] == [n for n, _ in events]
        # The last checkpoint is the position of the partition's last event.
        assert cursors[partition] == events[-1][1]
    # At the end, fetching again returns the same cursors and nothing else.
    assert page.cursors == cursors


def test_a_subset_of_partitions_and_cursors_from_the_middle(feed: Feed) -> None:
    first = feed.source.append(1, {"n": 1})
    feed.source.append(1, {"n": 2})
    feed.source.append(0, {"n": 0})
    page = EventPage()
    Client(feed.url, 3).fetch_events([Cursor(1, first)], 0, page)
    assert [(e.partition, e.data) for e in page.events] == [(1, {"n": 2})]
    assert set(page.cursors) == {1}


def test_last_resolves_to_a_concrete_cursor_that_then_sees_only_new_events(feed: Feed) -> None:
    feed.source.append(0, {"old": True})
    client = Client(feed.url, 3)
    page = EventPage()
    client.fetch_events([Cursor(0, "_last"), Cursor(1, "_last")], 0, page)
    assert page.events == []
    assert page.cursors[0] not in ("_last", "_first")
    assert page.cursors[1] == "_first"  # an empty partition's head is its start

    feed.source.append(0, {"new": 0})
    feed.source.append(1, {"new": 1})
    cursors = [Cursor(p, c) for p, c in page.cursors.items()]
    page.clear()
    client.fetch_events(cursors, 0, page)
    assert [(e.partition, e.data) for e in page.events] == [(0, {"new": 0}), (1, {"new": 1})]


def test_headers_are_sent_only_as_asked(feed: Feed) -> None:
    feed.source.append(0, {"n": 1}, headers={"trace": "t1", "tenant": "acme", "x": "y"})
    feed.source.append(0, {"n": 2})
    client = Client(feed.url, 3)

    def headers_of(names: list[str]) -> list[dict[str, str]]:
        page = EventPage()
        client.fetch_events([Cursor(0, "_first")], 0, page, names)
        return [dict(e.headers) for e in page.events]

    assert headers_of([]) == [{}, {}]
    assert headers_of(["trace", "tenant"]) == [{"trace": "t1", "tenant": "acme"}, {}]
    assert headers_of([ALL_HEADERS]) == [{"trace": "t1", "tenant": "acme", "x": "y"}, {}]


def test_the_request_processor_is_applied_and_the_original_client_unchanged(
    guarded_feed: Feed,
) -> None:
    guarded_feed.source.append(0, {"n": 1})
    plain = Client(guarded_feed.url, 1)
    authorized = plain.with_request_processor(authorize)
    seen: list[str] = []
    traced = authorized.with_request_processor(lambda r: seen.append(r.headers["Authorization"]))

    page = EventPage()
    traced.fetch_events([Cursor(0, "_first")], 0, page)
    assert [e.data for e in page.events] == [{"n": 1}]
    # Processors run in the order added: the second sees what the first set.
    assert seen == [f"Bearer {TOKEN}"]

    with pytest.raises(HTTPStatusError) as caught:
        plain.fetch_events([Cursor(0, "_first")], 0, EventPage())
    assert caught.value.status == 401
    assert "bearer token is required" in str(caught.value)


def test_a_partition_count_mismatch_is_a_400(feed: Feed) -> None:
    with pytest.raises(HTTPStatusError) as caught:
        Client(feed.url, 2).fetch_events([Cursor(0, "_first")], 0, EventPage())
    assert caught.value.status == 400
    assert "partition count mismatch" in str(caught.value)


@dataclass
class Order:
    order_id: str
    amount: int


def test_a_typed_page_decodes_into_a_dataclass_ignoring_unknown_fields(feed: Feed) -> None:
    feed.source.append(2, {"order_id": "A-1", "amount": 5, "added_later": [1]})
    feed.source.append(2, {"order_id": "A-2", "amount": 7})
    page = TypedEventPage(Order)
    Client(feed.url, 3).fetch_events([Cursor(2, "_first")], 0, page)
    assert page.events == [
        FeedEvent(2, {}, Order("A-1", 5)),
        FeedEvent(2, {}, Order("A-2", 7)),
    ]


def test_a_typed_page_decodes_with_a_callable(feed: Feed) -> None:
    feed.source.append(0, [1, 2, 3])
    page = TypedEventPage(lambda data: sum(data))
    Client(feed.url, 3).fetch_events([Cursor(0, "_first")], 0, page)
    assert [e.data for e in page.events] == [6]


def test_data_that_does_not_fit_the_type_raises_and_leaves_no_cursor(feed: Feed) -> None:
    feed.source.append(0, {"order_id": "A-1", "amount": 5})
    feed.source.append(0, {"order_id": "A-2"})
    page = TypedEventPage(Order)
    with pytest.raises(EventDecodeError, match="partition 0"):
        Client(feed.url, 3).fetch_events([Cursor(0, "_first")], 0, page)
    assert page.cursors == {}
    assert page.events == []


def test_clear_empties_a_page_for_reuse(feed: Feed) -> None:
    feed.source.append(0, {"n": 1})
    page = EventPage()
    Client(feed.url, 3).fetch_events([Cursor(0, "_first")], 0, page)
    assert page.events
    assert page.cursors
    page.clear()
    assert page.events == []
    assert page.cursors == {}


def test_the_client_uses_a_given_session(feed: Feed) -> None:
    feed.source.append(0, {"n": 1})
    session = requests.Session()
    session.headers["X-Trace"] = "from-session"
    seen: list[str | None] = []
    client = Client(feed.url, 3, session=session).with_request_processor(
        lambda r: seen.append(r.headers.get("X-Trace"))
    )
    with client:
        client.fetch_events([Cursor(0, "_first")], 0, EventPage())
    assert seen == ["from-session"]
