"""FeedAPI v2 protocol rules: negotiation, discovery, token, events requests and encoding."""

from __future__ import annotations

import orjson
import pytest

from zeh_mssql.protocol import ProtocolError, parse_feed_request, parse_wait
from zeh_mssql.protocol_v2 import (
    EventsRequest,
    StaleToken,
    encode_discovery,
    encode_events,
    feed_token,
    negotiate,
    parse_events_request,
)
from zeh_mssql.source import Event, Page, TypeFilter

ULID_TEXT = "01ARZ3NDEKTSV4RRFFQ69G5FAV"
TOKEN = feed_token(4)


def parse(query: dict[str, str] | list[tuple[str, str]], partitions: int = 4) -> EventsRequest:
    pairs = list(query.items()) if isinstance(query, dict) else query
    return parse_events_request(pairs, partitions)


def error_of(query: dict[str, str] | list[tuple[str, str]]) -> str:
    with pytest.raises(ProtocolError) as info:
        parse(query)
    return str(info.value)


def test_negotiation_by_parameter_names():
    assert negotiate([]) == "discovery"
    assert negotiate(["token", "partition", "cursor"]) == "v2"
    assert negotiate(["token"]) == "v2"
    assert negotiate(["n", "cursor0"]) == "v1"
    assert negotiate(["wait"]) == "v1"


def test_discovery_document():
    document = orjson.loads(encode_discovery(3))
    assert document == {
        "token": feed_token(3),
        "partitions": [{"id": "0"}, {"id": "1"}, {"id": "2"}],
        "exactlyOnce": True,
    }


def test_token_is_stable_and_changes_with_the_partition_count():
    assert feed_token(4) == feed_token(4)
    assert len({feed_token(n) for n in range(1, 50)}) == 49
    assert feed_token(4).isascii()


def test_a_full_request():
    request = parse(
        {
            "token": TOKEN,
            "partition": "3",
            "cursor": ULID_TEXT.lower(),
            "pagesizehint": "50",
            "event-types": "Created; paid;;",
            "wait": "2.5",
        }
    )
    assert request == EventsRequest(
        partition=3,
        cursor=ULID_TEXT,
        page_size_hint=50,
        type_filter=TypeFilter(frozenset({"created", "paid"}), exclude=False),
        wait=2.5,
    )


def test_defaults_and_skip_filter():
    request = parse(
        {"token": TOKEN, "partition": "0", "cursor": "_last", "skip-event-types": "NOISE"}
    )
    assert request == EventsRequest(
        partition=0,
        cursor="_last",
        page_size_hint=None,
        type_filter=TypeFilter(frozenset({"noise"}), exclude=True),
        wait=0.0,
    )
    plain = parse({"token": TOKEN, "partition": "1", "cursor": "_first", "pagesizehint": "0"})
    assert (plain.type_filter, plain.page_size_hint) == (None, None)


def test_the_spec_spelling_page_size_hint_is_accepted_too():
    query = {"token": TOKEN, "partition": "1", "cursor": "_first", "pageSizeHint": "7"}
    assert parse(query).page_size_hint == 7
    both = {**query, "pagesizehint": "7"}
    assert error_of(both).startswith("pagesizehint: given twice")


def test_stale_token_is_a_conflict_checked_before_anything_else():
    with pytest.raises(StaleToken, match="discovery"):
        parse({"token": feed_token(5), "partition": "4", "cursor": "bogus"})
    with pytest.raises(StaleToken):
        parse({"token": "", "partition": "0", "cursor": "_first"})


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"partition": "0", "cursor": "_first"}, "token: missing"),
        ({"token": TOKEN, "cursor": "_first"}, "partition: missing"),
        ({"token": TOKEN, "partition": "x", "cursor": "_first"}, "partition: expected"),
        ({"token": TOKEN, "partition": "-1", "cursor": "_first"}, "partition: expected"),
        ({"token": TOKEN, "partition": "٣", "cursor": "_first"}, "partition: expected"),
        ({"token": TOKEN, "partition": "4", "cursor": "_first"}, "partition doesn't exist"),
        ({"token": TOKEN, "partition": "99999", "cursor": "_first"}, "partition doesn't exist"),
        ({"token": TOKEN, "partition": "0"}, "cursor: missing"),
        ({"token": TOKEN, "partition": "0", "cursor": "bogus"}, "cursor: 'bogus' is not a cursor"),
        (
            {"token": TOKEN, "partition": "0", "cursor": "_first", "pagesizehint": "-1"},
            "pagesizehint: expected",
        ),
        (
            {"token": TOKEN, "partition": "0", "cursor": "_first", "event-types": ";"},
            "event-types: expected event types",
        ),
        (
            {"token": TOKEN, "partition": "0", "cursor": "_first", "skip-event-types": ""},
            "skip-event-types: expected event types",
        ),
        (
            {
                "token": TOKEN,
                "partition": "0",
                "cursor": "_first",
                "event-types": "a",
                "skip-event-types": "b",
            },
            "event-types and skip-event-types: give one of them, not both",
        ),
        ({"token": TOKEN, "partition": "0", "cursor": "_first", "wait": "soon"}, "wait: expected"),
    ],
)
def test_bad_requests_name_the_parameter(query, message):
    assert error_of(query).startswith(message)


def test_repeated_parameters_are_rejected():
    pairs = [("token", TOKEN), ("partition", "0"), ("partition", "1"), ("cursor", "_first")]
    assert error_of(pairs) == "partition: given more than once"


def test_events_body_has_data_lines_then_one_cursor():
    page = Page([Event('{"a": 1}'), Event("[1,\n 2]", event_type="T")], ULID_TEXT)
    body = encode_events(page)
    assert body == b'{"data":{"a": 1}}\n{"data":[1,2]}\n{"cursor":"' + ULID_TEXT.encode() + b'"}\n'


def test_events_body_without_events_still_has_a_cursor():
    assert encode_events(Page((), "_first")) == b'{"cursor":"_first"}\n'


# --- wait (both protocol versions) -----------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"), [(None, 0.0), ("0", 0.0), ("5", 5.0), ("2.5", 2.5), (" 10 ", 10.0)]
)
def test_wait_values(value, seconds):
    assert parse_wait(value) == seconds


@pytest.mark.parametrize(
    "value", ["", "-1", "soon", "1e3", "nan", "inf", "0x10", "1.", ".5", "1.0001", "٣", "+1"]
)
def test_bad_wait_values_name_wait(value):
    with pytest.raises(ProtocolError, match=r"^wait: expected a non-negative number of seconds"):
        parse_wait(value)


def test_v1_request_carries_its_wait():
    request = parse_feed_request([("n", "2"), ("cursor1", "_first"), ("wait", "3")], 2)
    assert request.wait == 3.0
    assert parse_feed_request([("n", "2"), ("cursor1", "_first")], 2).wait == 0.0
