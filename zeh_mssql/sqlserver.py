"""``SqlServerFeed``: an ``EventSource`` reading one feed through the changefeed procedures.

One page of one partition is one round trip: ``changefeed.read_feed`` returns
the events and, in a second result set, the cursor to continue from. ``_last``
resolves through ``changefeed.head``. Stored JSON is handed on as text.

With a read replica, reads go there first with ``@drain = 0`` (a replica cannot
write); a read that finds nothing is at the head, where only the primary can
move the outbox into the log, so it is repeated on the primary.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from zeh_mssql.pool import Connection, ConnectionPool
from zeh_mssql.protocol import cursor_bytes, cursor_text
from zeh_mssql.source import FIRST, LAST, Event, Page, SourceError, TypeFilter

_log = logging.getLogger(__name__)

_READ_FEED = (
    "EXEC changefeed.read_feed @feed = ?, @partition = ?, @cursor = ?, @pagesize = ?, "
    "@event_types = ?, @exclude_event_types = ?, @drain = ?"
)
_HEAD = "EXEC changefeed.head @feed = ?, @partition = ?"
_LIST_FEEDS = "EXEC changefeed.list_feeds"


@dataclass(frozen=True, slots=True)
class FeedInfo:
    """One row of the feed registry."""

    name: str
    partition_count: int
    mode: str


class UnknownFeed(LookupError):
    """The feed is not in the registry."""


def list_feeds(pool: ConnectionPool) -> list[FeedInfo]:
    """Every feed in the registry (``changefeed.list_feeds``), by name."""
    rows = pool.run(lambda connection: _rows(connection, _LIST_FEEDS, ()))
    feeds = [FeedInfo(str(r.name), int(r.partition_count), str(r.mode)) for r in rows]
    return sorted(feeds, key=lambda feed: feed.name)


def ping(pool: ConnectionPool) -> None:
    """Raise ``SourceUnavailable``/``SourceError`` unless the database answers ``select 1``."""
    pool.run(lambda connection: _result_sets(connection, "SELECT 1", ()))


class SqlServerFeed:
    """An ``EventSource`` over one feed of the changefeed schema."""

    def __init__(
        self,
        name: str,
        partition_count: int,
        primary: ConnectionPool,
        *,
        replica: ConnectionPool | None = None,
    ) -> None:
        if partition_count < 1:
            raise ValueError(f"partition_count must be at least 1, got {partition_count}")
        self.name = name
        self._partition_count = partition_count
        self._primary = primary
        self._replica = replica

    @classmethod
    def open(
        cls, name: str, primary: ConnectionPool, *, replica: ConnectionPool | None = None
    ) -> SqlServerFeed:
        """The feed ``name`` with its partition count from the registry; ``UnknownFeed`` if none."""
        for feed in list_feeds(primary):
            if feed.name == name:
                return cls(name, feed.partition_count, primary, replica=replica)
        raise UnknownFeed(name)

    @property
    def partition_count(self) -> int:
        return self._partition_count

    def fetch(
        self,
        partition: int,
        cursor: str,
        limit: int,
        type_filter: TypeFilter | None = None,
    ) -> Page:
        """One page of ``partition`` after ``cursor`` (see ``EventSource.fetch``)."""
        if not 0 <= partition < self._partition_count:
            raise ValueError(f"partition {partition} out of range 0..{self._partition_count - 1}")
        if cursor == LAST:
            return self._head(partition)
        if limit < 1:
            return Page(events=(), cursor=cursor)
        read = _PageRead(self.name, partition, cursor, limit, type_filter)
        if self._replica is not None:
            try:
                page = self._replica.run(lambda connection: read(connection, drain=False))
            except SourceError:
                _log.warning(
                    "feed %s: replica read failed, reading the primary", self.name, exc_info=True
                )
            else:
                if page.events or page.cursor != cursor:
                    return page
        return self._primary.run(lambda connection: read(connection, drain=True))

    def _head(self, partition: int) -> Page:
        # head drains the outbox first, so it always runs on the primary.
        def work(connection: Connection) -> bytes | None:
            rows = _rows(connection, _HEAD, (self.name, partition))
            return _binary(rows[0].ulid) if rows else None

        head = self._primary.run(work)
        return Page(events=(), cursor=FIRST if head is None else cursor_text(head))


@dataclass(frozen=True, slots=True)
class _PageRead:
    """One ``read_feed`` call, repeatable (the pool retries it on a fresh connection)."""

    feed: str
    partition: int
    cursor: str
    limit: int
    type_filter: TypeFilter | None

    def __call__(self, connection: Connection, *, drain: bool) -> Page:
        position = cursor_bytes(self.cursor)
        types: str | None = None
        exclude = False
        if self.type_filter is not None:
            types = orjson.dumps(sorted(self.type_filter.types)).decode()
            exclude = self.type_filter.exclude
        params = (self.feed, self.partition, position, self.limit, types, exclude, drain)
        result_sets = _result_sets(connection, _READ_FEED, params)
        if len(result_sets) < 2 or len(result_sets[1]) != 1:
            raise SourceError(
                f"changefeed.read_feed returned {len(result_sets)} result sets, "
                "expected the events and one next_cursor row"
            )
        rows, (cursor_row,) = result_sets[0], result_sets[1]
        events = [
            Event(data=row.data, headers=row.headers, event_type=row.event_type) for row in rows
        ]
        next_position = _binary(cursor_row.next_cursor) or position
        if not events and next_position == position:
            # Nothing scanned: hand back the cursor as given, so _first stays _first.
            return Page(events=(), cursor=self.cursor)
        return Page(events=events, cursor=cursor_text(next_position))


def _result_sets(connection: Connection, sql: str, params: Sequence[Any]) -> list[list[Any]]:
    """Execute ``sql`` and fetch every result set that has columns.

    Row counts of DML inside a procedure arrive as column-less results when it
    does not ``SET NOCOUNT ON``; they are skipped. Reading to the end also
    surfaces an error raised after the last result set.
    """
    cursor = connection.cursor()
    try:
        cursor.execute(sql, *params)
        sets: list[list[Any]] = []
        while True:
            if cursor.description is not None:
                sets.append(cursor.fetchall())
            if not cursor.nextset():
                return sets
    finally:
        cursor.close()


def _rows(connection: Connection, sql: str, params: Sequence[Any]) -> list[Any]:
    """The rows of the first result set of ``sql``."""
    result_sets = _result_sets(connection, sql, params)
    if not result_sets:
        raise SourceError(f"{sql.split('@')[0].strip()} returned no result set")
    return result_sets[0]


def _binary(value: Any) -> bytes | None:
    """A ``binary(16)`` column value as bytes (``None`` stays ``None``)."""
    if value is None:
        return None
    data = bytes(value)
    if len(data) != 16:
        raise SourceError(f"expected a 16-byte position from the database, got {len(data)} bytes")
    return data
