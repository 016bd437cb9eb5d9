"""Long-polls and FeedAPI v2 through SqlServerFeed: latency from commit, filters in SQL.

The feed is served by our blueprint on 127.0.0.1 (werkzeug, threaded) and read
over HTTP, logged in as a ``changefeed_reader``; writers publish as ``sa``.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import pyodbc
import pytest
import requests

from tests.http_server import serving_endpoint
from tests.waiting import PATIENCE, eventually
from zeh_mssql import db
from zeh_mssql.blueprint import FeedEndpoint
from zeh_mssql.pool import ConnectionPool
from zeh_mssql.protocol_v2 import feed_token
from zeh_mssql.sqlserver import SqlServerFeed

PATH = "/orders/feed/v1"
PARTITIONS = 2
POLL_CEILING = 0.25
LONG_WAIT = 30
PUBLISH = "exec changefeed.publish @feed = ?, @data = ?, @partition = ?, @event_type = ?"


@dataclass
class Served:
    url: str
    endpoint: FeedEndpoint
    admin_dsn: str


def execute(dsn: str, sql: str, *params: Any) -> None:
    with contextlib.closing(pyodbc.connect(dsn, autocommit=True, timeout=10)) as connection:
        connection.execute(sql, *params)


def publish(dsn: str, partition: int, data: dict[str, Any], event_type: str | None) -> None:
    execute(dsn, PUBLISH, "orders", orjson.dumps(data).decode(), partition, event_type)


@contextlib.contextmanager
def serve(admin_dsn: str, reader_dsn: str, mode: str) -> Iterator[Served]:
    execute(
        admin_dsn,
        "exec changefeed.create_feed @name = ?, @partition_count = ?, @mode = ?",
        "orders",
        PARTITIONS,
        mode,
    )
    pool = ConnectionPool(lambda: db.connect(reader_dsn, timeout=10, query_timeout=30), size=4)
    feed = SqlServerFeed.open("orders", pool)
    endpoint = FeedEndpoint(feed, name="orders", poll_max_interval=POLL_CEILING)
    with serving_endpoint(endpoint, PATH) as url:
        yield Served(url, endpoint, admin_dsn)


def lines_of(body: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in body.splitlines()]


class Background:
    """One long-poll GET in a thread, remembering when its answer arrived."""

    def __init__(self, url: str, params: dict[str, Any]) -> None:
        self.response: requests.Response | None = None
        self.answered_at = 0.0
        self.thread = threading.Thread(target=self._run, args=(url, params))
        self.thread.start()

    def _run(self, url: str, params: dict[str, Any]) -> None:
        self.response = requests.get(url, params=params, timeout=LONG_WAIT + PATIENCE)
        self.answered_at = time.monotonic()

    def result(self) -> list[dict[str, Any]]:
        self.thread.join(LONG_WAIT + PATIENCE)
        assert self.response is not None, "no answer"
        assert self.response.status_code == 200, self.response.text
        return lines_of(self.response.content)


@pytest.mark.parametrize("mode", ["outbox", "blocking"])
def test_a_long_poll_delivers_a_committed_event_within_the_poll_ceiling(
    migrated_dsn, create_login, mode, record_property
):
    with serve(migrated_dsn, create_login("changefeed_reader"), mode) as served:
        watcher = served.endpoint.watcher
        waiting = Background(served.url, {"n": PARTITIONS, "cursor1": "_last", "wait": LONG_WAIT})
        eventually(lambda: watcher.waiting(1) == 1, "the request waits")
        with contextlib.closing(
            pyodbc.connect(migrated_dsn, autocommit=False, timeout=10)
        ) as writer:
            writer.execute(PUBLISH, "orders", '{"order": 1}', 1, "created")
            if mode == "outbox":
                # Uncommitted, the event is invisible: polls go by, the request waits on.
                polls = watcher.polls
                eventually(lambda: watcher.polls >= polls + 3, "three more polls")
                assert waiting.response is None
                assert watcher.waiting(1) == 1
            writer.commit()
            committed_at = time.monotonic()
        lines = waiting.result()
        latency = waiting.answered_at - committed_at
        record_property("commit_to_delivery_s", round(latency, 3))
        assert lines[0] == {"partition": 1, "data": {"order": 1}}
        assert lines[1]["partition"] == 1
        # Within the poll ceiling, plus generous room for a busy test machine.
        assert latency < POLL_CEILING + 5
        eventually(lambda: watcher.polling() == frozenset(), "polling stopped")


def test_a_v2_long_poll_with_a_filter_waits_past_other_types(migrated_dsn, create_login):
    with serve(migrated_dsn, create_login("changefeed_reader"), "outbox") as served:
        token = requests.get(served.url, timeout=30).json()["token"]
        assert token == feed_token(PARTITIONS)
        params = {
            "token": token,
            "partition": 0,
            "cursor": "_last",
            "event-types": "Order.Paid",
            "wait": LONG_WAIT,
        }
        waiting = Background(served.url + "/events", params)
        eventually(lambda: served.endpoint.watcher.waiting(0) == 1, "the request waits")
        publish(served.admin_dsn, 0, {"n": 1}, "order.created")
        publish(served.admin_dsn, 0, {"n": 2}, "ORDER.PAID")
        lines = waiting.result()
        assert lines[0] == {"data": {"n": 2}}
        assert set(lines[-1]) == {"cursor"}


def read_feed_rows(dsn: str, partition: int, types: list[str], exclude: bool) -> list[Any]:
    """What changefeed.read_feed itself returns for a filter, as the reader login."""
    with contextlib.closing(pyodbc.connect(dsn, autocommit=True, timeout=10)) as connection:
        cursor = connection.execute(
            "exec changefeed.read_feed @feed = ?, @partition = ?, @pagesize = ?,"
            " @event_types = ?, @exclude_event_types = ?",
            "orders",
            partition,
            1000,
            orjson.dumps(types).decode(),
            exclude,
        )
        return [orjson.loads(row.data) for row in cursor.fetchall()]


def follow_v2(url: str, token: str, **filters: str) -> tuple[list[Any], list[str]]:
    """Read partition 0 to its end, two events per page; return the data and the cursors."""
    cursor, seen, cursors = "_first", [], []
    for _ in range(100):
        params = {"token": token, "partition": 0, "cursor": cursor, "pagesizehint": 2, **filters}
        response = requests.get(url + "/events", params=params, timeout=30)
        assert response.status_code == 200, response.text
        lines = lines_of(response.content)
        seen += [line["data"] for line in lines[:-1]]
        if lines[-1]["cursor"] == cursor:
            return seen, cursors
        cursor = lines[-1]["cursor"]
        cursors.append(cursor)
    raise AssertionError("the partition never ended")


def test_event_type_filters_run_in_sql_and_the_cursor_passes_what_they_drop(
    migrated_dsn, create_login
):
    reader = create_login("changefeed_reader")
    with serve(migrated_dsn, reader, "outbox") as served:
        kinds = ["noise", "noise", "Order.Created", None, "order.PAID", "noise", "other"]
        for n, kind in enumerate(kinds):
            publish(migrated_dsn, 0, {"n": n}, kind)
        token = requests.get(served.url, timeout=30).json()["token"]
        everything, cursors = follow_v2(served.url, token)
        assert everything == [{"n": n} for n in range(len(kinds))]
        head = cursors[-1]

        only, only_cursors = follow_v2(
            served.url, token, **{"event-types": "order.created;ORDER.paid"}
        )
        assert only == [{"n": 2}, {"n": 4}]
        # The first window held only noise: an empty page whose cursor still moved on.
        assert only_cursors[0] == cursors[0]
        assert only_cursors[-1] == head
        assert read_feed_rows(reader, 0, ["order.created", "order.paid"], False) == only

        skipped, skip_cursors = follow_v2(served.url, token, **{"skip-event-types": "NOISE;other"})
        # An event without a type matches no name, so skipping names keeps it.
        assert skipped == [{"n": 2}, {"n": 3}, {"n": 4}]
        assert skip_cursors[-1] == head
        assert read_feed_rows(reader, 0, ["noise", "other"], True) == skipped
