"""The ZeroEventHub v1 wire protocol: request validation, NDJSON encoding, cursor codec.

Knows nothing of Flask or SQL: it turns query parameters into a ``FeedRequest``
and pages of events into response bytes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import compress, count
from operator import not_
from typing import Final, Literal, cast

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


def _single_line(json_text: str) -> str:
    # A raw line break may only sit between JSON tokens; re-serialising drops it
    # so one event stays one line. Everything else is embedded untouched.
    if "\n" in json_text or "\r" in json_text:
        return orjson.dumps(orjson.loads(json_text)).decode()
    return json_text


def compact_json(json_text: str) -> bytes:
    """JSON text as bytes to embed in an NDJSON line, compacted only if it holds a line break."""
    return _single_line(json_text).encode()


def _headers_text(headers: str | None, selection: HeaderSelection) -> str:
    if headers is None:
        return "{}"
    if selection == ALL_HEADERS:
        return _single_line(headers)
    assert selection is not None
    stored: dict[str, str] = orjson.loads(headers)
    return orjson.dumps({k: v for k, v in stored.items() if k in selection}).decode()


def _all_headers(texts: list[str | None]) -> list[str]:
    """The stored headers of events, each ready to embed; ``{}`` where there are none."""
    # Headers are short: joining them and looking once is cheaper than looking
    # in each. The join also finds a None (TypeError) without a loop in Python.
    try:
        ready = "\n" not in "".join(cast(list[str], texts))
    except TypeError:
        ready = False
    if ready:
        return cast(list[str], texts)
    return [
        text if text is not None and "\n" not in text else _headers_text(text, ALL_HEADERS)
        for text in texts
    ]


def _event_pieces(partition: int, events: Sequence[Event], headers: HeaderSelection) -> list[str]:
    """The text of ``events``' lines as pieces that join into them.

    Built with slice assignment, so the per-event work in Python is reading the
    attributes and looking for a newline; the copying happens in one join. Only
    ``\n`` is looked for here: a ``\r`` is rare enough to be looked for in the
    joined text (``_encode_pieces``), where the search runs in cache.
    """
    count = len(events)
    data = [
        text if "\n" not in text else _single_line(text)
        for text in [event.data for event in events]
    ]
    if headers is None:
        # {"partition":P,"data":D0}\n{"partition":P,"data":D1}\n ...
        start = f'{{"partition":{partition},"data":'
        pieces = ["}\n" + start] * (2 * count + 1)
        pieces[0] = start
        pieces[1::2] = data
    else:
        # {"partition":P,"headers":H0,"data":D0}\n{"partition":P,"headers":H1,...
        start = f'{{"partition":{partition},"headers":'
        pieces = ["}\n" + start] * (4 * count + 1)
        pieces[0] = start
        if headers == ALL_HEADERS:
            pieces[1::4] = _all_headers([event.headers for event in events])
        else:
            pieces[1::4] = [_headers_text(event.headers, headers) for event in events]
        pieces[2::4] = [',"data":'] * count
        pieces[3::4] = data
    pieces[-1] = "}\n"
    return pieces


def _encode_pieces(pieces: list[str]) -> bytes:
    """UTF-8 of the joined pieces, with any stored JSON holding a ``\r`` compacted."""
    text = "".join(pieces)
    if "\r" in text:
        # Only stored JSON can hold one; ours never does.
        pieces = [piece if "\r" not in piece else _single_line(piece) for piece in pieces]
        text = "".join(pieces)
    if text.isascii():  # O(1): a str knows whether it is ASCII
        return text.encode()
    return _encode_mixed(pieces)


def encode_event(partition: int, event: Event, headers: HeaderSelection) -> bytes:
    """One NDJSON event line: ``{"partition":P,"headers":{...},"data":...}``."""
    return _encode_pieces(_event_pieces(partition, (event,), headers))


def _checkpoint_text(partition: int, cursor: str) -> str:
    return orjson.dumps({"partition": partition, "cursor": cursor}).decode() + "\n"


def encode_checkpoint(partition: int, cursor: str) -> bytes:
    """One NDJSON checkpoint line: ``{"partition":P,"cursor":"..."}``."""
    return _checkpoint_text(partition, cursor).encode()


CHUNK_CHARS: Final = 64 * 1024
"""About how much text ``encode_response_chunks`` encodes at a time."""
_LINE_OVERHEAD = 48  # the partition, key names and punctuation around an event's JSON


class _Body:
    """Collects text pieces and encodes them about ``CHUNK_CHARS`` at a time.

    A page of 1,000 events of 1 KB joined and encoded whole is two fresh 1 MB
    buffers per response: the allocator maps and faults them in every time,
    and they spill the CPU cache (bench/encoding.py measured it). Chunks of
    ~64 KB come from the heap and are encoded while still in cache.
    """

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self._pieces: list[str] = []
        self._chars = 0

    def add(self, pieces: list[str], chars: int) -> None:
        self._pieces += pieces
        self._chars += chars
        if self._chars >= CHUNK_CHARS:
            self.flush()

    def flush(self) -> None:
        if not self._pieces:
            return
        self.chunks.append(_encode_pieces(self._pieces))
        self._pieces = []
        self._chars = 0


def _encode_mixed(pieces: list[str]) -> bytes:
    # One non-ASCII character makes a whole joined text wide, and encoding wide
    # text to UTF-8 goes character by character. Only the non-ASCII pieces are
    # encoded alone; the ASCII runs between them are still joined and copied.
    wide = compress(count(), map(not_, map(str.isascii, pieces)))
    out: list[bytes] = []
    start = 0
    for index in wide:
        if start < index:
            out.append("".join(pieces[start:index]).encode())
        out.append(pieces[index].encode())
        start = index + 1
    out.append("".join(pieces[start:]).encode())
    return b"".join(out)


def encode_response_chunks(
    pages: Sequence[tuple[int, Page]], headers: HeaderSelection
) -> list[bytes]:
    """The response body in chunks of about 64 KB: for each partition its events, then one
    checkpoint. A WSGI server sends the list as it is; ``b"".join`` gives the whole body."""
    body = _Body()
    for partition, page in pages:
        events = page.events
        if events:
            first = events[0]
            line = len(first.data) + len(first.headers or "") + _LINE_OVERHEAD
            step = max(1, CHUNK_CHARS // line)
            for offset in range(0, len(events), step):
                part = events[offset : offset + step]
                body.add(_event_pieces(partition, part, headers), len(part) * line)
        checkpoint = _checkpoint_text(partition, page.cursor)
        body.add([checkpoint], len(checkpoint))
    body.flush()
    return body.chunks


def encode_response(pages: Sequence[tuple[int, Page]], headers: HeaderSelection) -> bytes:
    """The whole response body: for each partition its events, then one checkpoint."""
    return b"".join(encode_response_chunks(pages, headers))


def encode_error(message: str) -> bytes:
    """A JSON error body: ``{"error": "..."}``."""
    return orjson.dumps({"error": message})
