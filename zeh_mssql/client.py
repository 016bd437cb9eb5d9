"""A ZeroEventHub client: fetch a page of events and stream it into a receiver.

The client mirrors the reference Go client. A request names one cursor per
partition wanted; the server answers with NDJSON lines, for each partition its
events and then one checkpoint (the cursor to continue from). Receivers turn
those lines into something useful; :class:`EventPage` and
:class:`TypedEventPage` collect one page in memory.

A page never reports a cursor beyond the last checkpoint actually received, and
never lists an event whose checkpoint did not arrive, so a consumer that stores
``page.cursors`` together with the effects of ``page.events`` cannot skip or
repeat events even when a response is cut off.

FeedAPI v2 (the successor protocol) is read with :meth:`Client.discover` and
:meth:`Client.fetch_partition`, into the same receivers; both protocols can
long-poll (``wait``): the server holds a request until events arrive.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar, cast
from urllib.parse import urlsplit

import orjson
import requests

from zeh_mssql.protocol import ALL_HEADERS, NDJSON

__all__ = [
    "ALL_HEADERS",
    "DEFAULT_PAGE_SIZE",
    "DEFAULT_TIMEOUT",
    "V1_TOKEN",
    "Client",
    "Cursor",
    "EventDecodeError",
    "EventPage",
    "EventReceiver",
    "FeedEvent",
    "FeedInfo",
    "FetchError",
    "FetchTimeout",
    "HTTPStatusError",
    "IncompleteResponse",
    "MalformedResponse",
    "RediscoveryNeeded",
    "RequestProcessor",
    "TransportError",
    "TypedEventPage",
    "bearer_token",
]

T = TypeVar("T")

DEFAULT_PAGE_SIZE = 0
"""A page size hint of 0 is not sent: the server picks its default."""
DEFAULT_TIMEOUT = 30.0
"""Seconds to wait for the connection and for each read of the response."""
V1_TOKEN = "_v1"
"""The token :meth:`Client.discover` reports for a server that only speaks ZeroEventHub v1."""

_RETRYABLE_STATUSES = frozenset({429, 502, 503, 504})
_ERROR_BODY_LIMIT = 64 * 1024

RequestProcessor = Callable[[requests.PreparedRequest], None]
"""Called with each outgoing request before it is sent; may change its ``headers``."""


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where to read a partition from: ``_first``, ``_last`` or a cursor the server sent."""

    partition: int
    cursor: str


@dataclass(frozen=True, slots=True)
class FeedInfo:
    """What FeedAPI v2 discovery says about a feed: pass ``token`` to every fetch."""

    token: str
    partitions: tuple[int, ...]
    exactly_once: bool = False


@dataclass(frozen=True, slots=True)
class FeedEvent(Generic[T]):
    """One event of a page, its data decoded."""

    partition: int
    headers: Mapping[str, str]
    """The headers asked for that the event has; empty when none were asked for."""
    data: T


class EventReceiver(Protocol):
    """Takes the lines of a response, in order, as :meth:`Client.fetch_events` reads them."""

    def event(self, partition: int, headers: Mapping[str, str], data: Any) -> None:
        """One event; ``data`` is the decoded JSON value."""

    def checkpoint(self, partition: int, cursor: str) -> None:
        """The cursor to continue ``partition`` from, after the events before it."""


class FetchError(Exception):
    """Fetching a page failed; :attr:`retryable` tells whether trying again may help."""

    @property
    def retryable(self) -> bool:
        """True when the same request may succeed later (the server or the network failed)."""
        return False


class HTTPStatusError(FetchError):
    """The server answered with a status outside 2xx."""

    def __init__(self, status: int, body: str, retry_after: float | None = None) -> None:
        self.status = status
        self.body = body
        self.retry_after = retry_after
        """Seconds from the ``Retry-After`` header, when the server sent a number."""
        snippet = " ".join(_error_message(body).split())[:300]
        super().__init__(f"HTTP {status}: {snippet}" if snippet else f"HTTP {status}")

    @property
    def retryable(self) -> bool:
        """True for overload and unavailability (429, 502, 503, 504), not for bad requests."""
        return self.status in _RETRYABLE_STATUSES


