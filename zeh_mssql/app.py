"""``create_app()``: the Flask app that serves SQL Server feeds, for gunicorn.

Routes:

- ``GET /healthz``: 200 when the database answers ``select 1``, else 503.
- ``GET /feeds``: the served feeds with their partition counts and paths.
- the path template (default ``/{feed}/feed/v1``, and anything below it): the
  feed's ZeroEventHub endpoint.

Feeds are not known when the app starts (the database may be down), so the
template is one dispatching route: it resolves the name through the lazily read
``FeedCatalog`` and hands the request, unchanged, to a small Flask app per feed
holding that feed's ``create_blueprint`` blueprint, made on first use. Whatever
the blueprint serves at or below its path is served here as it is.

With tokens configured, every route but ``/healthz`` needs ``Authorization:
Bearer <token>``; a request without a valid one gets 401 before anything asks
the database.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import orjson
from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException

from zeh_mssql import db
from zeh_mssql.auth import BearerTokens
from zeh_mssql.blueprint import RETRY_AFTER_SECONDS, create_blueprint, error_response
from zeh_mssql.catalog import Catalog, FeedCatalog
from zeh_mssql.config import FEED_PLACEHOLDER, Config
from zeh_mssql.logs import configure_logging
from zeh_mssql.pool import ConnectionPool
from zeh_mssql.source import EventSource, SourceError, SourceUnavailable
from zeh_mssql.sqlserver import FeedInfo, SqlServerFeed, list_feeds, ping

request_log = logging.getLogger("zeh_mssql.requests")
_log = logging.getLogger(__name__)

WsgiApp = Callable[..., Any]
_PUBLIC_ENDPOINTS = frozenset({"healthz"})


def create_app(config: Config | None = None, *, catalog: Catalog | None = None) -> Flask:
    """The server app; ``config`` defaults to ``Config.from_env()``.

    ``catalog`` defaults to the feeds of the database's registry (``FeedCatalog``);
    a ``StaticCatalog`` serves other sources behind the same routes. Nothing
    connects here: connections are opened on the first request of each (forked)
    worker process.
    """
    config = Config.from_env() if config is None else config
    configure_logging(config.log_level_number)
    primary = _pool(config, config.dsn, "primary database")
    if catalog is None:
        replica = None
        if config.replica_dsn is not None:
            replica = _pool(config, config.replica_dsn, "replica database")

        def make_source(info: FeedInfo) -> EventSource:
            return SqlServerFeed(info.name, info.partition_count, primary, replica=replica)

        catalog = FeedCatalog(partial(list_feeds, primary), make_source, names=config.feeds)
    feed_apps = _FeedApps(config)
    tokens = BearerTokens(config.tokens)

    app = Flask(__name__)
    app.extensions["zeh_mssql"] = {"config": config, "catalog": catalog, "primary": primary}
    _json_errors(app)

    @app.before_request
    def start_clock() -> None:
        g.started = time.perf_counter()

    @app.before_request
    def authenticate() -> Response | None:
        if request.endpoint in _PUBLIC_ENDPOINTS or tokens.accepts(
            request.headers.get("Authorization")
        ):
            return None
        response = error_response(401, "a valid bearer token is required")
        challenge = 'Bearer realm="zeh-mssql"'
        if request.headers.get("Authorization"):
            challenge += ', error="invalid_token"'
        response.headers["WWW-Authenticate"] = challenge
        return response

    @app.after_request
    def log_request(response: Response) -> Response:
        if not g.get("handled_by_feed"):  # the feed's blueprint logs its own requests
            _log_request(response.status_code, feed=(request.view_args or {}).get("feed"))
        return response

    @app.get("/healthz")
    def healthz() -> Response:
        try:
            ping(primary)
        except SourceError as exc:
            _log.warning("health check failed: %s", exc)
            response = _json({"status": "unavailable"}, 503)
            response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
            return response
        return _json({"status": "ok"}, 200)

    @app.get("/feeds")
    def feeds() -> Response:
        try:
            served = catalog.all()
        except SourceError as exc:
            return _source_error_response(exc)
        return _json(
            {
                "feeds": [
                    {
                        "name": name,
                        "partition_count": source.partition_count,
                        "path": config.feed_path(name),
                    }
                    for name, source in served.items()
                ]
            },
            200,
        )

    def serve_feed(feed: str, rest: str = "") -> Response | WsgiApp:
        try:
            source = catalog.get(feed)
        except SourceError as exc:
            return _source_error_response(exc)
        if source is None:
            return error_response(404, f"no feed named {feed!r} is served here")
        g.handled_by_feed = True
        # Flask runs a returned WSGI app against this request's environ.
        return feed_apps.get(feed, source)

    rule = config.path_template.replace(FEED_PLACEHOLDER, "<feed>")
    app.add_url_rule(rule, "feed", serve_feed, methods=["GET"])
    app.add_url_rule(rule.rstrip("/") + "/<path:rest>", "feed_below", serve_feed, methods=["GET"])

    _log.info(
        "serving feeds at %s from %s",
        config.path_template,
        db.redact_dsn(config.dsn),
        extra={
            "feeds": list(config.feeds) if config.feeds is not None else "all registered",
            "replica": config.replica_dsn is not None,
            "authentication": tokens.enabled,
        },
    )
    return app


class _FeedApps:
    """One small Flask app per served feed, made on first use and kept per process."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self._lock = threading.Lock()
        self._apps: dict[str, tuple[EventSource, Flask]] = {}

    def get(self, name: str, source: EventSource) -> Flask:
        with self._lock:
            known = self._apps.get(name)
            # A feed re-registered with another partition count is a new source object.
            if known is not None and known[0] is source:
                return known[1]
            app = Flask(__name__)
            _json_errors(app)
            app.register_blueprint(
                create_blueprint(
                    source,
                    self._config.feed_path(name),
                    name=_blueprint_name(name),
                    default_page_size=self._config.default_page_size,
                    max_page_size=self._config.max_page_size,
                    max_wait=self._config.max_wait,
                    poll_max_interval=self._config.poll_ceiling_ms / 1000,
                )
            )
            self._apps[name] = (source, app)
            return app


