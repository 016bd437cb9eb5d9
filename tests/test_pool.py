"""ConnectionPool's policy, driven by a stand-in connection factory.

``CountingFactory`` is a plain callable that hands out ``StandInConnection``
objects (or raises a given pyodbc error); the "work" functions raise the pyodbc
errors a real driver raises. Nothing here imitates SQL Server's behaviour.
"""

from __future__ import annotations

import threading

import pyodbc
import pytest

from zeh_mssql.pool import ConnectionPool
from zeh_mssql.source import SourceError, SourceUnavailable

LINK_FAILURE = pyodbc.OperationalError(
    "08S01", "[08S01] [FreeTDS][SQL Server]Write to the server failed (20006) (SQLExecDirectW)"
)
REFUSED = pyodbc.OperationalError(
    "08S01",
    "[08S01] [FreeTDS][SQL Server]Unable to connect: Adaptive Server is unavailable or does "
    "not exist (20009) (SQLDriverConnect)",
)
QUERY_TIMEOUT = pyodbc.OperationalError(
    "HYT00", "[HYT00] [FreeTDS][SQL Server]Query timeout expired (0) (SQLExecDirectW)"
)
DEADLOCK = pyodbc.Error(
    "40001",
    "[40001] [FreeTDS][SQL Server]Transaction (Process ID 57) was deadlocked on lock resources "
    "with another process and has been chosen as the deadlock victim. Rerun the transaction. "
    "(1205) (SQLExecDirectW)",
)
DRAIN_LOCK_REFUSED = pyodbc.ProgrammingError(
    "42000",
    '[42000] [FreeTDS][SQL Server]changefeed.read_feed: could not lock partition 1 of feed "a" '
    "for draining (sp_getapplock returned -1) (51012) (SQLExecDirectW)",
)
UNKNOWN_FEED = pyodbc.ProgrammingError(
    "42000", "[42000] [FreeTDS][SQL Server]unknown feed 'nope' (51001) (SQLExecDirectW)"
)


class StandInConnection:
    def __init__(self, number: int) -> None:
        self.number = number
        self.closed = False

    def cursor(self):
        raise AssertionError("the work functions in these tests do not use cursors")

    def close(self) -> None:
        self.closed = True


class CountingFactory:
    """Opens numbered stand-in connections; ``fail_with`` makes the next opens raise."""

    def __init__(self) -> None:
        self.opened: list[StandInConnection] = []
        self.fail_with: Exception | None = None

    def __call__(self) -> StandInConnection:
        if self.fail_with is not None:
            raise self.fail_with
        connection = StandInConnection(len(self.opened) + 1)
        self.opened.append(connection)
        return connection


@pytest.fixture
def factory() -> CountingFactory:
    return CountingFactory()


def test_nothing_connects_before_the_first_call(factory):
    pool = ConnectionPool(factory, size=2)
    assert factory.opened == []
    assert pool.run(lambda connection: connection.number) == 1
    assert len(factory.opened) == 1


def test_a_connection_is_reused(factory):
    pool = ConnectionPool(factory, size=2)
    assert [pool.run(lambda c: c.number) for _ in range(3)] == [1, 1, 1]
    assert pool.idle_count == 1


def test_a_broken_pooled_connection_is_replaced_and_the_work_retried(factory):
    pool = ConnectionPool(factory, size=2)
    pool.run(lambda c: None)
    calls: list[int] = []

    def work(connection):
        calls.append(connection.number)
        if connection.number == 1:
            raise LINK_FAILURE
        return "ok"

    assert pool.run(work) == "ok"
    assert calls == [1, 2]
    assert factory.opened[0].closed
    assert not factory.opened[1].closed
    assert pool.idle_count == 1