class MalformedResponse(FetchError):
    """A response line is not a valid ZeroEventHub event or checkpoint."""

    def __init__(self, line_number: int, reason: str) -> None:
        self.line_number = line_number
        self.reason = reason
        super().__init__(f"malformed response line {line_number}: {reason}")


class IncompleteResponse(FetchError):
    """The response ended before every requested partition's checkpoint arrived."""

    @property
    def retryable(self) -> bool:
        return True


class TransportError(FetchError):
    """The server could not be reached, or the connection failed."""

    @property
    def retryable(self) -> bool:
        return True


class FetchTimeout(TransportError):
    """Connecting, or waiting for the next bytes of the response, took longer than the timeout."""


class RediscoveryNeeded(FetchError):
    """409 Conflict: the feed's token changed; call :meth:`Client.discover` again.

    The partitions may have changed with it, so a consumer restarts from discovery.
    """


class EventDecodeError(FetchError):
    """An event's data could not be decoded into the page's type."""

    def __init__(self, partition: int, reason: str) -> None:
        self.partition = partition
        super().__init__(f"cannot decode an event of partition {partition}: {reason}")


def bearer_token(token: str) -> RequestProcessor:
    """A request processor that sends ``Authorization: Bearer <token>``."""

    def authorize(request: requests.PreparedRequest) -> None:
        request.headers["Authorization"] = f"Bearer {token}"

    return authorize


