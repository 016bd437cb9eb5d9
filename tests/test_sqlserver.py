"""SqlServerFeed without a database: what it answers without asking, and an unreachable one.

Its reads against SQL Server are in tests/integration/test_server.py.
"""

from __future__ import annotations

import pytest

from tests.unreachable import down_dsn
from zeh_mssql import db
from zeh_mssql.pool import ConnectionPool
from zeh_mssql.source import FIRST, LAST, EventSource, SourceUnavailable
from zeh_mssql.sqlserver import SqlServerFeed, list_feeds, ping


def refusing_factory():
    raise AssertionError("this call must not reach the database")


def unreachable(name: str) -> ConnectionPool:
    dsn = down_dsn()
    return ConnectionPool(lambda: db.connect(dsn, timeout=1), size=1, name=name)


def test_it_is_an_event_source_with_the_registered_partition_count():
    feed = SqlServerFeed("orders", 4, ConnectionPool(refusing_factory))
    assert isinstance(feed, EventSource)
    assert feed.partition_count == 4
    assert feed.name == "orders"


def test_a_zero_limit_page_is_the_input_cursor_without_a_round_trip():
    feed = SqlServerFeed("orders", 2, ConnectionPool(refusing_factory))
    assert feed.fetch(1, FIRST, 0).cursor == FIRST
    assert list(feed.fetch(1, FIRST, 0).events) == []


def test_partitions_out_of_range_are_refused_before_the_database():
    feed = SqlServerFeed("orders", 2, ConnectionPool(refusing_factory))
    with pytest.raises(ValueError, match="out of range"):
        feed.fetch(2, FIRST, 10)
    with pytest.raises(ValueError, match="at least 1"):
        SqlServerFeed("orders", 0, ConnectionPool(refusing_factory))


@pytest.mark.parametrize("cursor", [FIRST, LAST, "01J0000000000000000000000Z"])
def test_an_unreachable_database_is_unavailable(cursor):
    feed = SqlServerFeed("orders", 1, unreachable("primary database"))
    with pytest.raises(SourceUnavailable, match=r"^primary database unavailable"):
        feed.fetch(0, cursor, 10)


def test_an_unreachable_replica_falls_back_to_the_primary():
    feed = SqlServerFeed(
        "orders", 1, unreachable("primary database"), replica=unreachable("replica database")
    )
    # Both are down here; the error that surfaces is the primary's, so the read went on there.
    with pytest.raises(SourceUnavailable, match=r"^primary database unavailable"):
        feed.fetch(0, FIRST, 10)


def test_registry_and_ping_report_an_unreachable_database():
    pool = unreachable("primary database")
    with pytest.raises(SourceUnavailable):
        list_feeds(pool)
    with pytest.raises(SourceUnavailable):
        ping(pool)
    with pytest.raises(SourceUnavailable):
        SqlServerFeed.open("orders", pool)