def test_every_idle_connection_is_dropped_after_a_broken_link(factory):
    pool = ConnectionPool(factory, size=3)
    started = threading.Barrier(3)

    def hold(connection):
        started.wait(timeout=10)  # three threads at once: three connections are opened
        return connection.number

    threads = [threading.Thread(target=pool.run, args=(hold,)) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert pool.idle_count == 3

    def fail_on_old(connection):
        if connection.number <= 3:
            raise LINK_FAILURE
        return connection.number

    assert pool.run(fail_on_old) == 4
    assert all(c.closed for c in factory.opened[:3])
    assert pool.idle_count == 1


def test_a_query_timeout_is_unavailable_without_a_retry(factory):
    pool = ConnectionPool(factory, size=1)
    pool.run(lambda c: None)
    calls: list[int] = []

    def work(connection):
        calls.append(connection.number)
        raise QUERY_TIMEOUT

    with pytest.raises(SourceUnavailable, match="Query timeout expired"):
        pool.run(work)
    assert calls == [1]
    assert factory.opened[0].closed


def test_a_broken_fresh_connection_means_unavailable(factory):
    pool = ConnectionPool(factory, size=2, name="primary database")

    def work(connection):
        raise LINK_FAILURE

    with pytest.raises(SourceUnavailable, match=r"^primary database unavailable"):
        pool.run(work)
    assert factory.opened[0].closed
    assert len(factory.opened) == 1  # a fresh connection that broke is not retried


def test_an_unreachable_database_is_unavailable_and_recovers(factory):
    pool = ConnectionPool(factory, size=1, name="primary database")
    factory.fail_with = REFUSED
    for _ in range(3):
        with pytest.raises(SourceUnavailable) as caught:
            pool.run(lambda c: None)
        assert "Adaptive Server is unavailable" in str(caught.value)
    factory.fail_with = None  # the database is back
    assert pool.run(lambda c: c.number) == 1


def test_a_failed_connect_gives_back_its_slot(factory):
    pool = ConnectionPool(factory, size=1, acquire_timeout=0.01)
    factory.fail_with = REFUSED
    for _ in range(3):
        with pytest.raises(SourceUnavailable):
            pool.run(lambda c: None)
    factory.fail_with = None
    assert pool.run(lambda c: "served") == "served"


def test_a_deadlock_victim_is_retried_on_the_same_connection(factory):
    pool = ConnectionPool(factory, size=1, deadlock_retries=3)
    calls: list[int] = []

    def work(connection):
        calls.append(connection.number)
        if len(calls) < 3:
            raise DEADLOCK
        return "done"

    assert pool.run(work) == "done"
    assert calls == [1, 1, 1]
    assert not factory.opened[0].closed


def test_a_refused_drain_lock_is_retried_too(factory):
    pool = ConnectionPool(factory, size=1, deadlock_retries=3)
    calls: list[int] = []

    def work(connection):
        calls.append(connection.number)
        if len(calls) == 1:
            raise DRAIN_LOCK_REFUSED
        return "drained"

    assert pool.run(work) == "drained"
    assert calls == [1, 1]


def test_deadlock_retries_are_bounded(factory):
    pool = ConnectionPool(factory, size=1, deadlock_retries=2)
    calls: list[int] = []

    def work(connection):
        calls.append(connection.number)
        raise DEADLOCK

    with pytest.raises(SourceUnavailable, match="1205"):
        pool.run(work)
    assert len(calls) == 3
    assert not factory.opened[0].closed


def test_other_database_errors_are_source_errors_and_discard_the_connection(factory):
    pool = ConnectionPool(factory, size=1, name="primary database")

    def work(connection):
        raise UNKNOWN_FEED

    with pytest.raises(SourceError) as caught:
        pool.run(work)
    assert not isinstance(caught.value, SourceUnavailable)
    assert str(caught.value) == "primary database error 51001: unknown feed 'nope'"
    assert factory.opened[0].closed
    assert pool.idle_count == 0
    assert pool.run(lambda c: c.number) == 2


def test_non_database_exceptions_pass_through_and_discard_the_connection(factory):
    pool = ConnectionPool(factory, size=1)

    def work(connection):
        raise KeyError("bug")

    with pytest.raises(KeyError):
        pool.run(work)
    assert factory.opened[0].closed
    assert pool.run(lambda c: c.number) == 2


def test_a_full_pool_answers_unavailable_instead_of_waiting_forever(factory):
    pool = ConnectionPool(factory, size=1, acquire_timeout=0.05)
    inside = threading.Event()
    release = threading.Event()

    def hold(connection):
        inside.set()
        release.wait(timeout=10)

    holder = threading.Thread(target=pool.run, args=(hold,))
    holder.start()
    assert inside.wait(timeout=10)
    try:
        with pytest.raises(SourceUnavailable, match="busy"):
            pool.run(lambda c: None)
    finally:
        release.set()
        holder.join(timeout=10)
    assert len(factory.opened) == 1


def test_close_closes_idle_connections(factory):
    pool = ConnectionPool(factory, size=1)
    pool.run(lambda c: None)
    pool.close()
    assert factory.opened[0].closed
    assert pool.idle_count == 0


def test_a_refused_login_is_unavailable_with_the_drivers_message_only():
    def refuse():
        raise pyodbc.InterfaceError(
            "28000",
            "[28000] [FreeTDS][SQL Server]Login failed for user 'reader'. (18456) "
            "(SQLDriverConnect)",
        )

    pool = ConnectionPool(refuse, size=1, name="primary database")
    with pytest.raises(SourceUnavailable) as caught:
        pool.run(lambda c: None)
    assert (
        str(caught.value) == "primary database unavailable 18456: Login failed for user 'reader'."
    )


def test_connections_inherited_through_fork_are_dropped_not_closed(factory, monkeypatch):
    pool = ConnectionPool(factory, size=1)
    pool.run(lambda c: None)
    monkeypatch.setattr("zeh_mssql.pool.os.getpid", lambda: -1)  # as in a forked child
    assert pool.run(lambda c: c.number) == 2
    # Closing the parent's connection from the child would log the parent's session out.
    assert not factory.opened[0].closed
    assert pool.idle_count == 1
