"""The server end to end: gunicorn on 127.0.0.1, logged in as a reader, read over HTTP.

Writers publish from SQL in many transactions (also while the HTTP reader
follows the checkpoints); every event must arrive exactly once and in order per
partition. One test restarts SQL Server under the running server.
"""

from __future__ import annotations

import contextlib
import re
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pyodbc
import requests

from tests.gunicorn_process import free_port, running
from tests.integration.conftest import (
    IMAGE,
    SQLSERVER_PORT,
    SqlServer,
    create_database,
    odbc_driver,
)

FEEDS = {"orders": "outbox", "payments": "blocking"}
PARTITIONS = 4
PUBLISH = (
    "exec changefeed.publish @feed = ?, @data = ?, @partition = ?, @event_type = ?, @headers = ?"
)
Expected = dict[int, list[int]]


def create_feeds(dsn: str) -> None:
    with contextlib.closing(pyodbc.connect(dsn, autocommit=True, timeout=10)) as connection:
        for name, mode in FEEDS.items():
            connection.execute(
                "exec changefeed.create_feed @name = ?, @partition_count = ?, @mode = ?",
                name,
                PARTITIONS,
                mode,
            )


def publish_in_transactions(
    dsn: str, feed: str, *, transactions: int, per_transaction: int, first: int = 0
) -> Expected:
    """Publish numbered events, several per transaction; return each partition's numbers."""
    expected: Expected = {p: [] for p in range(PARTITIONS)}
    number = first
    with contextlib.closing(pyodbc.connect(dsn, autocommit=False, timeout=10)) as connection:
        cursor = connection.cursor()
        for transaction in range(transactions):
            for _ in range(per_transaction):
                partition = (number * 3 + transaction) % PARTITIONS
                cursor.execute(
                    PUBLISH,
                    feed,
                    orjson.dumps({"n": number, "feed": feed}).decode(),
                    partition,
                    "numbered",
                    orjson.dumps({"n": str(number)}).decode(),
                )
                expected[partition].append(number)
                number += 1
            connection.commit()
    return expected


