"""The client against a server that misbehaves: errors, broken lines, cut-off and slow answers."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from tests.misbehaving_server import Exchange, Responder, ScriptedServer, scripted_server
from zeh_mssql.client import (
    Client,
    Cursor,
    EventPage,
    FetchTimeout,
    HTTPStatusError,
    IncompleteResponse,
    MalformedResponse,
    TransportError,
)

EVENT_0A = b'{"partition":0,"data":{"n":1}}\n'
EVENT_0B = b'{"partition":0,"headers":{"h":"v"},"data":{"n":2}}\n'
CHECKPOINT_0 = b'{"partition":0,"cursor":"C0"}\n'
EVENT_1A = b'{"partition":1,"data":{"n":3}}\n'
CHECKPOINT_1 = b'{"partition":1,"cursor":"C1"}\n'
BOTH = [Cursor(0, "_first"), Cursor(1, "_first")]


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    with scripted_server() as running:
        yield running


def ok(body: bytes, **kwargs: bool) -> Responder:
    return lambda ex: ex.respond(200, body, **kwargs)


def fetch(server: ScriptedServer) -> EventPage:
    page = EventPage()
    Client(server.url, 2).fetch_events(BOTH, 0, page)
    return page


def test_request_is_formed_as_the_reference_clients_form_it(server: ScriptedServer) -> None:
    server.answer(ok(EVENT_1A + CHECKPOINT_1 + CHECKPOINT_0), ok(CHECKPOINT_0))
    page = EventPage()
    client = Client(server.url, 2)
    client.fetch_events(
        [Cursor(1, "01ARZ3NDEKTSV4RRFFQ69G5FAV"), Cursor(0, "_last")], 7, page, ["a", "b"]
    )
    client.fetch_events([Cursor(0, "_first")], 0, EventPage())

    assert server.requests[0].handler.path.startswith("/feed/v1?")
    assert server.requests[0].query == [
        ("n", "2"),
        ("cursor1", "01ARZ3NDEKTSV4RRFFQ69G5FAV"),
        ("cursor0", "_last"),
        ("pagesizehint", "7"),
        ("headers", "a,b"),
    ]
    # No page size hint and no headers: neither parameter is sent.
    assert server.requests[1].query == [("n", "2"), ("cursor0", "_first")]
    assert page.cursors == {0: "C0", 1: "C1"}
    assert [e.data for e in page.events] == [{"n": 3}]


def test_a_complete_page_with_blank_lines_and_no_final_newline(server: ScriptedServer) -> None:
    server.answer(ok(EVENT_0A + b"\n" + EVENT_0B + CHECKPOINT_0 + CHECKPOINT_1.rstrip(b"\n")))
    page = fetch(server)
    assert [(e.partition, dict(e.headers), e.data) for e in page.events] == [
        (0, {}, {"n": 1}),
        (0, {"h": "v"}, {"n": 2}),
    ]
    assert page.cursors == {0: "C0", 1: "C1"}


def test_non_2xx_raises_with_status_and_body(server: ScriptedServer) -> None:
    body = b'{"error":"handshake error: partition count mismatch"}'
    server.answer(lambda ex: ex.respond(400, body, {"Content-Type": "application/json"}))
    with pytest.raises(HTTPStatusError) as caught:
        fetch(server)
    assert caught.value.status == 400
    assert caught.value.body == body.decode()
    assert str(caught.value) == "HTTP 400: handshake error: partition count mismatch"
    assert not caught.value.retryable


def test_503_is_retryable_and_carries_retry_after(server: ScriptedServer) -> None:
    server.answer(lambda ex: ex.respond(503, b"down for a moment", {"Retry-After": "7"}))
    with pytest.raises(HTTPStatusError) as caught:
        fetch(server)
    assert (caught.value.status, caught.value.retry_after, caught.value.retryable) == (
        503,
        7.0,
        True,
    )
    assert caught.value.body == "down for a moment"


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"not json", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"data": {}}', "no integer 'partition'"),
        (b'{"partition": "0", "data": {}}', "no integer 'partition'"),
        (b'{"partition": true, "data": {}}', "no integer 'partition'"),
        (b'{"partition": 5, "data": {}}', "partition 5 was not requested"),
        (b'{"partition": 0}', "neither an event"),
        (b'{"partition": 0, "cursor": ""}', "'cursor' is not a non-empty string"),
        (b'{"partition": 0, "cursor": 12}', "'cursor' is not a non-empty string"),
        (b'{"partition": 0, "headers": {"a": 1}, "data": {}}', "'headers' is not an object"),
        (b'{"partition": 0, "headers": [], "data": {}}', "'headers' is not an object"),
    ],
)
def test_a_malformed_line_raises_and_reports_nothing_unconfirmed(
    server: ScriptedServer, line: bytes, reason: str
) -> None:
    server.answer(ok(EVENT_0A + line + b"\n" + CHECKPOINT_0 + CHECKPOINT_1))
    page = EventPage()
    with pytest.raises(MalformedResponse) as caught:
        Client(server.url, 2).fetch_events(BOTH, 0, page)
    assert caught.value.line_number == 2
    assert reason in str(caught.value)
    assert not caught.value.retryable
    # The event before the bad line never got its checkpoint: it is not on the page.
    assert page.events == []
    assert page.cursors == {}


CUT_AFTER_CHECKPOINT_0 = EVENT_0A + EVENT_0B + CHECKPOINT_0 + EVENT_1A


def close_without_length(ex: Exchange) -> None:
    ex.respond(200, CUT_AFTER_CHECKPOINT_0, length=False)


def close_before_content_length(ex: Exchange) -> None:
    full = CUT_AFTER_CHECKPOINT_0 + CHECKPOINT_1
    ex.respond(200, CUT_AFTER_CHECKPOINT_0, {"Content-Length": str(len(full))})


def close_mid_chunked(ex: Exchange) -> None:
    ex.respond(200, b"", {"Transfer-Encoding": "chunked"}, length=False)
    ex.send(b"%x\r\n%s\r\n" % (len(CUT_AFTER_CHECKPOINT_0), CUT_AFTER_CHECKPOINT_0))


def close_mid_line(ex: Exchange) -> None:
    ex.respond(200, CUT_AFTER_CHECKPOINT_0 + CHECKPOINT_1[:10], length=False)


@pytest.mark.parametrize(
    "responder",
    [close_without_length, close_before_content_length, close_mid_chunked, close_mid_line],
)
def test_connection_closed_mid_page_reports_no_cursor_beyond_the_last_checkpoint(
    server: ScriptedServer, responder: Responder
) -> None:
    server.answer(responder)
    page = EventPage()
    with pytest.raises(IncompleteResponse) as caught:
        Client(server.url, 2).fetch_events(BOTH, 0, page)
    assert caught.value.retryable
    # What arrived before the break may be lost with it (urllib3 drops a short
    # Content-Length body whole), but never is more than partition 0 reported,
    # and events are listed exactly when their checkpoint is.
    assert page.cursors in ({}, {0: "C0"})
    expected = [(0, {"n": 1}), (0, {"n": 2})] if page.cursors else []
    assert [(e.partition, e.data) for e in page.events] == expected
    if responder is not close_before_content_length:
        assert page.cursors == {0: "C0"}


def test_a_response_missing_a_partitions_checkpoint_is_incomplete(server: ScriptedServer) -> None:
    server.answer(ok(EVENT_0A + CHECKPOINT_0))
    page = EventPage()
    with pytest.raises(IncompleteResponse, match=r"without a checkpoint for partition\(s\) \[1\]"):
        Client(server.url, 2).fetch_events(BOTH, 0, page)
    assert page.cursors == {0: "C0"}


def hang_before_answering(ex: Exchange) -> None:
    ex.release.wait()


def hang_after_first_event(ex: Exchange) -> None:
    ex.respond(200, b"", {"Transfer-Encoding": "chunked"}, length=False)
    ex.send(b"%x\r\n%s\r\n" % (len(EVENT_0A), EVENT_0A))
    ex.release.wait()


@pytest.mark.parametrize("responder", [hang_before_answering, hang_after_first_event])
def test_a_slow_server_times_out(server: ScriptedServer, responder: object) -> None:
    server.answer(responder)
    page = EventPage()
    with pytest.raises(FetchTimeout) as caught:
        Client(server.url, 2, timeout=0.3).fetch_events(BOTH, 0, page)
    assert caught.value.retryable
    assert page.cursors == {}
    assert page.events == []


def test_connection_refused_is_a_retryable_transport_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Nothing listens on the port any more.
    with pytest.raises(TransportError) as caught:
        Client(f"http://127.0.0.1:{port}/feed/v1", 1).fetch_events(
            [Cursor(0, "_first")], 0, EventPage()
        )
    assert caught.value.retryable
    assert not isinstance(caught.value, FetchTimeout)


@pytest.mark.parametrize(
    ("cursors", "hint", "headers", "message"),
    [
        ([], 0, (), "at least one cursor"),
        ([Cursor(2, "_first")], 0, (), "partition 2 is outside 0..1"),
        ([Cursor(-1, "_first")], 0, (), "partition -1 is outside"),
        ([Cursor(0, "_first"), Cursor(0, "_last")], 0, (), "more than one cursor"),
        ([Cursor(0, "")], 0, (), "is empty"),
        ([Cursor(0, "_first")], -1, (), "must not be negative"),
        ([Cursor(0, "_first")], 0, ("a,b",), "bad header name"),
        ([Cursor(0, "_first")], 0, ("",), "bad header name"),
    ],
)
def test_bad_arguments_are_refused_before_any_request(
    server: ScriptedServer, cursors: list[Cursor], hint: int, headers: tuple[str, ...], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        Client(server.url, 2).fetch_events(cursors, hint, EventPage(), headers)
    assert server.requests == []


@pytest.mark.parametrize("url", ["localhost:8080/feed", "ftp://host/feed", "/feed/v1", "http://"])
def test_the_url_must_be_absolute_http(url: str) -> None:
    with pytest.raises(ValueError, match="absolute http"):
        Client(url, 1)


def test_partition_count_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Client("http://127.0.0.1/feed", 0)