class Client:
    """A client of one ZeroEventHub v1 feed.

    ``url`` is the full URL of the feed endpoint; nothing is appended to it.
    ``partition_count`` is the feed's documented partition count, sent as the
    ``n`` handshake. ``timeout`` (seconds, or a ``(connect, read)`` pair)
    bounds connecting and each wait for bytes of a response. Without
    ``session`` the client makes its own ``requests.Session``.
    """

    def __init__(
        self,
        url: str,
        partition_count: int,
        *,
        session: requests.Session | None = None,
        timeout: float | tuple[float, float] = DEFAULT_TIMEOUT,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"the feed URL must be an absolute http(s) URL, not {url!r}")
        if partition_count < 1:
            raise ValueError(f"partition_count must be at least 1, not {partition_count}")
        self._url = url
        self._partition_count = partition_count
        self._owns_session = session is None
        self._session = session if session is not None else requests.Session()
        self._timeout = timeout
        self._processors: tuple[RequestProcessor, ...] = ()

    @property
    def url(self) -> str:
        """The feed URL requests go to."""
        return self._url

    @property
    def partition_count(self) -> int:
        """The partition count sent as the ``n`` handshake."""
        return self._partition_count

    def with_request_processor(self, processor: RequestProcessor) -> Client:
        """A copy of this client that also runs ``processor`` on each request.

        Processors run in the order they were added, after the request is
        prepared and before it is sent, e.g. to set an ``Authorization`` header.
        This client is left unchanged; both share the session.
        """
        derived = copy.copy(self)
        derived._owns_session = False
        derived._processors = (*self._processors, processor)
        return derived

    def fetch_events(
        self,
        cursors: Sequence[Cursor],
        page_size_hint: int,
        receiver: EventReceiver,
        headers: Sequence[str] = (),
        *,
        wait: float = 0.0,
    ) -> None:
        """Fetch one page: the events after ``cursors``, streamed into ``receiver``.

        ``page_size_hint`` is the total number of events wanted (0: the server's
        default). ``headers`` names the event headers to receive, or
        ``[ALL_HEADERS]``. With ``wait`` (seconds) a server that finds no events
        holds the request until some arrive or the wait runs out (it may cap
        the wait); the read timeout is extended by ``wait``. Raises
        :class:`HTTPStatusError` for a non-2xx answer, :class:`MalformedResponse`
        for a line that is not an event or checkpoint,
        :class:`IncompleteResponse` when the response ends before a requested
        partition's checkpoint, :class:`TransportError` (:class:`FetchTimeout`)
        when the connection fails; errors raised by the receiver propagate.
        """
        params = self._query(cursors, page_size_hint, headers)
        params += _wait_param(wait)
        response = self._send(params, wait=wait)
        try:
            self._check_status(response)
            _stream_lines(_response_lines(response), {c.partition for c in cursors}, receiver)
        finally:
            response.close()

    def discover(self) -> FeedInfo:
        """Ask the feed for its FeedAPI v2 discovery document (a GET without parameters).

        A server that only speaks ZeroEventHub v1 answers such a request with
        400; then the v1 layout of ``partition_count`` partitions is returned,
        with token :data:`V1_TOKEN`, so :meth:`fetch_partition` reads either.
        """
        response = self._send([])
        try:
            if response.status_code == 400:
                return FeedInfo(V1_TOKEN, tuple(range(self._partition_count)))
            self._check_status(response)
            try:
                body = response.content
            except requests.RequestException as exc:
                raise _transport_error(exc) from exc
        finally:
            response.close()
        return _feed_info(body)

    def fetch_partition(
        self,
        token: str,
        partition: int,
        cursor: str,
        page_size_hint: int,
        receiver: EventReceiver,
        *,
        event_types: Sequence[str] = (),
        skip_event_types: Sequence[str] = (),
        wait: float = 0.0,
    ) -> None:
        """Fetch one page of one partition with FeedAPI v2, streamed into ``receiver``.

        ``token`` comes from :meth:`discover`. Events arrive as
        ``receiver.event(partition, {}, data)`` (v2 has no headers) and
        checkpoints as ``receiver.checkpoint(partition, cursor)``.
        ``event_types`` keeps only events of those types, ``skip_event_types``
        drops them (case-insensitively, on the server; give one of them); the
        checkpoint still moves past events filtered out. ``wait`` long-polls as
        in :meth:`fetch_events`. Raises :class:`RediscoveryNeeded` when the
        token is stale, otherwise as :meth:`fetch_events` does.
        """
        if event_types and skip_event_types:
            raise ValueError("give event_types or skip_event_types, not both")
        if token == V1_TOKEN:
            if event_types or skip_event_types:
                raise ValueError("event type filters need a FeedAPI v2 server")
            self.fetch_events([Cursor(partition, cursor)], page_size_hint, receiver, wait=wait)
            return
        params = self._query_v2(token, partition, cursor, page_size_hint)
        for name, types in (("event-types", event_types), ("skip-event-types", skip_event_types)):
            if types:
                params.append((name, _event_types(types)))
        params += _wait_param(wait)
        response = self._send(params, url=self._url.rstrip("/") + "/events", wait=wait)
        try:
            if response.status_code == 409:
                raise RediscoveryNeeded(
                    "the feed's token changed: discover the feed again (HTTP 409)"
                )
            self._check_status(response)
            _stream_partition_lines(_response_lines(response), partition, receiver)
        finally:
            response.close()

    def close(self) -> None:
        """Close the session this client made (shared with clients derived from it)."""
        if self._owns_session:
            self._session.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _query(
        self, cursors: Sequence[Cursor], page_size_hint: int, headers: Sequence[str]
    ) -> list[tuple[str, str]]:
        """The query parameters, formed as the reference clients form them."""
        if not cursors:
            raise ValueError("at least one cursor is needed")
        seen: set[int] = set()
        for c in cursors:
            if not 0 <= c.partition < self._partition_count:
                raise ValueError(
                    f"partition {c.partition} is outside 0..{self._partition_count - 1}"
                )
            if c.partition in seen:
                raise ValueError(f"partition {c.partition} is given more than one cursor")
            if not c.cursor:
                raise ValueError(f"the cursor of partition {c.partition} is empty")
            seen.add(c.partition)
        if page_size_hint < 0:
            raise ValueError(f"page_size_hint must not be negative, not {page_size_hint}")
        for name in headers:
            if not name or "," in name:
                raise ValueError(f"bad header name {name!r}: names are non-empty, without commas")
        params = [("n", str(self._partition_count))]
        params += [(f"cursor{c.partition}", c.cursor) for c in cursors]
        if page_size_hint != DEFAULT_PAGE_SIZE:
            params.append(("pagesizehint", str(page_size_hint)))
        if headers:
            params.append(("headers", ",".join(headers)))
        return params

    def _query_v2(
        self, token: str, partition: int, cursor: str, page_size_hint: int
    ) -> list[tuple[str, str]]:
        if not token:
            raise ValueError("the token is empty: take it from discover()")
        if partition < 0:
            raise ValueError(f"partition must not be negative, not {partition}")
        if not cursor:
            raise ValueError(f"the cursor of partition {partition} is empty")
        if page_size_hint < 0:
            raise ValueError(f"page_size_hint must not be negative, not {page_size_hint}")
        params = [("token", token), ("partition", str(partition)), ("cursor", cursor)]
        if page_size_hint != DEFAULT_PAGE_SIZE:
            params.append(("pagesizehint", str(page_size_hint)))
        return params

    def _send(
        self, params: list[tuple[str, str]], *, url: str | None = None, wait: float = 0.0
    ) -> requests.Response:
        request = requests.Request(
            "GET", url or self._url, params=params, headers={"Accept": NDJSON}
        )
        prepared = self._session.prepare_request(request)
        for processor in self._processors:
            processor(prepared)
        settings = self._session.merge_environment_settings(prepared.url, {}, True, None, None)
        try:
            return self._session.send(prepared, timeout=self._timeout_with(wait), **settings)
        except requests.RequestException as exc:
            raise _transport_error(exc) from exc

    def _timeout_with(self, wait: float) -> float | tuple[float, float]:
        """The timeout, its read part extended by ``wait``: the server sends nothing meanwhile."""
        if wait <= 0:
            return self._timeout
        if isinstance(self._timeout, tuple):
            connect, read = self._timeout
            return (connect, read + wait)
        return (self._timeout, self._timeout + wait)

    @staticmethod
    def _check_status(response: requests.Response) -> None:
        if 200 <= response.status_code < 300:
            return
        try:
            raw = response.raw.read(_ERROR_BODY_LIMIT, decode_content=True)
        except Exception:  # the status is the error; a body we cannot read adds nothing
            raw = b""
        body = raw.decode(response.encoding or "utf-8", errors="replace")
        raise HTTPStatusError(
            response.status_code, body, _retry_after(response.headers.get("Retry-After"))
        )