def get_page(url: str, feed: str, cursors: dict[int, str], hint: int = 7) -> list[dict[str, Any]]:
    params: dict[str, Any] = {"n": PARTITIONS, "pagesizehint": hint, "headers": "_all"}
    params.update({f"cursor{p}": c for p, c in cursors.items()})
    response = requests.get(f"{url}/{feed}/feed/v1", params=params, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("application/x-ndjson")
    lines = [orjson.loads(line) for line in response.content.splitlines()]
    checkpoints = [line["partition"] for line in lines if "cursor" in line]
    assert sorted(checkpoints) == sorted(cursors), "one checkpoint per requested partition"
    return lines


def read_until(
    url: str, feed: str, cursors: dict[int, str], *, total: int | None = None
) -> tuple[Expected, dict[int, str]]:
    """Follow the checkpoints until a page is empty (or ``total`` events were read)."""
    cursors = dict(cursors)
    seen: Expected = {p: [] for p in cursors}
    for _ in range(5000):
        lines = get_page(url, feed, cursors)
        events = [line for line in lines if "data" in line]
        for line in events:
            assert line["headers"] == {"n": str(line["data"]["n"])}
            assert line["data"]["feed"] == feed
            seen[line["partition"]].append(line["data"]["n"])
        cursors.update({line["partition"]: line["cursor"] for line in lines if "cursor" in line})
        count = sum(len(numbers) for numbers in seen.values())
        if (total is None and not events) or (total is not None and count >= total):
            return seen, cursors
        if not events:
            time.sleep(0.05)  # a concurrent writer has not committed more yet
    raise AssertionError(f"{feed}: the feed never ended")


def password_of(dsn: str) -> str:
    match = re.search(r"PWD=\{((?:[^}]|\}\})*)\}", dsn)
    assert match is not None
    return match.group(1).replace("}}", "}")


def server_env(dsn: str) -> dict[str, str]:
    return {"ZEH_MSSQL_DSN": dsn, "ZEH_MSSQL_THREADS": "4", "ZEH_MSSQL_LOGIN_TIMEOUT": "5"}


FIRST = dict.fromkeys(range(PARTITIONS), "_first")
LAST = dict.fromkeys(range(PARTITIONS), "_last")


def test_every_event_exactly_once_in_order_through_http(migrated_dsn, create_login, tmp_path):
    create_feeds(migrated_dsn)
    expected = {
        feed: publish_in_transactions(migrated_dsn, feed, transactions=30, per_transaction=4)
        for feed in FEEDS
    }
    reader_dsn = create_login("changefeed_reader")  # all the server needs
    log = tmp_path / "server.log"
    with running(server_env(reader_dsn), log) as url:
        assert requests.get(f"{url}/healthz", timeout=30).status_code == 200
        listed = requests.get(f"{url}/feeds", timeout=30).json()["feeds"]
        assert listed == [
            {"name": "orders", "partition_count": 4, "path": "/orders/feed/v1"},
            {"name": "payments", "partition_count": 4, "path": "/payments/feed/v1"},
        ]
        for feed in FEEDS:
            seen, cursors = read_until(url, feed, FIRST)
            assert seen == expected[feed], feed
            again, _ = read_until(url, feed, FIRST)
            assert again == expected[feed], f"{feed}: a second reader sees the same log"

            # _last resolves to the head: the cursors the first reader ended on.
            heads = {line["partition"]: line["cursor"] for line in get_page(url, feed, LAST)}
            assert heads == cursors
            later = publish_in_transactions(
                migrated_dsn, feed, transactions=5, per_transaction=3, first=10_000
            )
            after, _ = read_until(url, feed, heads)
            assert after == later, f"{feed}: only the events after _last"
    assert password_of(reader_dsn) not in log.read_text()


TOTAL_CONCURRENT = 240


def write_concurrently(dsn: str, feed: str, written: dict[str, Expected]) -> None:
    written[feed] = publish_in_transactions(
        dsn, feed, transactions=TOTAL_CONCURRENT // 2, per_transaction=2
    )


def test_a_reader_following_a_feed_while_writers_commit_misses_nothing(
    migrated_dsn, create_login, tmp_path
):
    create_feeds(migrated_dsn)
    reader_dsn = create_login("changefeed_reader")
    written: dict[str, Expected] = {}
    with running(server_env(reader_dsn), tmp_path / "server.log") as url:
        for feed in FEEDS:
            writer = threading.Thread(target=write_concurrently, args=(migrated_dsn, feed, written))
            writer.start()
            try:
                seen, _ = read_until(url, feed, FIRST, total=TOTAL_CONCURRENT)
            finally:
                writer.join(timeout=300)
            assert seen == written[feed], feed


# --- SQL Server restarted under the running server -----------------------------------


@contextlib.contextmanager
def restartable_sqlserver() -> Iterator[tuple[Any, SqlServer]]:
    """A SQL Server container of its own whose host port survives a stop and start."""
    try:
        from testcontainers.community.mssql import SqlServerContainer
    except ImportError:  # testcontainers releases before the community split
        from testcontainers.mssql import SqlServerContainer

    class Container(SqlServerContainer):  # type: ignore[misc]
        def _connect(self) -> None:
            """Readiness is an ODBC login, checked by ``wait_for_login`` below."""

    password = f"Zeh-{secrets.token_hex(12)}-Aa1"
    port = free_port()
    container = Container(IMAGE, password=password, port=SQLSERVER_PORT)
    container.with_env("MSSQL_SA_PASSWORD", password)
    container.with_env("MSSQL_PID", "Developer")
    container.with_bind_ports(SQLSERVER_PORT, port)
    container.start()
    try:
        server = SqlServer(
            host=container.get_container_host_ip(),
            port=port,
            sa_password=password,
            driver=odbc_driver(),
        )
        wait_for_login(server.dsn())
        yield container, server
    finally:
        container.stop()


def wait_for_login(dsn: str, limit_s: float = 240.0) -> None:
    deadline = time.monotonic() + limit_s
    while True:
        try:
            with contextlib.closing(pyodbc.connect(dsn, autocommit=True, timeout=5)) as c:
                c.execute("select 1").fetchone()
            return
        except pyodbc.Error:
            if time.monotonic() > deadline:
                raise
            time.sleep(1.0)


def poll_status(url: str, want: int, attempts: int = 240) -> requests.Response:
    """GET ``url`` until it answers ``want`` (one attempt a second at most)."""
    response = None
    for _ in range(attempts):
        with contextlib.suppress(requests.RequestException):
            response = requests.get(url, timeout=30)
            if response.status_code == want:
                return response
        time.sleep(1.0)
    raise AssertionError(f"{url} never answered {want}; last: {response}")


def test_a_database_restart_gives_503_then_the_server_recovers_by_itself(tmp_path: Path):
    from zeh_mssql.migrate import migrate

    with restartable_sqlserver() as (container, server):
        database = create_database(server)
        migrate(database.dsn, echo=lambda _line: None)
        create_feeds(database.dsn)
        before = publish_in_transactions(database.dsn, "orders", transactions=10, per_transaction=2)
        with running(server_env(database.dsn), tmp_path / "server.log") as url:
            seen, cursors = read_until(url, "orders", FIRST)
            assert seen == before

            container.get_wrapped_container().stop(timeout=30)
            health = poll_status(f"{url}/healthz", 503)
            assert "Retry-After" in health.headers
            feed = poll_status(f"{url}/orders/feed/v1?n=4&cursor0=_first", 503)
            assert "Retry-After" in feed.headers
            assert server.sa_password not in feed.text

            container.get_wrapped_container().start()
            wait_for_login(database.dsn)
            poll_status(f"{url}/healthz", 200)
            after = publish_in_transactions(
                database.dsn, "orders", transactions=4, per_transaction=2, first=1000
            )
            # The same server process, its stale connections replaced by itself.
            resumed, _ = read_until(url, "orders", cursors)
            assert resumed == after
            everything, _ = read_until(url, "orders", FIRST)
            assert everything == {p: before[p] + after[p] for p in range(PARTITIONS)}
