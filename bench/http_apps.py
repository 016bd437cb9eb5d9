"""The two apps the HTTP benchmark runs under gunicorn, on the same data.

- ``real_app()``: the server as deployed, ``zeh_mssql.app.create_app`` (request
  log, authentication hook, feed dispatch, the blueprint), serving a
  ``MemorySource`` as feed ``bench`` at ``/bench/feed/v1``.
- ``baseline_app()``: a Flask app at the same path that answers each request
  with its response body built in advance: the cost of the HTTP stack alone.

Both build the same events (``BENCH_PARTITIONS`` partitions of
``BENCH_EVENTS`` each, the same ~1 KB documents in every partition). Cursors
are positions in one process's ``MemorySource``, so gunicorn must load the app
once before forking (``--preload``) for every worker to know them.
"""

from __future__ import annotations

import os

import orjson
from flask import Flask, Response, request

from bench.events import make_events
from zeh_mssql.app import create_app
from zeh_mssql.catalog import StaticCatalog
from zeh_mssql.config import Config
from zeh_mssql.protocol import NDJSON, encode_response, parse_headers
from zeh_mssql.source import FIRST, Page
from zeh_mssql.testing import MemorySource

FEED = "bench"
PATH = f"/{FEED}/feed/v1"


def _settings() -> tuple[int, int, int, str]:
    return (
        int(os.environ.get("BENCH_PARTITIONS", "8")),
        int(os.environ.get("BENCH_EVENTS", "25000")),
        int(os.environ.get("BENCH_PAGE_SIZE", "1000")),
        os.environ.get("BENCH_HEADERS", "_all"),
    )


def build_source(partitions: int, events_per_partition: int) -> MemorySource:
    """A source whose every partition holds the same ``events_per_partition`` events."""
    events = make_events(events_per_partition)
    headers = [orjson.loads(e.headers) if e.headers else None for e in events]
    source = MemorySource(partitions)
    for partition in range(partitions):
        for event, event_headers in zip(events, headers, strict=True):
            source.append(partition, event.data, headers=event_headers, event_type=event.event_type)
    return source


def serve_source(source: MemorySource, page_size: int) -> Flask:
    """``create_app`` serving ``source`` as feed ``bench`` through a static catalog."""
    # No database is asked: the catalog is static and the pool connects lazily.
    config = Config(
        dsn="DRIVER={unused};SERVER=unused",
        default_page_size=page_size,
        max_page_size=max(page_size, 10000),
    )
    return create_app(config, catalog=StaticCatalog({FEED: source}))


def real_app() -> Flask:
    """The server app on the benchmark's data (settings from ``BENCH_*``)."""
    partitions, events, page_size, _ = _settings()
    return serve_source(build_source(partitions, events), page_size)


def prebuilt_bodies(
    source: MemorySource, page_size: int, headers: str
) -> dict[tuple[int, str], bytes]:
    """Every response a client draining each partition from ``_first`` will ask for."""
    selection = parse_headers(headers)
    bodies: dict[tuple[int, str], bytes] = {}
    for partition in range(source.partition_count):
        cursor = FIRST
        while True:
            page: Page = source.fetch(partition, cursor, page_size)
            bodies[(partition, cursor)] = encode_response([(partition, page)], selection)
            if not page.events:
                break
            cursor = page.cursor
    return bodies


def serve_prebuilt(bodies: dict[tuple[int, str], bytes]) -> Flask:
    """Answers ``?n=..&cursorP=C`` with ``bodies[(P, C)]``; nothing else."""
    app = Flask(__name__)

    @app.get(PATH)
    def feed() -> Response:
        for name, value in request.args.items():
            if name.startswith("cursor"):
                body = bodies.get((int(name[6:]), value))
                if body is not None:
                    return Response(body, status=200, mimetype=NDJSON)
        return Response(b'{"error":"no such page prepared"}', status=400)

    return app


def baseline_app() -> Flask:
    """The pre-built responses of the benchmark's data (settings from ``BENCH_*``)."""
    partitions, events, page_size, headers = _settings()
    return serve_prebuilt(prebuilt_bodies(build_source(partitions, events), page_size, headers))