def _pool(config: Config, dsn: str, name: str) -> ConnectionPool:
    connect = partial(
        db.connect, dsn, timeout=config.login_timeout, query_timeout=config.query_timeout
    )
    return ConnectionPool(
        connect, size=config.pool_size, acquire_timeout=config.query_timeout, name=name
    )


def _blueprint_name(feed: str) -> str:
    # Blueprint names may not contain dots; the sub-app holds just this one.
    return feed.replace(".", "_")


def _json(body: Any, status: int) -> Response:
    return Response(orjson.dumps(body), status=status, mimetype="application/json")


def _source_error_response(exc: SourceError) -> Response:
    if isinstance(exc, SourceUnavailable):
        _log.warning("feed registry unavailable: %s", exc)
        response = error_response(503, "the event store is unavailable; retry later")
        response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return response
    _log.error("reading the feed registry failed: %s", exc)
    return error_response(500, "internal server error")


def _json_errors(app: Flask) -> None:
    """Answer every HTTP error (404, 405, ...) with a JSON body like the feed's errors."""

    def handle(exc: HTTPException) -> Response:
        return error_response(exc.code or 500, exc.description or exc.name, exc)

    app.register_error_handler(HTTPException, handle)


def _log_request(status: int, *, feed: str | None) -> None:
    duration_ms = round((time.perf_counter() - g.get("started", time.perf_counter())) * 1000, 1)
    # Health checks come every few seconds from orchestrators: only failures matter.
    level = logging.DEBUG if request.path == "/healthz" and status == 200 else logging.INFO
    request_log.log(
        level,
        "%s %s status=%d duration_ms=%.1f",
        request.method,
        request.path,
        status,
        duration_ms,
        extra={
            "method": request.method,
            "path": request.path,
            "feed": feed,
            "status": status,
            "duration_ms": duration_ms,
        },
    )
