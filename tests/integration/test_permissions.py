"""The two roles: readers read and drain through the procedures, writers only publish.

Neither role has any grant on the tables; what they can do goes through the
procedures' ownership chain.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator

import pyodbc
import pytest

from tests.integration.feedsql import (
    connect,
    create_feed,
    error_of,
    head,
    list_feeds,
    publish,
    publish_batch,
    read_all,
)

PERMISSION_DENIED = 229


@pytest.fixture
def admin(migrated_dsn) -> Iterator[pyodbc.Connection]:
    conn = connect(migrated_dsn)
    create_feed(conn, "orders", 2, "outbox")
    create_feed(conn, "payments", 1, "blocking")
    yield conn
    conn.close()


@pytest.fixture
def reader(admin, create_login) -> Iterator[pyodbc.Connection]:
    with contextlib.closing(connect(create_login("changefeed_reader"))) as conn:
        yield conn


@pytest.fixture
def writer(admin, create_login) -> Iterator[pyodbc.Connection]:
    with contextlib.closing(connect(create_login("changefeed_writer"))) as conn:
        yield conn


def outbox_rows(admin: pyodbc.Connection) -> int:
    return int(admin.execute("select count(*) from changefeed.outbox").fetchone()[0])


def test_a_reader_reads_and_drains_the_outbox(admin, reader):
    for i in range(3):
        publish(admin, "orders", {"i": i}, partition=1)
    assert outbox_rows(admin) == 3
    rows, _ = read_all(reader, "orders", 1)
    assert [row.json["i"] for row in rows] == [0, 1, 2]
    assert outbox_rows(admin) == 0  # the reader moved them into the log


def test_a_reader_finds_the_head_and_lists_feeds(admin, reader):
    publish(admin, "orders", {"i": 0}, partition=0)
    last = head(reader, "orders", 0)
    assert last is not None
    assert outbox_rows(admin) == 0
    assert read_all(admin, "orders", 0)[0][-1].ulid == last
    assert list_feeds(reader) == [("orders", 2, "outbox"), ("payments", 1, "blocking")]


@pytest.mark.parametrize(
    "statement",
    [
        "select count(*) from changefeed.event",
        "select count(*) from changefeed.outbox",
        "delete from changefeed.outbox",
        "update changefeed.shard_state set next_ulid_low = 0",
        "insert into changefeed.feed (name, partition_count, mode) values ('x', 1, 'outbox')",
    ],
)
def test_a_reader_cannot_touch_the_tables(reader, statement):
    assert error_of(lambda: reader.execute(statement).fetchall()) == PERMISSION_DENIED


def test_a_reader_cannot_publish_or_create_feeds(reader):
    assert error_of(lambda: publish(reader, "orders", {}, partition=0)) == PERMISSION_DENIED
    assert error_of(lambda: publish_batch(reader, "orders", [])) == PERMISSION_DENIED
    assert error_of(lambda: create_feed(reader, "more", 1)) == PERMISSION_DENIED


def test_a_writer_publishes_in_both_modes(admin, writer):
    writer.execute("begin transaction")
    publish(writer, "orders", {"i": 0}, partition=0)
    publish(writer, "orders", {"i": 1}, partition_key="customer-1")
    publish(writer, "payments", {"i": 2}, partition=0, headers=json.dumps({"h": "v"}))
    writer.execute("commit transaction")
    publish_batch(
        writer,
        "payments",
        [{"ordinal": 1, "partition": 0, "data": json.dumps({"i": 3}), "event_type": "T"}],
    )
    orders = read_all(admin, "orders", 0)[0] + read_all(admin, "orders", 1)[0]
    assert sorted(row.json["i"] for row in orders) == [0, 1]
    payments, _ = read_all(admin, "payments", 0)
    assert [row.json["i"] for row in payments] == [2, 3]


@pytest.mark.parametrize(
    "statement",
    [
        "select count(*) from changefeed.event",
        "select count(*) from changefeed.outbox",
        "select count(*) from changefeed.feed",
        "insert into changefeed.outbox (feed_id, shard_id, order_sequence, time_hint, data)"
        " values (1, 0, 1, sysutcdatetime(), '{}')",
    ],
)
def test_a_writer_cannot_touch_the_tables(writer, statement):
    assert error_of(lambda: writer.execute(statement).fetchall()) == PERMISSION_DENIED


def test_a_writer_cannot_read_the_feed(writer):
    assert error_of(lambda: read_all(writer, "orders", 0)) == PERMISSION_DENIED
    assert error_of(lambda: head(writer, "orders", 0)) == PERMISSION_DENIED
    assert error_of(lambda: list_feeds(writer)) == PERMISSION_DENIED
