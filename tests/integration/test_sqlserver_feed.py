"""SqlServerFeed against SQL Server: pages, cursors, headers, type filters, the replica path."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import orjson
import pyodbc
import pytest

from zeh_mssql import db
from zeh_mssql.pool import Connection, ConnectionPool
from zeh_mssql.source import FIRST, LAST, SourceError, TypeFilter
from zeh_mssql.sqlserver import SqlServerFeed, UnknownFeed, list_feeds, ping


def execute(dsn: str, sql: str, *params: Any) -> None:
    with contextlib.closing(pyodbc.connect(dsn, autocommit=True, timeout=10)) as connection:
        connection.execute(sql, *params)


def create_feed(dsn: str, name: str, partitions: int, mode: str) -> None:
    execute(
        dsn,
        "exec changefeed.create_feed @name = ?, @partition_count = ?, @mode = ?",
        name,
        partitions,
        mode,
    )


def publish(
    dsn: str,
    feed: str,
    partition: int,
    data: str,
    *,
    event_type: str | None = None,
    headers: str | None = None,
) -> None:
    execute(
        dsn,
        "exec changefeed.publish @feed = ?, @data = ?, @partition = ?, @event_type = ?,"
        " @headers = ?",
        feed,
        data,
        partition,
        event_type,
        headers,
    )


class CountingPool(ConnectionPool):
    """A real pool that counts the calls it ran, to see which database served a read."""

    def __init__(self, dsn: str) -> None:
        super().__init__(lambda: db.connect(dsn, timeout=10, query_timeout=30), size=2)
        self.runs = 0

    def run(self, work: Callable[[Connection], Any]) -> Any:
        self.runs += 1
        return super().run(work)


@pytest.fixture
def pool(migrated_dsn: str):
    pool = ConnectionPool(lambda: db.connect(migrated_dsn, timeout=10, query_timeout=30), size=2)
    yield pool
    pool.close()


def test_registry_and_ping(migrated_dsn, pool):
    ping(pool)
    create_feed(migrated_dsn, "orders", 4, "outbox")
    create_feed(migrated_dsn, "audit", 1, "blocking")
    assert [(f.name, f.partition_count, f.mode) for f in list_feeds(pool)] == [
        ("audit", 1, "blocking"),
        ("orders", 4, "outbox"),
    ]
    assert SqlServerFeed.open("orders", pool).partition_count == 4
    with pytest.raises(UnknownFeed):
        SqlServerFeed.open("nope", pool)


@pytest.mark.parametrize("mode", ["outbox", "blocking"])
def test_pages_follow_the_cursor_and_keep_the_stored_json(migrated_dsn, pool, mode):
    create_feed(migrated_dsn, "orders", 2, mode)
    feed = SqlServerFeed.open("orders", pool)
    assert feed.fetch(1, LAST, 10).cursor == FIRST  # an empty partition's head
    empty = feed.fetch(1, FIRST, 10)
    assert (list(empty.events), empty.cursor) == ([], FIRST)

    documents = [f'{{"n": {i},  "text": "caf\u00e9"}}' for i in range(5)]
    for i, document in enumerate(documents):
        publish(
            migrated_dsn,
            "orders",
            1,
            document,
            event_type="Order.Created",
            headers=orjson.dumps({"trace": f"t{i}"}).decode(),
        )
    publish(migrated_dsn, "orders", 0, "[0]")

    first = feed.fetch(1, FIRST, 3)
    assert [e.data for e in first.events] == documents[:3]  # the stored text, as stored
    assert [orjson.loads(e.headers or "null") for e in first.events] == [
        {"trace": "t0"},
        {"trace": "t1"},
        {"trace": "t2"},
    ]
    assert {e.event_type for e in first.events} == {"Order.Created"}
    second = feed.fetch(1, first.cursor, 3)
    assert [e.data for e in second.events] == documents[3:]
    assert second.cursor > first.cursor
    end = feed.fetch(1, second.cursor, 3)
    assert (list(end.events), end.cursor) == ([], second.cursor)
    assert feed.fetch(1, LAST, 3).cursor == second.cursor
    again = feed.fetch(1, FIRST, 10)
    assert [e.data for e in again.events] == documents
    assert again.cursor == second.cursor
    assert [e.data for e in feed.fetch(0, FIRST, 10).events] == ["[0]"]


def test_type_filters_run_in_the_database_and_the_cursor_moves_past_the_rest(migrated_dsn, pool):
    create_feed(migrated_dsn, "orders", 1, "outbox")
    feed = SqlServerFeed.open("orders", pool)
    for i, event_type in enumerate(["A.Created", "b.deleted", "a.created", "c", "B.Deleted"]):
        publish(migrated_dsn, "orders", 0, f'{{"i": {i}}}', event_type=event_type)
    everything = feed.fetch(0, FIRST, 10)
    only_a = feed.fetch(0, FIRST, 10, TypeFilter(frozenset({"a.created"})))
    assert [e.data for e in only_a.events] == ['{"i": 0}', '{"i": 2}']
    assert only_a.cursor == everything.cursor
    not_b = feed.fetch(0, FIRST, 10, TypeFilter(frozenset({"b.deleted"}), exclude=True))
    assert [e.data for e in not_b.events] == ['{"i": 0}', '{"i": 2}', '{"i": 3}']
    window = feed.fetch(0, FIRST, 2, TypeFilter(frozenset({"c"})))
    assert list(window.events) == []  # nothing matched in the first two, but they were scanned
    assert window.cursor == feed.fetch(0, FIRST, 2).cursor


def test_the_replica_serves_reads_behind_the_head_and_the_primary_drains(migrated_dsn):
    create_feed(migrated_dsn, "orders", 1, "outbox")
    primary, replica = CountingPool(migrated_dsn), CountingPool(migrated_dsn)
    feed = SqlServerFeed("orders", 1, primary, replica=replica)
    publish(migrated_dsn, "orders", 0, '{"i": 1}')

    # The event is still in the outbox: the replica (drain = 0) finds nothing, the primary drains.
    page = feed.fetch(0, FIRST, 10)
    assert [e.data for e in page.events] == ['{"i": 1}']
    assert (replica.runs, primary.runs) == (1, 1)

    # Now it is in the log: the replica serves it alone.
    again = feed.fetch(0, FIRST, 10)
    assert [e.data for e in again.events] == ['{"i": 1}']
    assert (replica.runs, primary.runs) == (2, 1)

    # At the head both are asked, and the answer is the cursor as given.
    end = feed.fetch(0, page.cursor, 10)
    assert (list(end.events), end.cursor) == ([], page.cursor)
    assert (replica.runs, primary.runs) == (3, 2)


def test_a_reader_login_drains_the_outbox(migrated_dsn, create_login):
    create_feed(migrated_dsn, "orders", 2, "outbox")
    reader_dsn = create_login("changefeed_reader")
    pool = ConnectionPool(lambda: db.connect(reader_dsn, timeout=10), size=1)
    try:
        feed = SqlServerFeed.open("orders", pool)
        publish(migrated_dsn, "orders", 1, '{"i": 1}')
        assert [e.data for e in feed.fetch(1, FIRST, 10).events] == ['{"i": 1}']
        assert feed.fetch(1, LAST, 10).cursor != FIRST
    finally:
        pool.close()


def test_a_feed_dropped_from_under_the_source_is_a_source_error(migrated_dsn, pool):
    feed = SqlServerFeed("ghost", 1, pool)  # never registered
    with pytest.raises(SourceError, match="51001"):
        feed.fetch(0, FIRST, 10)
