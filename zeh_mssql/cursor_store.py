"""Consumer cursors kept in the consumer's own SQL Server database, over pyodbc.

One row per (consumer, feed, partition). Cursors are saved on the caller's
connection inside the caller's transaction, next to the effects of the events
they cover, which is what makes consumption exactly-once.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pyodbc

from zeh_mssql.consumer import CursorConflict
from zeh_mssql.db import error_number

__all__ = ["DEFAULT_TABLE", "SqlServerCursorStore", "Statements", "quote_table_name", "statements"]

DEFAULT_TABLE = "dbo.zeh_consumer_cursor"
MAX_CONSUMER_LENGTH = 128
MAX_FEED_LENGTH = 300
MAX_CURSOR_LENGTH = 1000

# Plain identifiers only: the table name has to be spliced into the statements
# (T-SQL takes no parameter for an object name), so nothing that needs quoting
# is let through, and the parts are bracketed anyway.
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_DUPLICATE_KEY = (2627, 2601)  # primary key / unique index violation
_OBJECT_EXISTS = 2714

_log = logging.getLogger(__name__)


def quote_table_name(table: str) -> str:
    """``table`` or ``schema.table`` as a bracketed T-SQL name; ValueError if not plain."""
    parts = table.split(".")
    if len(parts) > 2 or not all(_IDENTIFIER.fullmatch(p) for p in parts):
        raise ValueError(
            f"bad table name {table!r}: use table or schema.table, each part letters, "
            "digits and underscores, not starting with a digit"
        )
    return ".".join(f"[{p}]" for p in parts)


@dataclass(frozen=True, slots=True)
class Statements:
    """The T-SQL a store runs on its table; ``?`` marks a parameter."""

    create: str
    load: str
    update: str
    update_from: str
    insert: str


def statements(table: str) -> Statements:
    """The statements for ``table``, which must pass :func:`quote_table_name`."""
    name = quote_table_name(table)
    # Update-then-insert. updlock, serializable holds the key (or, while the row
    # is absent, the key range) until commit, so two sessions saving the same
    # partition queue up instead of both inserting.
    update = f"""
update {name} with (updlock, serializable)
set cursor_value = ?, updated_at = sysutcdatetime()
where consumer = ? and feed = ? and partition_id = ?
"""
    return Statements(
        create=f"""
if object_id(N'{name}', N'U') is null
    create table {name} (
        consumer nvarchar({MAX_CONSUMER_LENGTH}) not null,
        feed nvarchar({MAX_FEED_LENGTH}) not null,
        partition_id int not null,
        cursor_value nvarchar({MAX_CURSOR_LENGTH}) not null,
        updated_at datetime2(3) not null default sysutcdatetime(),
        primary key clustered (consumer, feed, partition_id)
    );
