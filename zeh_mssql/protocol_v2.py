"""FeedAPI version 2, the successor of ZeroEventHub v1, served at the same path.

Negotiation: a request without query parameters asks for the discovery
document; a request carrying ``token`` is a version 2 events fetch; anything
else is a v1 request. Events are fetched one partition at a time, from
``<path>/events`` (where the reference Go library sends them) or from
``<path>`` itself with ``token``. The token names the partition layout: it
changes when the partition count changes, and a fetch with any other token is a
conflict (HTTP 409) that tells the consumer to discover again.

Knows nothing of Flask or SQL, like ``protocol``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Final, Literal

import orjson

from zeh_mssql.protocol import (
    ProtocolError,
    compact_json,
    parse_cursor,
    parse_wait,
)
from zeh_mssql.source import Page, TypeFilter

EVENTS_PATH: Final = "/events"
"""Where version 2 fetches go, relative to the feed's path."""
TOKEN: Final = "token"

_PAGE_SIZE_NAMES = ("pagesizehint", "pageSizeHint")
_EVENT_TYPES = "event-types"
_SKIP_EVENT_TYPES = "skip-event-types"
_MAX_PARTITION_DIGITS = 5  # partition ids are 16-bit in version 2
_MAX_INT_DIGITS = 9

Kind = Literal["discovery", "v1", "v2"]


class StaleToken(Exception):
    """The fetch's token is not the current one; the consumer must discover again (409)."""

    def __init__(self) -> None:
        super().__init__(
            "token: not the current token of this feed; call the discovery endpoint again"
        )


@dataclass(frozen=True, slots=True)
class EventsRequest:
    """A validated version 2 events fetch."""

    partition: int
    cursor: str
    page_size_hint: int | None
    type_filter: TypeFilter | None
    wait: float = 0.0
    """Seconds the client lets the server hold the request while there are no events."""


def negotiate(names: Collection[str]) -> Kind:
    """Which protocol a request at the feed's path speaks, from its query parameter names."""
    if not names:
        return "discovery"
    if TOKEN in names:
        return "v2"
    return "v1"


def feed_token(partition_count: int) -> str:
    """The token of a feed with ``partition_count`` partitions.

    Derived from the layout alone, so every process and host serving the feed
    hands out the same token, and it changes exactly when the layout changes.
    """
    layout = f"zeh-mssql feedapi v2; partitions 0..{partition_count - 1}"
    return hashlib.sha256(layout.encode()).hexdigest()[:20]


def encode_discovery(partition_count: int) -> bytes:
    """The discovery document: token, partitions (ids as strings) and ``exactlyOnce``."""
    document = {
        "token": feed_token(partition_count),
        "partitions": [{"id": str(p)} for p in range(partition_count)],
        "exactlyOnce": True,
    }
    return orjson.dumps(document) + b"\n"


def parse_events_request(params: Iterable[tuple[str, str]], partition_count: int) -> EventsRequest:
    """Validate a version 2 fetch's query parameters against a feed of ``partition_count``.

    The token is checked first, so a consumer holding an old layout is told to
    rediscover (``StaleToken``) rather than that its partition does not exist.
    Other faults raise ``ProtocolError`` naming the parameter. Parameters the
    protocol does not define are ignored.
    """
    single: dict[str, str] = {}
    for name, value in params:
        if name in single:
            raise ProtocolError(f"{name}: given more than once")
        single[name] = value

    token = single.get(TOKEN)
    if token is None:
        raise ProtocolError("token: missing; take it from the discovery document")
    if token != feed_token(partition_count):
        raise StaleToken()

    partition_text = single.get("partition")
    if partition_text is None:
        raise ProtocolError("partition: missing")
    text = partition_text.strip()
    if not (text.isascii() and text.isdigit() and len(text) <= _MAX_PARTITION_DIGITS):
        raise ProtocolError(f"partition: expected a partition id, got {partition_text[:40]!r}")
    partition = int(text)
    if partition >= partition_count:
        raise ProtocolError("partition doesn't exist")

    cursor_text = single.get("cursor")
    if cursor_text is None:
        raise ProtocolError("cursor: missing; start with _first or _last")
    cursor = parse_cursor(cursor_text)

    given = [name for name in _PAGE_SIZE_NAMES if name in single]
    if len(given) > 1:
        raise ProtocolError("pagesizehint: given twice (as pagesizehint and pageSizeHint)")
    hint = _page_size_hint(given[0], single[given[0]]) if given else None

    return EventsRequest(
        partition=partition,
        cursor=cursor,
        page_size_hint=hint,
        type_filter=_type_filter(single.get(_EVENT_TYPES), single.get(_SKIP_EVENT_TYPES)),
        wait=parse_wait(single.get("wait")),
    )


def _page_size_hint(name: str, value: str) -> int | None:
    text = value.strip()
    if not (text.isascii() and text.isdigit() and len(text) <= _MAX_INT_DIGITS):
        raise ProtocolError(f"{name}: expected a non-negative integer, got {value[:40]!r}")
    return int(text) or None


def _type_filter(only: str | None, skip: str | None) -> TypeFilter | None:
    if only is not None and skip is not None:
        raise ProtocolError(f"{_EVENT_TYPES} and {_SKIP_EVENT_TYPES}: give one of them, not both")
    if only is not None:
        return TypeFilter(_event_types(_EVENT_TYPES, only), exclude=False)
    if skip is not None:
        return TypeFilter(_event_types(_SKIP_EVENT_TYPES, skip), exclude=True)
    return None


def _event_types(name: str, value: str) -> frozenset[str]:
    # Matching is case-insensitive, so the filter carries lower-cased names.
    types = frozenset(t.strip().lower() for t in value.split(";") if t.strip())
    if not types:
        raise ProtocolError(f"{name}: expected event types separated by ';', got {value[:40]!r}")
    return types


def encode_events(page: Page) -> bytes:
    """A version 2 response body: ``{"data": ...}`` per event, then one ``{"cursor": ...}``.

    The checkpoint is always there, also without events, so a consumer whose
    filter skipped everything still moves forward.
    """
    lines = [b'{"data":' + compact_json(event.data) + b"}\n" for event in page.events]
    lines.append(orjson.dumps({"cursor": page.cursor}) + b"\n")
    return b"".join(lines)