class TypedEventPage(Generic[T]):
    """Collects one page, decoding each event's data into ``T``.

    ``decode`` is a dataclass (built from the data object's fields; unknown
    fields are ignored, as Go's ``encoding/json`` does) or any callable taking
    the decoded JSON value. An event is listed in :attr:`events` only once its
    partition's checkpoint has arrived, so ``events`` and ``cursors`` always
    agree. Call :meth:`clear` before reusing the page for the next fetch.
    """

    def __init__(self, decode: type[T] | Callable[[Any], T]) -> None:
        self._decode = _decoder(decode)
        self.events: list[FeedEvent[T]] = []
        """Events covered by a received checkpoint, in the order the server sent them."""
        self.cursors: dict[int, str] = {}
        """The latest checkpoint received per partition."""
        self._pending: dict[int, list[FeedEvent[T]]] = {}

    def event(self, partition: int, headers: Mapping[str, str], data: Any) -> None:
        """Decode and hold an event until its partition's checkpoint arrives."""
        try:
            value = self._decode(data)
        except Exception as exc:
            raise EventDecodeError(partition, f"{type(exc).__name__}: {exc}") from exc
        self._pending.setdefault(partition, []).append(FeedEvent(partition, headers, value))

    def checkpoint(self, partition: int, cursor: str) -> None:
        """Record the cursor and release the partition's events received before it."""
        self.events.extend(self._pending.pop(partition, ()))
        self.cursors[partition] = cursor

    def clear(self) -> None:
        """Forget all events and cursors, for reuse in a loop."""
        self.events.clear()
        self.cursors.clear()
        self._pending.clear()


