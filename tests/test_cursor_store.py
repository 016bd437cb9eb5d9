"""What SqlServerCursorStore checks before any SQL runs (the SQL itself: tests/integration)."""

from __future__ import annotations

import dataclasses

import pytest
import sqlfluff

from zeh_mssql.cursor_store import SqlServerCursorStore, quote_table_name, statements


@pytest.mark.parametrize(
    ("table", "quoted"),
    [
        ("zeh_cursor", "[zeh_cursor]"),
        ("dbo.zeh_cursor", "[dbo].[zeh_cursor]"),
        ("_x9", "[_x9]"),
        ("a" * 128, f"[{'a' * 128}]"),
    ],
)
def test_plain_table_names_are_bracketed(table: str, quoted: str) -> None:
    assert quote_table_name(table) == quoted


@pytest.mark.parametrize(
    "table",
    [
        "",
        "db.dbo.t",
        "9table",
        "t]; drop table x; --",
        "[dbo].[t]",
        "dbo.",
        "t-1",
        "t 1",
        "t'",
        "a" * 129,
        "tä",
    ],
)
def test_anything_else_is_refused(table: str) -> None:
    with pytest.raises(ValueError, match="bad table name"):
        quote_table_name(table)


def test_the_store_refuses_a_bad_table_before_touching_the_connection() -> None:
    with pytest.raises(ValueError, match="bad table name"):
        SqlServerCursorStore(None, consumer="c", feed="f", table="x;y")


@pytest.mark.parametrize(
    ("consumer", "feed", "message"),
    [
        ("", "f", "consumer"),
        ("c" * 129, "f", "consumer"),
        ("c", "", "feed"),
        ("c", "f" * 301, "feed"),
    ],
)
def test_consumer_and_feed_lengths_fit_the_key(consumer: str, feed: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SqlServerCursorStore(None, consumer=consumer, feed=feed)


@pytest.mark.parametrize("table", ["zeh_cursor", "consumers.cursors"])
def test_every_statement_parses_as_tsql(table: str) -> None:
    sql = statements(table)
    for field in dataclasses.fields(sql):
        text = getattr(sql, field.name)
        # sqlfluff knows T-SQL's @variables, not ODBC's ? markers.
        sqlfluff.parse(text.replace("?", "@p"), dialect="tsql")  # raises if unparsable
        assert quote_table_name(table) in text
