"""Flask glue: serve an ``EventSource`` at a path with the ZeroEventHub protocol."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from flask import Blueprint, Request, Response, request
from werkzeug.exceptions import HTTPException

from zeh_mssql import protocol
from zeh_mssql.source import EventSource, Page, SourceUnavailable

Authorizer = Callable[[Request], None]
"""Called with each request before anything else; raises 401/403 (werkzeug) to refuse it."""

request_log = logging.getLogger("zeh_mssql.requests")
_log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 1


@dataclass
class FeedEndpoint:
    """Answers ZeroEventHub requests for one source; Flask-bound, but not tied to a route."""

    source: EventSource
    name: str
    authorize: Authorizer | None = None
    default_page_size: int = 1000
    max_page_size: int = 10000

    def __post_init__(self) -> None:
        if not 1 <= self.default_page_size <= self.max_page_size:
            raise ValueError(
                "page sizes must satisfy 1 <= default_page_size <= max_page_size, got "
                f"{self.default_page_size} and {self.max_page_size}"
            )

    def __call__(self) -> Response:
        """Serve the current Flask request."""
        started = time.perf_counter()
        partitions: list[int] = []
        response, events = self._respond(partitions)
        request_log.info(
            "feed=%s status=%d partitions=%s events=%d duration_ms=%.1f",
            self.name,
            response.status_code,
            ",".join(map(str, partitions)),
            events,
            (time.perf_counter() - started) * 1000,
            extra={
                "feed": self.name,
                "status": response.status_code,
                "partitions": partitions,
                "events": events,
                "duration_ms": round((time.perf_counter() - started) * 1000, 1),
            },
        )
        return response

    def _respond(self, partitions: list[int]) -> tuple[Response, int]:
        if self.authorize is not None:
            try:
                self.authorize(request)
            except HTTPException as refused:
                status = refused.code or 403
                return error_response(status, refused.description or "refused", refused), 0
        try:
            feed_request = protocol.parse_feed_request(
                request.args.items(multi=True), self.source.partition_count
            )
            partitions.extend(c.partition for c in feed_request.cursors)
            limits = protocol.page_limits(
                feed_request.page_size_hint,
                len(feed_request.cursors),
                default=self.default_page_size,
                maximum=self.max_page_size,
            )
            # Every page is fetched before the first byte goes out, so a failure
            # becomes a clean error response instead of a truncated 200.
            pages: list[tuple[int, Page]] = [
                (c.partition, self.source.fetch(c.partition, c.cursor, limit))
                for c, limit in zip(feed_request.cursors, limits, strict=True)
            ]
        except protocol.ProtocolError as exc:
            return error_response(400, str(exc)), 0
        except SourceUnavailable:
            _log.warning("feed %s: event source unavailable", self.name, exc_info=True)
            response = error_response(503, "the event store is unavailable; retry later")
            response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
            return response, 0
        except Exception:
            _log.exception("feed %s: request failed", self.name)
            return error_response(500, "internal server error"), 0
        body = protocol.encode_response(pages, feed_request.headers)
        events = sum(len(page.events) for _, page in pages)
        return Response(body, status=200, mimetype=protocol.NDJSON), events


def error_response(status: int, message: str, cause: HTTPException | None = None) -> Response:
    """A JSON error body with ``status``; keeps headers such as ``WWW-Authenticate``."""
    response = Response(protocol.encode_error(message), status=status, mimetype="application/json")
    if cause is not None:
        for name, value in cause.get_headers():
            if name.lower() != "content-type":
                response.headers[name] = value
    return response


def create_blueprint(
    source: EventSource,
    path: str,
    *,
    name: str | None = None,
    authorize: Authorizer | None = None,
    default_page_size: int = 1000,
    max_page_size: int = 10000,
) -> Blueprint:
    """A blueprint serving ``source`` at ``path`` (GET) with the ZeroEventHub v1 protocol.

    ``name`` names the blueprint (default: derived from ``path``); blueprints of
    several feeds can be registered on one app as long as names and paths differ.
    ``pagesizehint`` is the total for a response, split over the requested
    partitions; without it ``default_page_size`` applies; both are capped at
    ``max_page_size``.
    """
    if not path.startswith("/"):
        raise ValueError(f"path must start with '/', got {path!r}")
    blueprint_name = name or (re.sub(r"[^A-Za-z0-9_]+", "_", path).strip("_") or "feed")
    endpoint = FeedEndpoint(
        source,
        name=blueprint_name,
        authorize=authorize,
        default_page_size=default_page_size,
        max_page_size=max_page_size,
    )
    blueprint = Blueprint(blueprint_name, __name__)
    blueprint.add_url_rule(path, endpoint="feed", view_func=endpoint, methods=["GET"])
    return blueprint