class EventPage(TypedEventPage[Any]):
    """Collects one page; each event's data is the decoded JSON value."""

    def __init__(self) -> None:
        super().__init__(_identity)


def _identity(data: Any) -> Any:
    return data


def _decoder(decode: type[T] | Callable[[Any], T]) -> Callable[[Any], T]:
    if isinstance(decode, type) and dataclasses.is_dataclass(decode):
        names = frozenset(f.name for f in dataclasses.fields(decode) if f.init)
        cls = cast("type[T]", decode)

        def from_object(data: Any) -> T:
            if not isinstance(data, dict):
                raise TypeError(f"{cls.__name__} needs a JSON object, got {type(data).__name__}")
            return cls(**{k: v for k, v in data.items() if k in names})

        return from_object
    return decode


def _json_objects(lines: Iterator[bytes]) -> Iterator[tuple[int, dict[str, Any]]]:
    """Each non-blank line parsed as a JSON object, with its line number (from 1)."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise MalformedResponse(number, f"not JSON ({exc})") from exc
        if not isinstance(obj, dict):
            raise MalformedResponse(number, "not a JSON object")
        yield number, obj


def _cursor(checkpoint: dict[str, Any], number: int) -> str:
    """A checkpoint line's ``cursor``, which must be a non-empty string."""
    cursor = checkpoint["cursor"]
    if not isinstance(cursor, str) or not cursor:
        raise MalformedResponse(number, "'cursor' is not a non-empty string")
    return cursor


def _stream_lines(lines: Iterator[bytes], requested: set[int], receiver: EventReceiver) -> None:
    """Check each line against the protocol and hand it to the receiver."""
    unconfirmed: dict[int, int] = {}
    checkpointed: set[int] = set()
    for number, obj in _json_objects(lines):
        partition = obj.get("partition")
        if type(partition) is not int:
            raise MalformedResponse(number, "no integer 'partition'")
        if partition not in requested:
            raise MalformedResponse(number, f"partition {partition} was not requested")
        if "cursor" in obj:
            receiver.checkpoint(partition, _cursor(obj, number))
            unconfirmed.pop(partition, None)
            checkpointed.add(partition)
        elif "data" in obj:
            receiver.event(partition, _headers(obj.get("headers"), number), obj["data"])
            unconfirmed[partition] = unconfirmed.get(partition, 0) + 1
        else:
            raise MalformedResponse(number, "neither an event ('data') nor a checkpoint ('cursor')")
    if unconfirmed:
        partition, count = next(iter(unconfirmed.items()))
        raise IncompleteResponse(
            f"the response ended after {count} event(s) of partition {partition} "
            "without their checkpoint"
        )
    missing = sorted(requested - checkpointed)
    if missing:
        raise IncompleteResponse(
            f"the response ended without a checkpoint for partition(s) {missing}"
        )


def _stream_partition_lines(
    lines: Iterator[bytes], partition: int, receiver: EventReceiver
) -> None:
    """Check each FeedAPI v2 line and hand it to the receiver as ``partition``'s."""
    unconfirmed = 0
    checkpointed = False
    for number, obj in _json_objects(lines):
        if "cursor" in obj:
            receiver.checkpoint(partition, _cursor(obj, number))
            unconfirmed = 0
            checkpointed = True
        elif "data" in obj:
            receiver.event(partition, {}, obj["data"])
            unconfirmed += 1
        # The spec asks clients to ignore lines that are neither: commands added later.
    if unconfirmed:
        raise IncompleteResponse(
            f"the response ended after {unconfirmed} event(s) without their checkpoint"
        )
    if not checkpointed:
        raise IncompleteResponse("the response ended without a checkpoint")


