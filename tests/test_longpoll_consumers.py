"""consume() and tail --follow long-poll: new events arrive without a backoff delay."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from tests.http_server import serving_endpoint
from tests.misbehaving_server import Exchange, scripted_server
from tests.waiting import PATIENCE, eventually
from zeh_mssql.blueprint import FeedEndpoint
from zeh_mssql.cli import main
from zeh_mssql.client import Client
from zeh_mssql.consumer import Backoff, MemoryCursorStore, MemoryTransaction, consume
from zeh_mssql.tail import tail
from zeh_mssql.testing import MemorySource

PATH = "/orders/feed/v1"


class Served:
    def __init__(self, max_wait: float) -> None:
        self.source = MemorySource(2)
        self.endpoint = FeedEndpoint(
            self.source, name="orders", max_wait=max_wait, poll_max_interval=0.1
        )


@pytest.fixture
def served() -> Iterator[tuple[Served, str]]:
    feed = Served(max_wait=30)
    with serving_endpoint(feed.endpoint, PATH) as url:
        yield feed, url


def record(transaction: MemoryTransaction, events: list[Any]) -> None:
    transaction.changes.extend(e.data for e in events)


def test_consume_with_wait_handles_new_events_without_sleeping(served):
    feed, url = served
    store = MemoryCursorStore()
    stop = threading.Event()
    sleeps: list[float] = []
    thread = threading.Thread(
        target=consume,
        args=(Client(url, 2), store, record),
        kwargs={"wait": 30, "stop": stop, "sleep": sleeps.append},
    )
    thread.start()
    try:
        for n in range(3):
            eventually(lambda: feed.endpoint.watcher.waiting() == 1, "consume long-polls")
            feed.source.append(n % 2, {"n": n})
            eventually(lambda n=n: len(store.committed) == n + 1, f"event {n} handled")
    finally:
        stop.set()
        feed.source.append(0, {"n": "release"})  # ends the request in flight
        thread.join(PATIENCE)
    assert not thread.is_alive()
    assert store.committed[:3] == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert sleeps == []  # the server did all the waiting


def test_consume_does_not_spin_against_a_server_that_does_not_hold_requests():
    feed = Served(max_wait=0)
    sleeps: list[float] = []
    backoff = Backoff(initial=0.5, maximum=2)
    with serving_endpoint(feed.endpoint, PATH) as url:
        consume(
            Client(url, 2),
            MemoryCursorStore(),
            record,
            wait=30,
            backoff=backoff,
            sleep=sleeps.append,
            stop=lambda: len(sleeps) >= 4,
        )
    assert len(sleeps) == 4
    assert all(0 < s <= backoff.delay(i) for i, s in enumerate(sleeps))
    assert sleeps[-1] > 1  # the backoff still grows


def test_tail_follow_with_wait_prints_events_as_they_arrive(served):
    feed, url = served
    out = io.BytesIO()
    sleeps: list[float] = []
    done = threading.Event()
    thread = threading.Thread(
        target=tail,
        args=(Client(url, 2), out),
        kwargs={
            "follow": True,
            "wait": 30,
            "sleep": sleeps.append,
            "stop": done.is_set,
            "backoff": Backoff(initial=0.25, maximum=5),
        },
    )
    thread.start()
    try:
        eventually(lambda: feed.endpoint.watcher.waiting() == 1, "tail long-polls")
        feed.source.append(1, {"n": 1})
        eventually(lambda: out.getvalue().count(b"\n") == 1, "the event printed")
    finally:
        done.set()
        feed.source.append(0, {"n": "release"})
        thread.join(PATIENCE)
    assert orjson.loads(out.getvalue().splitlines()[0]) == {"n": 1}
    assert sleeps == []


def test_tail_without_follow_never_holds_a_request(served):
    feed, url = served
    started = time.monotonic()
    assert tail(Client(url, 2), io.BytesIO(), wait=30) == 0
    assert time.monotonic() - started < PATIENCE
    assert feed.endpoint.watcher.polls == 0


def test_the_tail_command_long_polls_with_follow():
    def page(exchange: Exchange) -> None:
        exchange.respond(200, b'{"partition":0,"data":{"n":1}}\n{"partition":0,"cursor":"C"}\n')

    def refuse(exchange: Exchange) -> None:
        exchange.respond(400, b'{"error":"stop here"}')

    def waits_sent(*options: str) -> list[str | None]:
        with scripted_server() as server:
            server.answer(page, refuse)
            result = CliRunner().invoke(
                main, ["tail", server.url, "--partitions", "1", "--follow", *options]
            )
        assert result.exit_code == 1
        assert "stop here" in result.stderr
        return [dict(exchange.query).get("wait") for exchange in server.requests]

    assert waits_sent() == ["20", "20"]
    assert waits_sent("--wait", "2.5") == ["2.5", "2.5"]
    assert waits_sent("--wait", "0") == [None, None]


def test_the_tail_command_rejects_a_negative_wait():
    args = ["tail", "http://x/feed", "--partitions", "1", "--wait", "-1"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert "--wait" in result.stderr
