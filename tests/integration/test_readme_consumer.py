"""The README's consumer examples, run as written, against SQL Server and our server."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pyodbc
import pytest
from flask import Request
from werkzeug.exceptions import Unauthorized

from tests.http_server import serving
from tests.integration.conftest import Database
from tests.readme_examples import load_consumer_examples
from zeh_mssql.testing import MemorySource

TOKEN = "their-token"


@pytest.fixture
def example() -> dict[str, Any]:
    return load_consumer_examples()


@pytest.fixture
def their_feed() -> Iterator[tuple[MemorySource, str]]:
    def require_token(request: Request) -> None:
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            raise Unauthorized()

    source = MemorySource(1)
    with serving(source, "/orders/feed/v1", authorize=require_token) as url:
        yield source, url


@pytest.fixture
def my_db(database: Database) -> Iterator[pyodbc.Connection]:
    conn = pyodbc.connect(database.dsn, autocommit=True, timeout=10)
    conn.execute("create schema myschema")
    # A unique order id: an event applied twice would fail the example's commit.
    conn.execute(
        "create table myschema.order_status ("
        " order_id nvarchar(50) not null primary key, status nvarchar(50) not null)"
    )
    yield conn
    conn.close()


def rows(conn: pyodbc.Connection) -> list[tuple[str, str]]:
    result = conn.execute("select order_id, status from myschema.order_status order by order_id")
    return [tuple(row) for row in result.fetchall()]


def publish(source: MemorySource, first: int, count: int) -> None:
    for n in range(first, first + count):
        source.append(0, {"order_id": f"o{n:03}", "status": "paid", "amount": n})


def until(condition: Callable[[], bool], *, then: Callable[[], None]) -> Callable[[], bool]:
    """A still-want-to-read callback: runs ``then`` on its second call, stops at ``condition``."""
    calls = 0

    def still_want_to_read() -> bool:
        nonlocal calls
        calls += 1
        if calls == 2:
            then()
        assert calls < 50, "the example never got its events"
        return not condition()

    return still_want_to_read


def test_the_step_by_step_example_processes_each_event_once_across_restarts(
    example: dict[str, Any],
    their_feed: tuple[MemorySource, str],
    my_db: pyodbc.Connection,
    database: Database,
) -> None:
    source, url = their_feed
    publish(source, 0, 3)  # before the first run: skipped, it starts at _last

    # First run: _last resolves (and is saved), then 5 new events arrive.
    example["my_ingest"](
        url,
        TOKEN,
        database.dsn,
        until(lambda: len(rows(my_db)) == 5, then=lambda: publish(source, 3, 5)),
    )
    assert [order for order, _ in rows(my_db)] == [f"o{n:03}" for n in range(3, 8)]

    # A restart continues from the saved cursor: only the 2 newer events.
    example["my_ingest"](
        url,
        TOKEN,
        database.dsn,
        until(lambda: len(rows(my_db)) == 7, then=lambda: publish(source, 8, 2)),
    )
    assert [order for order, _ in rows(my_db)] == [f"o{n:03}" for n in range(3, 10)]


def test_the_consume_example_runs_until_stopped(
    example: dict[str, Any],
    their_feed: tuple[MemorySource, str],
    my_db: pyodbc.Connection,
    database: Database,
) -> None:
    source, url = their_feed
    stop = threading.Event()
    failures: list[BaseException] = []

    def run() -> None:
        try:
            example["my_ingest_with_consume"](url, TOKEN, database.dsn, stop)
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    # start="_last": wait until the consumer has saved its starting point, then publish.
    with contextlib.closing(pyodbc.connect(database.dsn, autocommit=True, timeout=10)) as conn:
        for _ in range(600):
            if conn.execute("select object_id(N'dbo.zeh_consumer_cursor', N'U')").fetchone()[0]:
                saved = conn.execute("select count(*) from dbo.zeh_consumer_cursor").fetchone()[0]
                if saved:
                    break
            stop.wait(0.1)
        publish(source, 0, 4)
        for _ in range(600):
            if len(rows(conn)) == 4:
                break
            stop.wait(0.1)
    stop.set()
    thread.join(timeout=60)
    assert not failures
    assert [order for order, _ in rows(my_db)] == ["o000", "o001", "o002", "o003"]
