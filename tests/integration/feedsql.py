"""Calling the changefeed procedures from tests, the way a T-SQL or pyodbc user would.

Every helper takes an open pyodbc connection; none hides an error. Errors carry the
SQL Server error number that ``error_of`` extracts.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pyodbc
import pytest

from zeh_mssql import db

FIRST = bytes(16)
"""The ``_first`` cursor: 16 zero bytes, below every ULID."""
DEADLINE_S = 300.0
"""Upper bound for any loop that waits on the database in these tests."""


@dataclass(frozen=True)
class Row:
    """One event as ``read_feed`` returns it."""

    ulid: bytes
    event_type: str | None
    headers: str | None
    data: str
    time: datetime

    @property
    def ulid_ms(self) -> int:
        """The ULID's 48-bit time component (Unix milliseconds)."""
        return int.from_bytes(self.ulid[:6], "big")

    @property
    def json(self) -> Any:
        return json.loads(self.data)


def connect(dsn: str, *, autocommit: bool = True) -> pyodbc.Connection:
    return pyodbc.connect(dsn, autocommit=autocommit, timeout=10)


def error_of(call: Callable[[], object]) -> int:
    """Run ``call``, which must fail with a SQL Server error; return its number."""
    with pytest.raises(pyodbc.Error) as caught:
        call()
    number = db.error_number(caught.value)
    assert number is not None, caught.value
    return number


def create_feed(conn: pyodbc.Connection, name: str, partitions: int, mode: str = "outbox") -> None:
    conn.execute(
        "exec changefeed.create_feed @name = ?, @partition_count = ?, @mode = ?",
        name,
        partitions,
        mode,
    )


def list_feeds(conn: pyodbc.Connection) -> list[tuple[str, int, str]]:
    rows = conn.execute("exec changefeed.list_feeds").fetchall()
    return [(r.name, r.partition_count, r.mode) for r in rows]


def time_hint(moment: datetime) -> str:
    """A ``datetime2(3)`` literal: drivers differ in how they bind datetimes, text does not."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}"


def publish(
    conn: pyodbc.Connection,
    feed: str,
    data: Any,
    *,
    partition: int | None = None,
    partition_key: str | None = None,
    event_type: str | None = None,
    headers: str | None = None,
    hint: datetime | None = None,
) -> None:
    """``changefeed.publish``; ``data`` other than a str or None is JSON-encoded first."""
    conn.execute(
        "exec changefeed.publish @feed = ?, @data = ?, @partition = ?, @partition_key = ?,"
        " @event_type = ?, @headers = ?, @time_hint = ?",
        feed,
        data if data is None or isinstance(data, str) else json.dumps(data, ensure_ascii=False),
        partition,
        partition_key,
        event_type,
        headers,
        None if hint is None else time_hint(hint),
    )


def publish_batch(conn: pyodbc.Connection, feed: str, events: Sequence[dict[str, Any]]) -> None:
    """``changefeed.publish_batch`` the way a T-SQL writer calls it: a declared table variable.

    Each event is a dict with ``ordinal`` and any of ``partition``, ``partition_key``,
    ``event_type``, ``headers``, ``data`` (text) and ``time_hint`` (text). The rows
    travel as one JSON parameter, so batches of any size stay one round trip.
    """
    conn.execute(
        "declare @events changefeed.event_batch;"
        " insert into @events (ordinal, [partition], partition_key, event_type, headers,"
        " data, time_hint)"
        " select ordinal, [partition], partition_key, event_type, headers, data, time_hint"
        " from openjson(?) with ("
        " ordinal int '$.ordinal', [partition] int '$.partition',"
        " partition_key nvarchar(max) '$.partition_key', event_type nvarchar(128) '$.event_type',"
        " headers nvarchar(max) '$.headers', data nvarchar(max) '$.data',"
        " time_hint datetime2(3) '$.time_hint');"
        " exec changefeed.publish_batch @feed = ?, @events = @events;",
        json.dumps(list(events)),
        feed,
    )


def result_sets(cursor: pyodbc.Cursor) -> list[list[Any]]:
    """Every result set of the statement just executed (row counts skipped)."""
    sets: list[list[Any]] = []
    while True:
        if cursor.description is not None:
            sets.append(cursor.fetchall())
        if not cursor.nextset():
            return sets


def read_feed(
    conn: pyodbc.Connection,
    feed: str,
    partition: int,
    cursor: bytes = FIRST,
    *,
    pagesize: int = 1000,
    event_types: Sequence[str] | None = None,
    exclude: bool = False,
    drain: bool = True,
) -> tuple[list[Row], bytes]:
    """One page: its rows and the next cursor. Checks the two result sets' shape."""
    statement = conn.cursor()
    statement.execute(
        "exec changefeed.read_feed @feed = ?, @partition = ?, @cursor = ?, @pagesize = ?,"
        " @event_types = ?, @exclude_event_types = ?, @drain = ?",
        feed,
        partition,
        cursor,
        pagesize,
        None if event_types is None else json.dumps(list(event_types)),
        exclude,
        drain,
    )
    sets = result_sets(statement)
    assert len(sets) == 2, f"read_feed returned {len(sets)} result sets"
    rows = [Row(bytes(r[0]), r[1], r[2], r[3], r[4]) for r in sets[0]]
    assert len(sets[1]) == 1
    next_cursor = bytes(sets[1][0][0])
    assert len(next_cursor) == 16
    return rows, next_cursor


def read_all(
    conn: pyodbc.Connection,
    feed: str,
    partition: int,
    cursor: bytes = FIRST,
    *,
    pagesize: int = 1000,
    **filters: Any,
) -> tuple[list[Row], bytes]:
    """Read pages until one neither returns rows nor moves the cursor."""
    rows: list[Row] = []
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        page, next_cursor = read_feed(conn, feed, partition, cursor, pagesize=pagesize, **filters)
        rows += page
        if not page and next_cursor == cursor:
            return rows, cursor
        cursor = next_cursor
    raise AssertionError(f"partition {partition} of {feed} did not end in {DEADLINE_S} s")


def head(conn: pyodbc.Connection, feed: str, partition: int) -> bytes | None:
    statement = conn.cursor()
    statement.execute("exec changefeed.head @feed = ?, @partition = ?", feed, partition)
    sets = result_sets(statement)
    assert len(sets) == 1, f"head returned {len(sets)} result sets"
    assert len(sets[0]) == 1
    value = sets[0][0][0]
    return None if value is None else bytes(value)


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """Poll ``condition`` (bounded) until it holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what} after {timeout} s")
        time.sleep(0.05)


def session_id(conn: pyodbc.Connection) -> int:
    return int(conn.execute("select @@spid").fetchone()[0])


def is_blocked_by(observer: pyodbc.Connection, waiter: int, holder: int) -> bool:
    """True while session ``waiter`` waits on a lock that session ``holder`` holds."""
    row = observer.execute(
        "select blocking_session_id from sys.dm_exec_requests where session_id = ?", waiter
    ).fetchone()
    return row is not None and row[0] == holder
