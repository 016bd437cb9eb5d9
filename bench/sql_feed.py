"""SQL Server benchmarks: publish, drain at the head, read behind it, commit-to-delivery latency.

Needs a Docker engine: SQL Server is started with testcontainers exactly as the
integration tests start it (``tests/integration/conftest.running_sqlserver``),
into a fresh database with every migration applied. Without Docker it prints
one line saying why and exits 0.

- publish: writers on connections of their own, one event per transaction
  (``changefeed.publish`` then commit), 1/8/32 writers, outbox and blocking
  mode; and one writer with ``publish_batch`` transactions of 100 events;
- drain at the head: ``read_feed`` through ``SqlServerFeed`` on a partition
  whose events all wait in the outbox, so every page moves them into the log;
- read behind the head: the same partition read again from ``_first``;
- commit to delivery: a consumer long-polls (``wait``) the server under gunicorn
  with the shipped config; a writer commits an event at a random moment; the
  latency is from the writer calling commit to the consumer holding the
  response.

    python -m bench.sql_feed [--seconds S] [--drain-events N] [--latency-samples N]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import random
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import orjson
import pyodbc

from bench.events import make_events
from bench.gunicorn_server import ROOT, start, stop, wait_ready
from bench.report import Report, core_note, own_peak_rss_mb, percentile, write_report
from zeh_mssql import db
from zeh_mssql.pool import ConnectionPool
from zeh_mssql.server import GUNICORN_CONF
from zeh_mssql.source import FIRST, Event
from zeh_mssql.sqlserver import SqlServerFeed

PARTITIONS = 8
WRITER_COUNTS = (1, 8, 32)
MODES = ("outbox", "blocking")
BATCH = 100
PAGE_SIZE = 1000
QUERY_TIMEOUT_S = 120
STARTUP_TIMEOUT_S = 120.0
DEADLOCK_RETRIES = 20

_PUBLISH = (
    "EXEC changefeed.publish @feed = ?, @data = ?, @partition = ?, @event_type = ?, @headers = ?"
)
# A declared table variable of the batch type, filled from one JSON parameter:
# the way a T-SQL writer calls publish_batch, and one round trip per batch.
_PUBLISH_BATCH = (
    "SET NOCOUNT ON;"
    " DECLARE @events changefeed.event_batch;"
    " INSERT INTO @events (ordinal, [partition], event_type, headers, data)"
    " SELECT ordinal, [partition], event_type, headers, data"
    " FROM OPENJSON(?) WITH (ordinal int '$.ordinal', [partition] int '$.partition',"
    " event_type nvarchar(128) '$.event_type', headers nvarchar(max) '$.headers',"
    " data nvarchar(max) '$.data');"
    " EXEC changefeed.publish_batch @feed = ?, @events = @events;"
)
_CREATE_FEED = "EXEC changefeed.create_feed @name = ?, @partition_count = ?, @mode = ?"
_COUNT = (
    "SELECT (SELECT COUNT_BIG(*) FROM changefeed.event AS e WHERE e.feed_id = f.feed_id)"
    " + (SELECT COUNT_BIG(*) FROM changefeed.outbox AS o WHERE o.feed_id = f.feed_id)"
    " FROM changefeed.feed AS f WHERE f.name = ?"
)


def connect(dsn: str, *, autocommit: bool) -> pyodbc.Connection:
    return db.connect(dsn, autocommit=autocommit, timeout=10, query_timeout=QUERY_TIMEOUT_S)


def execute(cursor: pyodbc.Cursor, sql: str, *params: Any) -> None:
    """Run a batch to its end: an error raised after its first result surfaces only there."""
    cursor.execute(sql, *params)
    while cursor.nextset():
        pass


def create_feed(dsn: str, name: str, partitions: int, mode: str) -> None:
    with contextlib.closing(connect(dsn, autocommit=True)) as conn:
        execute(conn.cursor(), _CREATE_FEED, name, partitions, mode)


def stored_events(dsn: str, feed: str) -> int:
    """Events of ``feed`` in the log and in the outbox together."""
    with contextlib.closing(connect(dsn, autocommit=True)) as conn:
        return int(conn.execute(_COUNT, feed).fetchone()[0])


# --- publishing ------------------------------------------------------------------


@dataclass
class WriterResult:
    events: int = 0
    deadlocks: int = 0
    latencies: list[float] = field(default_factory=list)
    started: float = 0.0
    finished: float = 0.0
    error: str | None = None


def _retrying(conn: pyodbc.Connection, result: WriterResult, work: Callable[[], None]) -> None:
    """Run ``work`` and commit; a deadlock victim rolls back and tries again (bounded)."""
    for _ in range(DEADLOCK_RETRIES):
        try:
            work()
            conn.commit()
            return
        except pyodbc.Error as exc:
            conn.rollback()
            if not db.is_deadlock(exc):
                raise
            result.deadlocks += 1
    raise RuntimeError(f"still a deadlock victim after {DEADLOCK_RETRIES} tries")


def _writer(
    dsn: str,
    feed: str,
    number: int,
    events: Sequence[Event],
    batch: int,
    limit: int,
    seconds: float,
    start: threading.Barrier,
    result: WriterResult,
) -> None:
    try:
        with contextlib.closing(connect(dsn, autocommit=False)) as conn:
            cursor = conn.cursor()
            partition = number % PARTITIONS
            start.wait()
            result.started = time.monotonic()
            deadline = result.started + seconds
            sent = 0
            while sent < limit and time.monotonic() < deadline:
                chosen = [events[(number * 31 + sent + i) % len(events)] for i in range(batch)]
                work: Callable[[], None]
                if batch == 1:
                    event = chosen[0]
                    work = partial(
                        execute,
                        cursor,
                        _PUBLISH,
                        feed,
                        event.data,
                        partition,
                        event.event_type,
                        event.headers,
                    )
                else:
                    rows = orjson.dumps(
                        [
                            {
                                "ordinal": i,
                                "partition": partition,
                                "event_type": e.event_type,
                                "headers": e.headers,
                                "data": e.data,
                            }
                            for i, e in enumerate(chosen)
                        ]
                    ).decode()
                    work = partial(execute, cursor, _PUBLISH_BATCH, rows, feed)
                began = time.perf_counter()
                _retrying(conn, result, work)
                result.latencies.append(time.perf_counter() - began)
                sent += batch
            result.events = sent
            result.finished = time.monotonic()
    except Exception as exc:
        result.error = f"{type(exc).__name__}: {db.redact_dsn(str(exc))}"
        start.abort()  # the others stop waiting for a writer that will not come


def publish_load(
    dsn: str, mode: str, writers: int, *, batch: int, seconds: float, limit: int
) -> dict[str, Any]:
    """Writers publishing for ``seconds`` (at most ``limit`` events each) into a new feed."""
    feed = f"publish_{mode}_{writers}_{batch}"
    create_feed(dsn, feed, PARTITIONS, mode)
    events = make_events(512)
    start = threading.Barrier(writers + 1, timeout=120)
    results = [WriterResult() for _ in range(writers)]
    threads = [
        threading.Thread(
            target=_writer,
            args=(dsn, feed, n, events, batch, limit, seconds, start, results[n]),
            name=f"writer-{n}",
        )
        for n in range(writers)
    ]
    for thread in threads:
        thread.start()
    with contextlib.suppress(threading.BrokenBarrierError):  # a writer failed: see below
        start.wait()
    for thread in threads:
        thread.join(timeout=seconds + QUERY_TIMEOUT_S + 60)
    errors = [r.error for r in results if r.error] + [
        f"{t.name} did not finish" for t in threads if t.is_alive()
    ]
    if errors:
        # The writers that only saw another one fail come last.
        errors.sort(key=lambda error: error.startswith("BrokenBarrierError"))
        raise RuntimeError(f"publish {mode} with {writers} writers: {errors[0]}")
    published = sum(r.events for r in results)
    stored = stored_events(dsn, feed)
    if stored != published:
        raise RuntimeError(f"{feed}: {published} events published, {stored} stored")
    window = max(r.finished for r in results) - min(r.started for r in results)
    latencies = [x for r in results for x in r.latencies]
    data_bytes = sum(len(e.data.encode()) for e in events) / len(events) * published
    return {
        **throughput(published, data_bytes, window, latencies),
        "events": published,
        "transactions": len(latencies),
        "deadlocks": sum(r.deadlocks for r in results),
    }


def throughput(
    events: float, data_bytes: float, seconds: float, latencies: Sequence[float]
) -> dict[str, float]:
    """The figures every throughput row reports: rates, latency percentiles, peak RSS."""
    return {
        "events_per_s": events / seconds,
        "mb_per_s": data_bytes / seconds / 1e6,
        "p50_ms": percentile(latencies, 50) * 1e3,
        "p99_ms": percentile(latencies, 99) * 1e3,
        "peak_rss_mb": own_peak_rss_mb(),
    }


# --- reading ----------------------------------------------------------------------


def fill_outbox(dsn: str, feed: str, count: int) -> None:
    """Publish ``count`` events into partition 0 of an outbox feed, 500 per transaction."""
    events = make_events(count)
    with contextlib.closing(connect(dsn, autocommit=False)) as conn:
        cursor = conn.cursor()
        for offset in range(0, count, 500):
            rows = orjson.dumps(
                [
                    {
                        "ordinal": i,
                        "partition": 0,
                        "event_type": e.event_type,
                        "headers": e.headers,
                        "data": e.data,
                    }
                    for i, e in enumerate(events[offset : offset + 500])
                ]
            ).decode()
            execute(cursor, _PUBLISH_BATCH, rows, feed)
            conn.commit()


def read_partition(source: SqlServerFeed, expected: int) -> dict[str, Any]:
    """Follow partition 0 from ``_first`` to its end; time every page."""
    cursor = FIRST
    latencies: list[float] = []
    events = 0
    data_bytes = 0
    max_pages = expected // PAGE_SIZE * 2 + 10
    started = time.perf_counter()
    while len(latencies) < max_pages:
        began = time.perf_counter()
        page = source.fetch(0, cursor, PAGE_SIZE)
        latencies.append(time.perf_counter() - began)
        events += len(page.events)
        data_bytes += sum(len(e.data) for e in page.events)
        if not page.events and page.cursor == cursor:
            break
        cursor = page.cursor
    else:
        raise RuntimeError(f"partition 0 did not end within {max_pages} pages")
    elapsed = time.perf_counter() - started
    if events != expected:
        raise RuntimeError(f"read {events} events, {expected} expected")
    return {
        **throughput(events, data_bytes, elapsed, latencies),
        "events": events,
        "pages": len(latencies),
    }


# --- commit to delivery -------------------------------------------------------------


@contextlib.contextmanager
def feed_server(dsn: str, feeds: Sequence[str]) -> Iterator[int]:
    """The real server (shipped gunicorn config, ``create_app``) on this database; its port."""
    env = dict(os.environ)
    env.update(
        ZEH_MSSQL_DSN=dsn,
        ZEH_MSSQL_FEEDS=",".join(feeds),
        ZEH_MSSQL_LOG_LEVEL="WARNING",
        PYTHONPATH=str(ROOT),
    )
    with tempfile.TemporaryDirectory(prefix="zeh-bench-sql-") as log_dir:
        server = start(
            "sql-server",
            "zeh_mssql.app:create_app()",
            config=GUNICORN_CONF,
            env=env,
            log_dir=Path(log_dir),
        )
        try:
            wait_ready(server, "/healthz", time.monotonic() + STARTUP_TIMEOUT_S)
            yield server.port
        finally:
            stop(server)


def _get_lines(connection: http.client.HTTPConnection, path: str) -> list[dict[str, Any]]:
    connection.request("GET", path)
    response = connection.getresponse()
    body = response.read()
    if response.status != 200:
        raise RuntimeError(f"GET {path}: HTTP {response.status}: {body[:200]!r}")
    return [orjson.loads(line) for line in body.splitlines()]


def delivery_latency(dsn: str, port: int, feed: str, samples: int) -> dict[str, Any]:
    """Commit an event at a random moment while a long-poll waits; time until it arrives."""
    path = f"/{feed}/feed/v1?n=1"
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    rng = random.Random(11)
    event = make_events(1)[0]
    latencies: list[float] = []
    with contextlib.closing(connect(dsn, autocommit=False)) as writer:
        statement = writer.cursor()
        (checkpoint,) = _get_lines(connection, f"{path}&cursor0=_last")
        cursor = checkpoint["cursor"]
        deadline = time.monotonic() + samples * 5 + 60
        while len(latencies) < samples and time.monotonic() < deadline:
            committed: list[float] = []
            delay = rng.uniform(0.05, 0.5)

            def publish(delay: float = delay, committed: list[float] = committed) -> None:
                time.sleep(delay)
                execute(statement, _PUBLISH, feed, event.data, 0, event.event_type, event.headers)
                # Timed from the commit call: the event may become visible to the
                # server before the acknowledgement is back here.
                committed.append(time.perf_counter())
                writer.commit()

            thread = threading.Thread(target=publish, name="latency-writer")
            thread.start()
            lines = _get_lines(connection, f"{path}&cursor0={cursor}&wait=10")
            received = time.perf_counter()
            thread.join(timeout=QUERY_TIMEOUT_S)
            if not committed:
                raise RuntimeError("the writer did not commit")
            cursor = lines[-1]["cursor"]
            if len(lines) == 2:  # the event and its checkpoint
                latencies.append(received - committed[0])
            else:
                # The poll returned before the commit (its wait ran out, or nothing
                # yet): catch the event up without timing it.
                for _ in range(100):
                    caught = _get_lines(connection, f"{path}&cursor0={cursor}&wait=10")
                    cursor = caught[-1]["cursor"]
                    if len(caught) > 1:
                        break
    connection.close()
    if not latencies:
        raise RuntimeError("no commit-to-delivery latency could be measured")
    return {
        "p50_ms": percentile(latencies, 50) * 1e3,
        "p99_ms": percentile(latencies, 99) * 1e3,
        "mean_ms": statistics.mean(latencies) * 1e3,
        "max_ms": max(latencies) * 1e3,
        "samples": len(latencies),
    }


# --- the benchmark ----------------------------------------------------------------


def run(dsn: str, *, seconds: float, drain_events: int, latency_samples: int) -> Report:
    report = Report(
        "sql",
        parameters={
            "partitions": PARTITIONS,
            "writers": list(WRITER_COUNTS),
            "seconds_per_publish_run": seconds,
            "drain_events": drain_events,
            "page_size": PAGE_SIZE,
            "latency_samples": latency_samples,
        },
    )
    limit = 1_000_000  # the time bound ends each run; this only bounds the count
    for mode in MODES:
        for writers in WRITER_COUNTS:
            figures = publish_load(dsn, mode, writers, batch=1, seconds=seconds, limit=limit)
            report.row(f"publish {mode}, {writers} writer(s), 1 event/tx", **figures)
            print(f"publish {mode} x{writers}: {figures['events_per_s']:,.0f} events/s", flush=True)
        figures = publish_load(dsn, mode, 1, batch=BATCH, seconds=seconds, limit=limit)
        report.row(f"publish_batch {mode}, 1 writer, {BATCH} events/tx", **figures)

    create_feed(dsn, "drain", 1, "outbox")
    fill_outbox(dsn, "drain", drain_events)
    pool = ConnectionPool(
        partial(db.connect, dsn, timeout=10, query_timeout=QUERY_TIMEOUT_S), size=2, name="bench"
    )
    source = SqlServerFeed("drain", 1, pool)
    report.row("read_feed at the head (drains the outbox)", **read_partition(source, drain_events))
    report.row("read_feed behind the head", **read_partition(source, drain_events))

    for mode in MODES:
        create_feed(dsn, f"latency_{mode}", 1, mode)
    with feed_server(dsn, [f"latency_{mode}" for mode in MODES]) as port:
        for mode in MODES:
            figures = delivery_latency(dsn, port, f"latency_{mode}", latency_samples)
            report.row(f"commit to long-poll delivery, {mode}", **figures)

    report.notes.append(
        "SQL Server runs in a container on the same machine as the clients and the server"
    )
    report.notes.append(
        "long-polls see an event within the poll ceiling (ZEH_MSSQL_POLL_CEILING_MS, default "
        "1000 ms); polls start 5 ms apart and back off while nothing changes"
    )
    report.notes.append(core_note())
    return report


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each publish run")
    parser.add_argument("--drain-events", type=int, default=20000)
    parser.add_argument("--latency-samples", type=int, default=40)
    args = parser.parse_args(argv)

    from tests.integration.conftest import (
        create_database,
        docker_unavailable_reason,
        drop_database,
        running_sqlserver,
    )

    reason = docker_unavailable_reason()
    if reason is not None:
        print(f"sql: skipped: Docker is needed to start SQL Server: {reason}")
        return
    from zeh_mssql.migrate import migrate

    with running_sqlserver() as server:
        database = create_database(server)
        try:
            migrate(database.dsn, echo=lambda _line: None)
            report = run(
                database.dsn,
                seconds=args.seconds,
                drain_events=args.drain_events,
                latency_samples=args.latency_samples,
            )
        finally:
            drop_database(server, database.name)
    write_report(report)


if __name__ == "__main__":
    main()
