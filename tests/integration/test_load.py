"""The ordering contract under load: every reader gets every event exactly once, in order.

Writers publish in transactions of their own on connections of their own while
readers follow the feed through ``read_feed`` on theirs. Each writer's events share
a partition key, so they land in one partition in publish order, and each reader
must see exactly that order for every writer, with nothing skipped or repeated.
Every loop is bounded in iterations and in time; a failing thread stops the rest.
"""

from __future__ import annotations

import contextlib
import json
import random
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pyodbc
import pytest

from tests.integration.feedsql import (
    DEADLINE_S,
    FIRST,
    Row,
    connect,
    create_feed,
    publish,
    publish_batch,
    read_feed,
)
from zeh_mssql import db

PARTITIONS = 4
PAGESIZE = 37  # odd, so pages end mid-transaction
QUERY_TIMEOUT_S = 120  # a hung statement fails the test instead of hanging it
MAX_RETRIES = 50
IDLE_LIMIT_S = 30.0


@dataclass
class Seen:
    """What one reader read, partition by partition, in order."""

    rows: dict[int, list[Row]] = field(default_factory=lambda: defaultdict(list))

    @property
    def total(self) -> int:
        return sum(len(rows) for rows in self.rows.values())


class Crew:
    """Threads that share one stop flag and report their failures."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.failures: list[BaseException] = []
        self.threads: list[threading.Thread] = []

    def start(self, name: str, work: Callable[[], None]) -> threading.Thread:
        def run() -> None:
            try:
                work()
            except BaseException as exc:
                self.failures.append(exc)
                self.stop.set()

        thread = threading.Thread(target=run, name=name, daemon=True)
        self.threads.append(thread)
        thread.start()
        return thread

    def join(self) -> None:
        deadline = time.monotonic() + DEADLINE_S
        for thread in self.threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        alive = [t.name for t in self.threads if t.is_alive()]
        self.stop.set()
        if self.failures:
            raise self.failures[0]
        assert not alive, f"threads still running after {DEADLINE_S} s: {alive}"


@contextlib.contextmanager
def session(dsn: str) -> Iterator[pyodbc.Connection]:
    conn = connect(dsn)
    conn.timeout = QUERY_TIMEOUT_S
    try:
        yield conn
    finally:
        conn.close()


def retrying_deadlocks(action: Callable[[], None], conn: pyodbc.Connection) -> None:
    """Run ``action``; a deadlock victim is rolled back and run again, as servers do."""
    for _ in range(MAX_RETRIES):
        try:
            action()
            return
        except pyodbc.Error as exc:
            conn.execute("if @@trancount > 0 rollback transaction")
            if not db.is_deadlock(exc):
                raise
    raise AssertionError(f"still a deadlock victim after {MAX_RETRIES} attempts")


def write(dsn: str, feed: str, writer: int, count: int, stop: threading.Event) -> None:
    """Publish ``count`` events keyed by the writer, in transactions of 1 to 4 events."""
    sizes = random.Random(writer)
    with session(dsn) as conn:
        i = 0
        while i < count and not stop.is_set():
            size = min(sizes.randint(1, 4), count - i)
            numbers = range(i, i + size)

            def one_transaction(numbers: range = numbers) -> None:
                conn.execute("begin transaction")
                for n in numbers:
                    publish(conn, feed, {"w": writer, "i": n}, partition_key=f"writer-{writer}")
                conn.execute("commit transaction")

            retrying_deadlocks(one_transaction, conn)
            i += size


def follow(
    dsn: str,
    feed: str,
    seen: Seen,
    expected: int,
    writers_done: threading.Event,
    stop: threading.Event,
) -> None:
    """Read every partition page by page until all ``expected`` events were read.

    A round over the partitions that finds nothing new may still be followed by
    events: another reader may be draining them right now. So once the writers
    are done, the reader stops after a quiet round only when it has read them all,
    and reports events lost after ``IDLE_LIMIT_S`` of quiet rounds short of that.
    """
    cursors = dict.fromkeys(range(PARTITIONS), FIRST)
    deadline = time.monotonic() + DEADLINE_S
    quiet_since: float | None = None
    with session(dsn) as conn:
        while not stop.is_set():
            assert time.monotonic() < deadline, f"read {seen.total} of {expected} events"
            done_before_round = writers_done.is_set()
            progressed = False
            for partition in range(PARTITIONS):
                page: list[Row] = []

                def read_page(partition: int = partition, page: list[Row] = page) -> None:
                    page[:], cursors[partition] = read_feed(
                        conn, feed, partition, cursors[partition], pagesize=PAGESIZE
                    )

                before = cursors[partition]
                retrying_deadlocks(read_page, conn)
                seen.rows[partition] += page
                progressed = progressed or bool(page) or cursors[partition] != before
            if seen.total > expected:
                raise AssertionError(f"read {seen.total} events, only {expected} were written")
            if progressed or not done_before_round:
                quiet_since = None
                if not progressed:
                    time.sleep(0.01)  # at the head while writers write: poll gently
                continue
            if seen.total == expected:
                return
            now = time.monotonic()
            quiet_since = now if quiet_since is None else quiet_since
            assert now - quiet_since < IDLE_LIMIT_S, (
                f"read {seen.total} of {expected} events; nothing more for {IDLE_LIMIT_S} s"
            )
            time.sleep(0.05)


def check(seen: Seen, expected: dict[int, int]) -> None:
    """Each writer's events exactly once and in order; positions only ever increase."""
    counts = Counter()
    order: dict[int, list[int]] = defaultdict(list)
    for rows in seen.rows.values():
        ulids = [row.ulid for row in rows]
        assert ulids == sorted(set(ulids)), "a partition's ULIDs must strictly increase"
        for row in rows:
            event = json.loads(row.data)
            counts[(event["w"], event["i"])] += 1
            order[event["w"]].append(event["i"])
    duplicates = [key for key, n in counts.items() if n > 1]
    assert not duplicates, f"delivered twice: {duplicates[:10]}"
    for writer, count in expected.items():
        assert order[writer] == list(range(count)), f"writer {writer}: out of order or missing"
    assert set(order) == set(expected)


