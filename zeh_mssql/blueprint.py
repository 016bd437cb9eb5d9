"""Flask glue: serve an ``EventSource`` at a path with ZeroEventHub v1 and FeedAPI v2.

At the feed's path a request without parameters gets the v2 discovery document,
one with ``token`` is a v2 fetch, anything else is v1; ``<path>/events`` serves
v2 fetches. Either protocol may long-poll with ``wait``.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from flask import Blueprint, Flask, Request, Response, request
from werkzeug.exceptions import HTTPException

from zeh_mssql import protocol, protocol_v2
from zeh_mssql.disconnect import disconnect_probe
from zeh_mssql.longpoll import DEFAULT_MAX_INTERVAL, DEFAULT_MIN_INTERVAL, HeadWatcher
from zeh_mssql.source import EventSource, Page, SourceUnavailable, TypeFilter

Authorizer = Callable[[Request], None]
"""Called with each request before anything else; raises 401/403 (werkzeug) to refuse it."""

request_log = logging.getLogger("zeh_mssql.requests")
_log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 1
DEFAULT_MAX_WAIT = 30.0


@dataclass(frozen=True, slots=True)
class _Read:
    """One partition's read in a request."""

    partition: int
    cursor: str
    limit: int
    type_filter: TypeFilter | None = None