def _feed_info(body: bytes) -> FeedInfo:
    """Validate a discovery document."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise MalformedResponse(1, f"the discovery document is not JSON ({exc})") from exc
    if not isinstance(document, dict):
        raise MalformedResponse(1, "the discovery document is not a JSON object")
    token, partitions = document.get("token"), document.get("partitions")
    if not isinstance(token, str) or not token:
        raise MalformedResponse(1, "the discovery document has no 'token' string")
    if not isinstance(partitions, list):
        raise MalformedResponse(1, "the discovery document has no 'partitions' list")
    ids: list[int] = []
    for entry in partitions:
        pid = entry.get("id") if isinstance(entry, dict) else None
        # Ids are strings holding integers (the spec allows 0..32767).
        if not isinstance(pid, str) or not pid.isascii() or not pid.isdigit():
            raise MalformedResponse(1, f"partition id {pid!r} is not a string of digits")
        ids.append(int(pid))
    return FeedInfo(token, tuple(ids), document.get("exactlyOnce") is True)


def _event_types(types: Sequence[str]) -> str:
    for name in types:
        if not name or ";" in name:
            raise ValueError(f"bad event type {name!r}: types are non-empty, without ';'")
    return ";".join(types)


def _wait_param(wait: float) -> list[tuple[str, str]]:
    """The ``wait`` parameter as servers parse it: plain decimal seconds, milliseconds at most."""
    if wait < 0:
        raise ValueError(f"wait must not be negative, not {wait}")
    if wait == 0:
        return []
    text = f"{wait:.3f}".rstrip("0").rstrip(".")
    return [("wait", text)] if text != "0" else []


def _headers(value: Any, number: int) -> Mapping[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise MalformedResponse(number, "'headers' is not an object of strings")
    return value


def _response_lines(response: requests.Response) -> Iterator[bytes]:
    """The body split on newlines as it arrives; a cut-off last line is an incomplete response."""
    buffer = b""
    chunks = response.iter_content(chunk_size=64 * 1024)
    while True:
        try:
            chunk = next(chunks, None)
        except requests.RequestException as exc:
            raise _transport_error(exc) from exc
        if chunk is None:
            break
        buffer += chunk
        *complete, buffer = buffer.split(b"\n")
        yield from complete
    if buffer.strip():
        try:
            orjson.loads(buffer)
        except orjson.JSONDecodeError:
            raise IncompleteResponse("the response ended in the middle of a line") from None
        yield buffer


def _transport_error(exc: requests.RequestException) -> FetchError:
    if _caused_by_timeout(exc):
        return FetchTimeout(f"timed out: {exc}")
    if isinstance(exc, requests.exceptions.ChunkedEncodingError):
        return IncompleteResponse(f"the connection broke in the middle of the response: {exc}")
    return TransportError(f"connection failed: {exc}")


def _caused_by_timeout(exc: BaseException) -> bool:
    """True when a socket timeout is anywhere in the exception's chain.

    requests reports a read timeout in the middle of a streamed body as a
    ``ConnectionError`` wrapping urllib3's error, so the type alone is not enough.
    """
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, requests.Timeout | TimeoutError):
            return True
        todo += [a for a in current.args if isinstance(a, BaseException)]
        todo += [e for e in (current.__cause__, current.__context__) if e is not None]
    return False


def _error_message(body: str) -> str:
    """The ``error`` of a JSON error body (what our server sends), else the body itself."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), str):
        return str(parsed["error"])
    return body


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None  # an HTTP date: rare for 503s, and the caller's backoff still applies
    return seconds if seconds >= 0 else None
