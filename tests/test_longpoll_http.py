"""Long-polling (``wait``) over real HTTP on 127.0.0.1, v1 and v2, with MemorySource.

Bounds on time are generous on purpose: "answered before the wait ran out",
never "within so many milliseconds".
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson
import pytest
import requests

from tests.counting_source import CountingSource
from tests.http_server import serving_endpoint
from tests.waiting import PATIENCE, eventually
from zeh_mssql.blueprint import FeedEndpoint
from zeh_mssql.protocol_v2 import feed_token

PATH = "/orders/feed/v1"
LONG_WAIT = 30


def lines_of(body: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in body.splitlines()]


class Feed:
    """A served CountingSource with its endpoint, to watch the waiters."""

    def __init__(self, partitions: int = 2, **options: Any) -> None:
        self.source = CountingSource(partitions)
        options = {"poll_max_interval": 0.2, **options}
        self.endpoint = FeedEndpoint(self.source, name="orders", **options)


@pytest.fixture
def feed() -> Iterator[tuple[Feed, str]]:
    served = Feed()
    with serving_endpoint(served.endpoint, PATH) as url:
        yield served, url


def get_in_background(url: str, params: dict[str, Any]) -> tuple[threading.Thread, dict[str, Any]]:
    result: dict[str, Any] = {}

    def run() -> None:
        started = time.monotonic()
        response = requests.get(url, params=params, timeout=LONG_WAIT + PATIENCE)
        result.update(response=response, elapsed=time.monotonic() - started)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, result


def test_an_append_answers_a_waiting_v1_request_before_the_wait_runs_out(feed):
    served, url = feed
    thread, result = get_in_background(url, {"n": 2, "cursor1": "_first", "wait": LONG_WAIT})
    eventually(lambda: served.endpoint.watcher.waiting(1) == 1, "the request waits")
    served.source.append(1, {"late": True})
    thread.join(LONG_WAIT + PATIENCE)
    response = result["response"]
    assert response.status_code == 200
    lines = lines_of(response.content)
    assert lines[0] == {"partition": 1, "data": {"late": True}}
    assert lines[1]["partition"] == 1
    assert lines[1]["cursor"] != "_first"
    assert result["elapsed"] < LONG_WAIT - PATIENCE
    eventually(lambda: served.endpoint.watcher.polling() == frozenset(), "polling stopped")


def test_an_idle_wait_answers_with_checkpoints_after_about_the_wait(feed):
    served, url = feed
    served.source.append(0, {"old": 1})
    head = served.source.fetch(0, "_last", 1).cursor
    started = time.monotonic()
    response = requests.get(
        url, params={"n": 2, "cursor0": head, "cursor1": "_last", "wait": 1}, timeout=PATIENCE
    )
    elapsed = time.monotonic() - started
    assert response.status_code == 200
    assert lines_of(response.content) == [
        {"partition": 0, "cursor": head},
        {"partition": 1, "cursor": "_first"},
    ]
    assert 0.95 <= elapsed < 1 + PATIENCE


def test_wait_is_capped_by_max_wait():
    served = Feed(max_wait=0.5)
    with serving_endpoint(served.endpoint, PATH) as url:
        started = time.monotonic()
        response = requests.get(
            url, params={"n": 2, "cursor0": "_last", "wait": 600}, timeout=PATIENCE
        )
    assert response.status_code == 200
    assert 0.45 <= time.monotonic() - started < PATIENCE


def test_events_already_there_are_answered_without_waiting(feed):
    served, url = feed
    served.source.append(0, {"x": 1})
    response = requests.get(url, params={"n": 2, "cursor0": "_first", "wait": LONG_WAIT})
    assert lines_of(response.content)[0]["data"] == {"x": 1}
    assert served.endpoint.watcher.polls == 0


@pytest.mark.parametrize("wait", ["soon", "-1", "", "1e9"])
def test_bad_wait_is_400_naming_wait(feed, wait):
    _served, url = feed
    response = requests.get(url, params={"n": 2, "cursor0": "_first", "wait": wait}, timeout=10)
    assert response.status_code == 400
    assert response.json()["error"].startswith("wait: expected a non-negative number")


def test_a_multi_partition_wait_answers_with_the_partition_that_moved(feed):
    served, url = feed
    params = {"n": 2, "cursor0": "_last", "cursor1": "_last", "wait": LONG_WAIT}
    thread, result = get_in_background(url, params)
    eventually(lambda: served.endpoint.watcher.waiting() == 1, "the request waits")
    assert served.endpoint.watcher.polling() == frozenset({0, 1})
    served.source.append(0, {"on": 0})
    thread.join(LONG_WAIT + PATIENCE)
    lines = lines_of(result["response"].content)
    assert lines[0] == {"partition": 0, "data": {"on": 0}}
    assert [line["partition"] for line in lines[1:]] == [0, 1]
    assert lines[2] == {"partition": 1, "cursor": "_first"}


def test_v2_fetch_long_polls_too(feed):
    served, url = feed
    params = {"token": feed_token(2), "partition": 1, "cursor": "_last", "wait": LONG_WAIT}
    thread, result = get_in_background(url + "/events", params)
    eventually(lambda: served.endpoint.watcher.waiting(1) == 1, "the request waits")
    served.source.append(1, {"v2": True})
    thread.join(LONG_WAIT + PATIENCE)
    lines = lines_of(result["response"].content)
    assert lines[0] == {"data": {"v2": True}}
    assert set(lines[1]) == {"cursor"}
    assert result["elapsed"] < LONG_WAIT - PATIENCE


def test_v2_wait_with_a_filter_keeps_waiting_past_filtered_events(feed):
    served, url = feed
    params = {
        "token": feed_token(2),
        "partition": 0,
        "cursor": "_first",
        "event-types": "wanted",
        "wait": LONG_WAIT,
    }
    thread, result = get_in_background(url + "/events", params)
    eventually(lambda: served.endpoint.watcher.waiting(0) == 1, "the request waits")
    served.source.append(0, {"skip": 1}, event_type="other")
    # The filtered-out event wakes the request, which reads past it and waits on.
    eventually(lambda: served.source.page_reads >= 2, "the request read past it")
    eventually(lambda: served.endpoint.watcher.waiting(0) == 1, "the request waits again")
    served.source.append(0, {"take": 1}, event_type="Wanted")
    thread.join(LONG_WAIT + PATIENCE)
    lines = lines_of(result["response"].content)
    assert lines[0] == {"data": {"take": 1}}
    assert lines[1]["cursor"] == served.source.fetch(0, "_last", 1).cursor


def test_a_client_that_disconnects_stops_its_wait(feed):
    served, url = feed
    host, port = url.removeprefix("http://").split("/")[0].split(":")
    watcher = served.endpoint.watcher
    with socket.create_connection((host, int(port)), timeout=PATIENCE) as client:
        request = f"GET {PATH}?n=2&cursor0=_last&wait={LONG_WAIT} HTTP/1.1\r\nHost: x\r\n\r\n"
        client.sendall(request.encode())
        eventually(lambda: watcher.waiting() == 1, "the request waits")
        assert watcher.polling() == frozenset({0})
    # Long before the 30 s wait ends, the request notices and stops waiting and polling.
    eventually(lambda: watcher.waiting() == 0, "the waiter left")
    eventually(lambda: watcher.polling() == frozenset(), "polling stopped")
    polls = watcher.polls
    time.sleep(0.5)
    assert watcher.polls == polls


def test_200_concurrent_waiters_share_the_polls_and_are_all_answered():
    served = Feed(partitions=1)
    waiters = 200
    watcher = served.endpoint.watcher
    with serving_endpoint(served.endpoint, PATH) as url, ThreadPoolExecutor(waiters) as pool:

        def wait_once(_: int) -> list[dict[str, Any]]:
            with requests.Session() as http:
                response = http.get(
                    url,
                    params={"n": 1, "cursor0": "_first", "wait": LONG_WAIT},
                    timeout=LONG_WAIT + PATIENCE,
                )
                assert response.status_code == 200
                return lines_of(response.content)

        futures = [pool.submit(wait_once, i) for i in range(waiters)]
        eventually(lambda: watcher.waiting(0) == waiters, f"{waiters} requests wait")
        head_reads_while_waiting = served.source.head_reads
        started = time.monotonic()
        served.source.append(0, {"for": "everyone"})
        answers = [f.result(timeout=LONG_WAIT + PATIENCE) for f in futures]
        elapsed = time.monotonic() - started
    assert all(a[0] == {"partition": 0, "data": {"for": "everyone"}} for a in answers)
    assert elapsed < LONG_WAIT - PATIENCE
    # One poll per tick for the partition, not one per waiter.
    assert head_reads_while_waiting < waiters / 4
    assert served.source.head_reads == watcher.polls