@dataclass
class FeedEndpoint:
    """Answers ZeroEventHub requests for one source; Flask-bound, but not tied to a route.

    Call it for the feed's path (discovery, v2 with ``token``, else v1); call
    ``events`` for ``<path>/events`` (v2 only). ``max_wait`` caps a request's
    ``wait`` (seconds). While requests wait, the source's partition heads are
    polled ``poll_min_interval`` apart at first, backing off to
    ``poll_max_interval``: the most an event waits before a waiting request
    sees it.
    """

    source: EventSource
    name: str
    authorize: Authorizer | None = None
    default_page_size: int = 1000
    max_page_size: int = 10000
    max_wait: float = DEFAULT_MAX_WAIT
    poll_min_interval: float = DEFAULT_MIN_INTERVAL
    poll_max_interval: float = DEFAULT_MAX_INTERVAL
    watcher: HeadWatcher = field(init=False, repr=False)
    """Shares the polls of all requests waiting on this endpoint's source."""

    def __post_init__(self) -> None:
        if not 1 <= self.default_page_size <= self.max_page_size:
            raise ValueError(
                "page sizes must satisfy 1 <= default_page_size <= max_page_size, got "
                f"{self.default_page_size} and {self.max_page_size}"
            )
        if self.max_wait < 0:
            raise ValueError(f"max_wait must not be negative, got {self.max_wait}")
        self.watcher = HeadWatcher(
            self.source, min_interval=self.poll_min_interval, max_interval=self.poll_max_interval
        )

    def __call__(self) -> Response:
        """Serve the current Flask request at the feed's path."""
        kind = protocol_v2.negotiate(request.args.keys())
        if kind == "discovery":
            return self._serve(self._discovery)
        if kind == "v2":
            return self._serve(self._v2)
        return self._serve(self._v1)

    def events(self) -> Response:
        """Serve the current Flask request at ``<path>/events`` (FeedAPI v2 fetches)."""
        return self._serve(self._v2)

    def _serve(self, respond: Callable[[list[int]], tuple[Response, int]]) -> Response:
        started = time.perf_counter()
        partitions: list[int] = []
        response, events = self._guarded(respond, partitions)
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

    def _guarded(
        self, respond: Callable[[list[int]], tuple[Response, int]], partitions: list[int]
    ) -> tuple[Response, int]:
        if self.authorize is not None:
            try:
                self.authorize(request)
            except HTTPException as refused:
                status = refused.code or 403
                return error_response(status, refused.description or "refused", refused), 0
        try:
            return respond(partitions)
        except protocol.ProtocolError as exc:
            return error_response(400, str(exc)), 0
        except protocol_v2.StaleToken as exc:
            return error_response(409, str(exc)), 0
        except SourceUnavailable:
            _log.warning("feed %s: event source unavailable", self.name, exc_info=True)
            response = error_response(503, "the event store is unavailable; retry later")
            response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
            return response, 0
        except Exception:
            _log.exception("feed %s: request failed", self.name)
            return error_response(500, "internal server error"), 0

    def _discovery(self, partitions: list[int]) -> tuple[Response, int]:
        body = protocol_v2.encode_discovery(self.source.partition_count)
        return Response(body, status=200, mimetype="application/json"), 0

    def _v1(self, partitions: list[int]) -> tuple[Response, int]:
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
        reads = [
            _Read(c.partition, c.cursor, limit)
            for c, limit in zip(feed_request.cursors, limits, strict=True)
        ]
        pages = self._fetch(reads, feed_request.wait)
        # A list of ~64 KB chunks: the WSGI server sends them one by one, and
        # werkzeug still sets Content-Length from their sizes.
        body = protocol.encode_response_chunks(
            [(r.partition, page) for r, page in zip(reads, pages, strict=True)],
            feed_request.headers,
        )
        events = sum(len(page.events) for page in pages)
        return Response(body, status=200, mimetype=protocol.NDJSON), events

    def _v2(self, partitions: list[int]) -> tuple[Response, int]:
        events_request = protocol_v2.parse_events_request(
            request.args.items(multi=True), self.source.partition_count
        )
        partitions.append(events_request.partition)
        (limit,) = protocol.page_limits(
            events_request.page_size_hint,
            1,
            default=self.default_page_size,
            maximum=self.max_page_size,
        )
        read = _Read(
            events_request.partition, events_request.cursor, limit, events_request.type_filter
        )
        (page,) = self._fetch([read], events_request.wait)
        body = protocol_v2.encode_events(page)
        return Response(body, status=200, mimetype=protocol.NDJSON), len(page.events)

    def _fetch(self, reads: Sequence[_Read], wait: float) -> list[Page]:
        """Read every partition; while none has events, wait up to ``wait`` seconds for some.

        Every page is fetched before the first byte goes out, so a failure
        becomes a clean error response instead of a truncated 200.
        """
        wait = min(wait, self.max_wait)
        deadline = time.monotonic() + wait
        pages = [self._read(read, read.cursor) for read in reads]
        gone = disconnect_probe(request.environ) if wait > 0 else None
        while not any(page.events for page in pages):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            # A page without events carries the resolved cursor to continue from.
            cursors = {read.partition: page.cursor for read, page in zip(reads, pages, strict=True)}
            moved = self.watcher.wait(cursors, remaining, gone=gone)
            if not moved:
                break
            again = [
                self._read(read, page.cursor) if read.partition in moved else page
                for read, page in zip(reads, pages, strict=True)
            ]
            if not any(page.events for page in again) and [p.cursor for p in again] == [
                p.cursor for p in pages
            ]:
                break  # the head moved, yet no read sees past the cursor: do not spin
            pages = again
        return pages

    def _read(self, read: _Read, cursor: str) -> Page:
        return self.source.fetch(read.partition, cursor, read.limit, read.type_filter)


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
    max_wait: float = DEFAULT_MAX_WAIT,
    poll_min_interval: float = DEFAULT_MIN_INTERVAL,
    poll_max_interval: float = DEFAULT_MAX_INTERVAL,
) -> Blueprint:
    """A blueprint serving ``source`` at ``path`` (GET): ZeroEventHub v1 and FeedAPI v2.

    ``<path>`` answers v1 requests, the v2 discovery document (no parameters)
    and v2 fetches (with ``token``); ``<path>/events`` answers v2 fetches.
    ``name`` names the blueprint (default: derived from ``path``); blueprints of
    several feeds can be registered on one app as long as names and paths differ.
    ``pagesizehint`` is the total for a response, split over the requested
    partitions; without it ``default_page_size`` applies; both are capped at
    ``max_page_size``. A request's ``wait`` is capped at ``max_wait`` seconds;
    see ``FeedEndpoint`` for the poll intervals.
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
        max_wait=max_wait,
        poll_min_interval=poll_min_interval,
        poll_max_interval=poll_max_interval,
    )
    blueprint = Blueprint(blueprint_name, __name__)
    add_feed_routes(blueprint, path, endpoint)
    return blueprint


def add_feed_routes(
    scaffold: Blueprint | Flask, path: str, endpoint: FeedEndpoint, *, name: str = "feed"
) -> None:
    """Route GET ``path`` (v1, discovery, v2) and ``path/events`` (v2) to ``endpoint``.

    The Flask endpoint names are ``name`` and ``name + "_events"``.
    ``create_blueprint`` does this for a new endpoint; call it directly to keep
    a handle on the endpoint (for instance on its ``watcher``).
    """
    scaffold.add_url_rule(path, endpoint=name, view_func=endpoint, methods=["GET"])
    scaffold.add_url_rule(
        path.rstrip("/") + protocol_v2.EVENTS_PATH,
        endpoint=f"{name}_events",
        view_func=endpoint.events,
        methods=["GET"],
    )