""",
        load=f"select partition_id, cursor_value from {name} where consumer = ? and feed = ?",
        update=update,
        # The compare-and-set variant: the row moves only from the cursor the
        # page was read from, so a second instance of the consumer fails
        # instead of applying the page again.
        update_from=update + "and cursor_value = ?\n",
        insert=(
            f"insert into {name} (consumer, feed, partition_id, cursor_value) values (?, ?, ?, ?)"
        ),
    )


class SqlServerCursorStore:
    """The cursors of one consumer of one feed, in a table of the consumer's database.

    ``consumer`` names the consuming application (up to 128 characters) and
    ``feed`` the feed it reads, e.g. its URL (up to 300). ``connection`` is
    the pyodbc connection :meth:`load`, :meth:`ensure_table` and
    :meth:`transaction` use; :meth:`save` writes on whichever connection it is
    given. Implements ``zeh_mssql.consumer.CursorStore``.
    """

    def __init__(
        self,
        connection: pyodbc.Connection,
        *,
        consumer: str,
        feed: str,
        table: str = DEFAULT_TABLE,
    ) -> None:
        if not 0 < len(consumer) <= MAX_CONSUMER_LENGTH:
            raise ValueError(f"consumer must be 1 to {MAX_CONSUMER_LENGTH} characters")
        if not 0 < len(feed) <= MAX_FEED_LENGTH:
            raise ValueError(f"feed must be 1 to {MAX_FEED_LENGTH} characters")
        self.connection = connection
        self.consumer = consumer
        self.feed = feed
        self.table = table
        self._sql = statements(table)

    def ensure_table(self) -> None:
        """Create the table unless it exists; commits when the connection is not autocommit."""
        cursor = self.connection.cursor()
        try:
            cursor.execute(self._sql.create)
        except pyodbc.Error as exc:
            # Another consumer may have created it between the check and the create.
            if error_number(exc) != _OBJECT_EXISTS:
                raise
            _log.debug("cursor table %s was created concurrently", self.table)
        finally:
            cursor.close()
        if not self.connection.autocommit:
            self.connection.commit()

    def load(self) -> dict[int, str]:
        """The saved cursors by partition; partitions never saved are absent."""
        cursor = self.connection.cursor()
        try:
            rows = cursor.execute(self._sql.load, self.consumer, self.feed).fetchall()
        finally:
            cursor.close()
        return {int(partition): str(value) for partition, value in rows}

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        """A transaction on :attr:`connection`, yielded for the handler to write on.

        Commits when the block ends normally and rolls back on any exception;
        the connection's autocommit setting is restored afterwards.
        """
        connection = self.connection
        autocommit = connection.autocommit
        connection.autocommit = False
        try:
            yield connection
        except BaseException:
            try:
                connection.rollback()
            except pyodbc.Error:
                # The original error matters; a dead connection has rolled back anyway.
                _log.warning("rollback failed", exc_info=True)
            raise
        else:
            connection.commit()
        finally:
            if autocommit:
                try:
                    connection.autocommit = True
                except pyodbc.Error:
                    _log.warning("could not restore autocommit", exc_info=True)

    def save(
        self,
        transaction: Any,
        cursors: Mapping[int, str],
        previous: Mapping[int, str] | None = None,
    ) -> None:
        """Save ``cursors`` in the caller's open transaction on the connection ``transaction``.

        The connection must have autocommit off; the caller commits. With
        ``previous`` (the saved cursors the page was read from; partitions never
        saved absent) a partition saved meanwhile by someone else raises
        :class:`~zeh_mssql.consumer.CursorConflict`, after which the caller must
        roll back. Without it the cursors are written unconditionally.
        """
        for partition, value in cursors.items():
            if not 0 < len(value) <= MAX_CURSOR_LENGTH:
                raise ValueError(f"cursor of partition {partition} is empty or too long")
        cursor = transaction.cursor()
        try:
            for partition, value in sorted(cursors.items()):
                key = (self.consumer, self.feed, partition)
                if previous is None:
                    cursor.execute(self._sql.update, value, *key)
                    if cursor.rowcount == 0:
                        cursor.execute(self._sql.insert, *key, value)
                elif partition in previous:
                    cursor.execute(self._sql.update_from, value, *key, previous[partition])
                    if cursor.rowcount != 1:
                        raise CursorConflict(
                            f"{self.consumer} on {self.feed}, partition {partition}: the saved "
                            f"cursor is no longer {previous[partition]!r}; another instance "
                            "moved it"
                        )
                else:
                    self._insert_new(cursor, key, value)
        finally:
            cursor.close()

    def _insert_new(self, cursor: Any, key: tuple[str, str, int], value: str) -> None:
        try:
            cursor.execute(self._sql.insert, *key, value)
        except pyodbc.IntegrityError as exc:
            if error_number(exc) not in _DUPLICATE_KEY:
                raise
            raise CursorConflict(
                f"{key[0]} on {key[1]}, partition {key[2]}: a cursor was saved meanwhile; "
                "another instance is consuming"
            ) from exc
