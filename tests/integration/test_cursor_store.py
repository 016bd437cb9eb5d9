"""SqlServerCursorStore against SQL Server: cursors commit with the effects, or not at all."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pyodbc
import pytest

from tests.http_server import serving
from tests.integration.conftest import Database
from zeh_mssql.client import Client, FeedEvent
from zeh_mssql.consumer import CursorConflict, consume
from zeh_mssql.cursor_store import SqlServerCursorStore
from zeh_mssql.testing import MemorySource

EFFECTS_DDL = """
create table dbo.effect (
    partition_id int not null,
    n int not null,
    constraint uq_effect unique (partition_id, n)
)
"""


class SimulatedCrash(Exception):
    """The process 'dies' after handling a page, before its commit."""


@pytest.fixture
def source() -> MemorySource:
    return MemorySource(2)


@pytest.fixture
def client(source: MemorySource) -> Iterator[Client]:
    with serving(source, "/feed/v1") as url:
        yield Client(url, 2)


@pytest.fixture
def connect(database: Database) -> Iterator[Any]:
    opened: list[pyodbc.Connection] = []

    def open_connection() -> pyodbc.Connection:
        conn = pyodbc.connect(database.dsn, autocommit=True, timeout=10)
        opened.append(conn)
        return conn

    with contextlib.closing(open_connection()) as conn:
        conn.execute(EFFECTS_DDL)
    yield open_connection
    for conn in opened:
        with contextlib.suppress(pyodbc.Error):
            conn.close()


def store_for(conn: pyodbc.Connection, client: Client, **kwargs: Any) -> SqlServerCursorStore:
    store = SqlServerCursorStore(conn, consumer="billing", feed=client.url, **kwargs)
    store.ensure_table()
    return store


def write_effects(tx: pyodbc.Connection, events: list[FeedEvent[Any]]) -> None:
    cursor = tx.cursor()
    cursor.executemany(
        "insert into dbo.effect (partition_id, n) values (?, ?)",
        [(e.partition, e.data["n"]) for e in events],
    )
    cursor.close()


def effects(conn: pyodbc.Connection) -> dict[int, list[int]]:
    rows = conn.execute("select partition_id, n from dbo.effect order by partition_id, n")
    result: dict[int, list[int]] = {0: [], 1: []}
    for partition, n in rows.fetchall():
        result[partition].append(n)
    return result


def publish(source: MemorySource, count: int) -> dict[int, list[int]]:
    expected: dict[int, list[int]] = {0: [], 1: []}
    for n in range(count):
        partition = n % 2
        source.append(partition, {"n": n})
        expected[partition].append(n)
    return expected


def until_idle() -> dict[str, Any]:
    waits: list[float] = []
    return {"stop": lambda: bool(waits), "sleep": waits.append}


def test_ensure_table_is_idempotent_and_honours_the_table_name(
    connect: Any, client: Client
) -> None:
    conn = connect()
    conn.execute("create schema consumers")
    store = store_for(conn, client, table="consumers.cursors")
    store.ensure_table()
    assert conn.execute("select object_id(N'consumers.cursors', N'U')").fetchone()[0] is not None
    assert store.load() == {}


def test_saved_cursors_load_back_per_consumer_and_feed(connect: Any, client: Client) -> None:
    conn = connect()
    store = store_for(conn, client)
    with store.transaction() as tx:
        store.save(tx, {0: "A0", 1: "A1"})
    with store.transaction() as tx:
        store.save(tx, {1: "B1"})
    assert store.load() == {0: "A0", 1: "B1"}
    # Another consumer of the same feed, and the same consumer of another feed, start empty.
    other_consumer = SqlServerCursorStore(conn, consumer="audit", feed=client.url)
    other_feed = SqlServerCursorStore(conn, consumer="billing", feed=client.url + "2")
    assert other_consumer.load() == {}
    assert other_feed.load() == {}
    assert conn.autocommit  # restored after each transaction


def test_a_rolled_back_transaction_saves_nothing(connect: Any, client: Client) -> None:
    conn = connect()
    store = store_for(conn, client)

    def fail_after_saving() -> None:
        with store.transaction() as tx:
            store.save(tx, {0: "A0"})
            raise RuntimeError("handler failed")

    with pytest.raises(RuntimeError):
        fail_after_saving()
    assert store.load() == {}


def test_a_handler_failure_replays_the_page_and_nothing_is_applied_twice(
    connect: Any, source: MemorySource, client: Client
) -> None:
    expected = publish(source, 40)
    conn = connect()
    store = store_for(conn, client)
    pages = 0

    def fail_on_third_page(tx: pyodbc.Connection, events: list[FeedEvent[Any]]) -> None:
        nonlocal pages
        pages += 1
        write_effects(tx, events)
        if pages == 3:
            raise RuntimeError("failed after writing half of the effects")

    with pytest.raises(RuntimeError):
        consume(client, store, fail_on_third_page, page_size_hint=6, **until_idle())
    done = effects(conn)
    assert sum(map(len, done.values())) == 12  # pages 1 and 2 only

    # The unique constraint on the effects would reject any event applied twice.
    consume(client, store, write_effects, page_size_hint=6, **until_idle())
    assert effects(conn) == expected


class CrashBeforeCommit(SqlServerCursorStore):
    """Handles and saves a page, then the connection dies before the commit."""

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Any]:
        self.connection.autocommit = False
        yield self.connection
        # Closing with the transaction open is what a crash does: it is rolled back.
        self.connection.close()
        raise SimulatedCrash


def test_a_crash_between_handling_and_commit_replays_the_page(
    connect: Any, source: MemorySource, client: Client
) -> None:
    expected = publish(source, 30)
    first = connect()
    store_for(first, client)
    with contextlib.closing(connect()) as conn:
        # One page commits normally, so the crash happens with a saved cursor in place.
        consume(
            client,
            store_for(conn, client),
            write_effects,
            page_size_hint=4,
            stop=lambda: bool(effects(conn)[0]),
        )
    committed = effects(first)
    crashing = CrashBeforeCommit(connect(), consumer="billing", feed=client.url)
    with pytest.raises(SimulatedCrash):
        consume(client, crashing, write_effects, page_size_hint=4, **until_idle())
    assert effects(first) == committed

    restarted = store_for(connect(), client)
    consume(client, restarted, write_effects, page_size_hint=4, **until_idle())
    assert effects(first) == expected
    last = {p: source.fetch(p, "_last", 1).cursor for p in (0, 1)}
    assert restarted.load() == last


def test_a_second_instance_cannot_commit_the_same_page(
    connect: Any, source: MemorySource, client: Client
) -> None:
    publish(source, 8)
    one = store_for(connect(), client)
    two = store_for(connect(), client)
    with one.transaction() as tx:
        one.save(tx, {0: "_first", 1: "_first"}, {})
    # Both instances read the same page; "two" commits first.
    saved = one.load()
    with two.transaction() as tx:
        write_effects(tx, [FeedEvent(0, {}, {"n": 0})])
        two.save(tx, {0: "P0"}, saved)

    def apply_the_same_page() -> None:
        with one.transaction() as tx:
            write_effects(tx, [FeedEvent(0, {}, {"n": 100})])
            one.save(tx, {0: "P0"}, saved)

    with pytest.raises(CursorConflict, match="partition 0"):
        apply_the_same_page()
    assert effects(one.connection) == {0: [0], 1: []}
    assert one.load() == {0: "P0", 1: "_first"}


def test_a_second_instance_cannot_save_a_first_cursor_twice(connect: Any, client: Client) -> None:
    one = store_for(connect(), client)
    two = store_for(connect(), client)
    with two.transaction() as tx:
        two.save(tx, {1: "P1"}, {})
    with pytest.raises(CursorConflict, match="partition 1"), one.transaction() as tx:
        one.save(tx, {1: "Q1"}, {})
    assert one.load() == {1: "P1"}


def test_an_unconditional_save_inserts_then_updates(connect: Any, client: Client) -> None:
    store = store_for(connect(), client)
    for value in ("A", "B"):
        with store.transaction() as tx:
            store.save(tx, {0: value})
        assert store.load() == {0: value}
