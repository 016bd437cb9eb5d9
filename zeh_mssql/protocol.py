"""The ZeroEventHub v1 wire protocol: request validation, NDJSON encoding, cursor codec.

Knows nothing of Flask or SQL: it turns query parameters into a ``FeedRequest``
and pages of events into response bytes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Literal

import orjson
from ulid import ULID

from zeh_mssql.source import FIRST, LAST, Event, Page

ALL_HEADERS: Final = "_all"
HeaderSelection = frozenset[str] | Literal["_all"] | None
"""Which headers events carry: ``None`` no headers key, ``"_all"`` every header, else these."""

ZERO_CURSOR: Final = bytes(16)
NDJSON: Final = "application/x-ndjson"

# Crockford base32 without I, L, O, U; a first digit above 7 would overflow 128 bits.
# Only the canonical spelling is accepted, so text order and byte order agree.
_ULID_TEXT = re.compile(r"[0-7][0-9A-HJKMNP-TV-Z]{25}")
_CURSOR_PARAM = re.compile(r"cursor(0|[1-9][0-9]{0,8})")
# Seconds with at most millisecond precision; ASCII digits only, no sign, no exponent.
_WAIT = re.compile(r"[0-9]{1,6}(?:\.[0-9]{1,3})?")
_MAX_INT_DIGITS = 9


class ProtocolError(ValueError):
    """A request the protocol rejects; the message is safe to show the client (HTTP 400)."""


@dataclass(frozen=True, slots=True)
class PartitionCursor:
    """Where to continue reading one partition."""

    partition: int
    cursor: str


@dataclass(frozen=True, slots=True)
class FeedRequest:
    """A validated ZeroEventHub v1 request."""

    cursors: tuple[PartitionCursor, ...]
    """One per requested partition, in ascending partition order."""
    page_size_hint: int | None
    headers: HeaderSelection
    wait: float = 0.0
    """Seconds the client lets the server hold the request while there are no events."""


# --- cursors -----------------------------------------------------------------


def parse_cursor(value: str, *, name: str = "cursor") -> str:
    """Validate a cursor value: ``_first``, ``_last`` or a ULID text (returned upper-cased)."""
    if value in (FIRST, LAST):
        return value
    if not value.isascii():
        raise ProtocolError(f"{name}: cursor must be ASCII")
    upper = value.upper()
    if not _ULID_TEXT.fullmatch(upper):
        raise ProtocolError(
            f"{name}: {value[:40]!r} is not a cursor (expected _first, _last "
            "or a 26-character ULID as returned in a checkpoint)"
        )
    return upper


def cursor_bytes(cursor: str) -> bytes:
    """The 16-byte position of a ULID cursor; ``_first`` is the zero position."""
    if cursor == FIRST:
        return ZERO_CURSOR
    if cursor == LAST:
        raise ValueError("_last has no position of its own; resolve it to the head first")
    return ULID.from_str(parse_cursor(cursor)).bytes


def cursor_text(position: bytes) -> str:
    """The cursor text of a 16-byte position (26 characters of Crockford base32)."""
    if len(position) != 16:
        raise ValueError(f"a position is 16 bytes, got {len(position)}")
    return str(ULID.from_bytes(position))


# --- requests ----------------------------------------------------------------


def _non_negative_int(name: str, value: str) -> int:
    text = value.strip()
    if not text.isdigit() or not text.isascii() or len(text) > _MAX_INT_DIGITS:
        raise ProtocolError(f"{name}: expected a non-negative integer, got {value[:40]!r}")
    return int(text)


def parse_wait(value: str | None) -> float:
    """Parse the ``wait`` extension: seconds to hold a request that finds no events (0 if absent).

    The server caps it by its own configuration; the protocol only checks the syntax.
    """
    if value is None:
        return 0.0
    if not _WAIT.fullmatch(value.strip()):
        raise ProtocolError(f"wait: expected a non-negative number of seconds, got {value[:40]!r}")
    return float(value)


def parse_headers(value: str | None) -> HeaderSelection:
    """Parse the ``headers`` parameter: absent, ``_all``, or comma-separated names."""
    if value is None:
        return None
    names = frozenset(name.strip() for name in value.split(",") if name.strip())
    if ALL_HEADERS in names:
        return ALL_HEADERS
    return names


def parse_feed_request(params: Iterable[tuple[str, str]], partition_count: int) -> FeedRequest:
    """Validate a v1 request's query parameters against a feed of ``partition_count``.

    ``params`` are the (name, value) pairs of the query string, repeats included.
    Parameters the protocol does not define are ignored, so extensions can add
    their own. Raises ``ProtocolError`` naming the parameter at fault.
    """
    single: dict[str, str] = {}
    for name, value in params:
        if name in single:
            raise ProtocolError(f"{name}: given more than once")
        single[name] = value

    if "n" not in single:
        raise ProtocolError("handshake error: partition count missing")
    n = single["n"].strip()
    if not n.isascii() or not n.lstrip("-").isdigit() or len(n) > _MAX_INT_DIGITS:
        raise ProtocolError(
            f"n: expected the partition count as an integer, got {single['n'][:40]!r}"
        )
    if int(n) != partition_count:
        raise ProtocolError("handshake error: partition count mismatch")

    cursors: list[PartitionCursor] = []
    for name, value in single.items():
        if not name.startswith("cursor"):
            continue
        match = _CURSOR_PARAM.fullmatch(name)
        if match is None:
            raise ProtocolError(f"{name}: not a parameter; cursors are named cursor0, cursor1, ...")
        partition = int(match.group(1))
        if partition >= partition_count:
            raise ProtocolError("partition doesn't exist")
        cursors.append(PartitionCursor(partition, parse_cursor(value, name=name)))
    if not cursors:
        raise ProtocolError("cursors are missing")
    cursors.sort(key=lambda c: c.partition)

    hint = single.get("pagesizehint")
    page_size_hint = _non_negative_int("pagesizehint", hint) if hint is not None else None

    return FeedRequest(
        cursors=tuple(cursors),
        page_size_hint=page_size_hint or None,
        headers=parse_headers(single.get("headers")),
        wait=parse_wait(single.get("wait")),
    )


def page_limits(
    page_size_hint: int | None, partitions: int, *, default: int, maximum: int
) -> list[int]:
    """Split the response's total page size over ``partitions``, each getting at least 1.

    The total is the hint (or ``default`` without one) capped at ``maximum``.
    """
    total = min(page_size_hint or default, maximum)
    base, extra = divmod(total, partitions)
    return [max(1, base + (1 if i < extra else 0)) for i in range(partitions)]


# --- responses ---------------------------------------------------------------


def compact_json(json_text: str) -> bytes:
    """JSON text as bytes to embed in an NDJSON line, compacted only if it holds a line break."""
    encoded = json_text.encode()
    # A raw line break may only sit between JSON tokens; re-serialising drops it
    # so one event stays one line. Everything else is embedded untouched.
    if b"\n" in encoded or b"\r" in encoded:
        return orjson.dumps(orjson.loads(encoded))
    return encoded


def _headers_json(headers: str | None, selection: HeaderSelection) -> bytes:
    if headers is None:
        return b"{}"
    if selection == ALL_HEADERS:
        return compact_json(headers)
    assert selection is not None
    stored: dict[str, str] = orjson.loads(headers)
    return orjson.dumps({k: v for k, v in stored.items() if k in selection})


def encode_event(partition: int, event: Event, headers: HeaderSelection) -> bytes:
    """One NDJSON event line: ``{"partition":P,"headers":{...},"data":...}``."""
    prefix = b'{"partition":%d,' % partition
    if headers is not None:
        prefix += b'"headers":' + _headers_json(event.headers, headers) + b","
    return prefix + b'"data":' + compact_json(event.data) + b"}\n"


def encode_checkpoint(partition: int, cursor: str) -> bytes:
    """One NDJSON checkpoint line: ``{"partition":P,"cursor":"..."}``."""
    return orjson.dumps({"partition": partition, "cursor": cursor}) + b"\n"


def encode_response(pages: Sequence[tuple[int, Page]], headers: HeaderSelection) -> bytes:
    """The whole response body: for each partition its events, then one checkpoint."""
    out: list[bytes] = []
    for partition, page in pages:
        out.extend(encode_event(partition, event, headers) for event in page.events)
        out.append(encode_checkpoint(partition, page.cursor))
    return b"".join(out)


def encode_error(message: str) -> bytes:
    """A JSON error body: ``{"error": "..."}``."""
    return orjson.dumps({"error": message})