def signature(seen: Seen) -> dict[int, list[tuple[bytes, str]]]:
    return {p: [(row.ulid, row.data) for row in rows] for p, rows in seen.rows.items() if rows}


@pytest.mark.parametrize("mode", ["outbox", "blocking"])
def test_ten_writers_and_ten_readers_at_once(migrated_dsn, mode):
    writers, per_writer, readers = 10, 200, 10
    with session(migrated_dsn) as admin:
        create_feed(admin, "load", PARTITIONS, mode)
    crew = Crew()
    writers_done = threading.Event()
    seen = [Seen() for _ in range(readers)]
    for r in range(readers):
        crew.start(
            f"reader-{r}",
            lambda s=seen[r]: follow(
                migrated_dsn, "load", s, writers * per_writer, writers_done, crew.stop
            ),
        )
    writer_threads = [
        crew.start(f"writer-{w}", lambda w=w: write(migrated_dsn, "load", w, per_writer, crew.stop))
        for w in range(writers)
    ]
    deadline = time.monotonic() + DEADLINE_S
    for thread in writer_threads:
        thread.join(timeout=max(0.0, deadline - time.monotonic()))
    writers_done.set()
    crew.join()

    expected = dict.fromkeys(range(writers), per_writer)
    for reader_seen in seen:
        assert reader_seen.total == writers * per_writer
        check(reader_seen, expected)
    # Positions are fixed once handed out: every reader saw the very same log.
    assert all(signature(s) == signature(seen[0]) for s in seen)


@pytest.mark.parametrize("mode", ["outbox", "blocking"])
def test_one_writer_then_twenty_readers_at_once(migrated_dsn, mode):
    total, readers = 1000, 20
    with session(migrated_dsn) as admin:
        create_feed(admin, "burst", PARTITIONS, mode)
        # Half one event per call, half through publish_batch, in transactions of
        # varying size: the readers then race each other to drain all of it.
        sizes = random.Random(total)
        i = 0
        while i < total // 2:
            size = min(sizes.randint(1, 5), total // 2 - i)
            admin.execute("begin transaction")
            for n in range(i, i + size):
                publish(admin, "burst", {"w": 0, "i": n}, partition_key="writer-0")
            admin.execute("commit transaction")
            i += size
        while i < total:
            size = min(sizes.randint(1, 60), total - i)
            batch = [
                {"ordinal": n, "partition_key": "writer-0", "data": json.dumps({"w": 0, "i": n})}
                for n in range(i, i + size)
            ]
            publish_batch(admin, "burst", batch)
            i += size

    crew = Crew()
    writers_done = threading.Event()
    writers_done.set()
    start = threading.Barrier(readers, timeout=DEADLINE_S)
    seen = [Seen() for _ in range(readers)]

    def reader(s: Seen) -> None:
        start.wait()
        follow(migrated_dsn, "burst", s, total, writers_done, crew.stop)

    for r in range(readers):
        crew.start(f"reader-{r}", lambda s=seen[r]: reader(s))
    crew.join()

    for reader_seen in seen:
        assert reader_seen.total == total
        check(reader_seen, {0: total})
    assert all(signature(s) == signature(seen[0]) for s in seen)
