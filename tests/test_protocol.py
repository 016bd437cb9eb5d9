"""The ZeroEventHub v1 rules of DESIGN.md section 4, one by one."""

from __future__ import annotations

import orjson
import pytest
from ulid import ULID

from zeh_mssql.protocol import (
    ALL_HEADERS,
    ZERO_CURSOR,
    FeedRequest,
    PartitionCursor,
    ProtocolError,
    cursor_bytes,
    cursor_text,
    encode_checkpoint,
    encode_error,
    encode_event,
    encode_response,
    page_limits,
    parse_cursor,
    parse_feed_request,
    parse_headers,
)
from zeh_mssql.source import Event, Page

ULID_TEXT = "01ARZ3NDEKTSV4RRFFQ69G5FAV"


def parse(query: dict[str, str] | list[tuple[str, str]], partitions: int = 4) -> FeedRequest:
    pairs = list(query.items()) if isinstance(query, dict) else query
    return parse_feed_request(pairs, partitions)


def error_of(query: dict[str, str] | list[tuple[str, str]], partitions: int = 4) -> str:
    with pytest.raises(ProtocolError) as info:
        parse(query, partitions)
    return str(info.value)


# --- handshake ---------------------------------------------------------------


def test_missing_partition_count_is_a_handshake_error():
    assert error_of({"cursor0": "_first"}) == "handshake error: partition count missing"


def test_wrong_partition_count_is_a_handshake_error():
    assert error_of({"n": "3", "cursor0": "_first"}) == "handshake error: partition count mismatch"
    assert error_of({"n": "-4", "cursor0": "_first"}) == "handshake error: partition count mismatch"


@pytest.mark.parametrize("value", ["four", "4.0", "", "0x4", "٤", "9999999999999"])
def test_non_integer_partition_count_names_n(value):
    message = error_of({"n": value, "cursor0": "_first"})
    assert message.startswith("n: ")
    assert "integer" in message


def test_partition_count_checked_before_cursors():
    assert error_of({"n": "2"}) == "handshake error: partition count mismatch"
    assert error_of({}) == "handshake error: partition count missing"


# --- cursors -----------------------------------------------------------------


def test_no_cursor_is_an_error():
    assert error_of({"n": "4"}) == "cursors are missing"
    assert error_of({"n": "4", "pagesizehint": "10"}) == "cursors are missing"


def test_cursor_for_a_partition_beyond_n_does_not_exist():
    assert error_of({"n": "4", "cursor4": "_first"}) == "partition doesn't exist"
    assert error_of({"n": "4", "cursor0": "_first", "cursor17": "_first"}) == (
        "partition doesn't exist"
    )


@pytest.mark.parametrize("name", ["cursor", "cursor01", "cursor-1", "cursorx", "cursor 1"])
def test_malformed_cursor_parameter_names_are_named(name):
    message = error_of({"n": "4", name: "_first"})
    assert message.startswith(f"{name}: ")


@pytest.mark.parametrize(
    "value",
    [
        "",
        "first",
        "_FIRST",
        "01ARZ3NDEKTSV4RRFFQ69G5FA",  # 25 characters
        "01ARZ3NDEKTSV4RRFFQ69G5FAVX",  # 27 characters
        "81ARZ3NDEKTSV4RRFFQ69G5FAV",  # above the 128-bit range
        "01ARZ3NDEKTSV4RRFFQ69G5FAU",  # U is not Crockford base32
        "01ARZ3NDEKTSV4RRFFQ69G5FAI",
    ],
)
def test_invalid_cursor_values_name_the_parameter(value):
    message = error_of({"n": "4", "cursor2": value})
    assert message.startswith("cursor2: ")
    assert "_first, _last or a 26-character ULID" in message


def test_non_ascii_cursor_is_rejected():
    assert error_of({"n": "4", "cursor1": "01ARZ3NDEKTSV4RRFFQ69G5FAé"}) == (
        "cursor1: cursor must be ASCII"
    )


def test_cursors_come_back_sorted_and_ulids_upper_cased():
    request = parse(
        {"n": "4", "cursor3": ULID_TEXT.lower(), "cursor0": "_last", "cursor1": "_first"}
    )
    assert request.cursors == (
        PartitionCursor(0, "_last"),
        PartitionCursor(1, "_first"),
        PartitionCursor(3, ULID_TEXT),
    )


def test_repeated_parameter_is_an_error():
    message = error_of([("n", "4"), ("cursor0", "_first"), ("cursor0", "_last")])
    assert message == "cursor0: given more than once"


def test_unknown_parameters_are_ignored_for_extensions():
    request = parse({"n": "4", "cursor0": "_first", "wait": "5", "x": "y"})
    assert request.cursors == (PartitionCursor(0, "_first"),)


# --- page size and headers ------------------------------------------------------


def test_page_size_hint_parsed_and_zero_means_none():
    assert parse({"n": "4", "cursor0": "_first", "pagesizehint": "250"}).page_size_hint == 250
    assert parse({"n": "4", "cursor0": "_first", "pagesizehint": "0"}).page_size_hint is None
    assert parse({"n": "4", "cursor0": "_first"}).page_size_hint is None


@pytest.mark.parametrize("value", ["-1", "ten", "1.5", "", "1e3"])
def test_bad_page_size_hint_names_the_parameter(value):
    message = error_of({"n": "4", "cursor0": "_first", "pagesizehint": value})
    assert message.startswith("pagesizehint: expected a non-negative integer")


def test_headers_parameter():
    assert parse_headers(None) is None
    assert parse_headers("_all") == ALL_HEADERS
    assert parse_headers("a,b, c,,") == frozenset({"a", "b", "c"})
    assert parse_headers("a,_all") == ALL_HEADERS
    assert parse_headers("") == frozenset()
    assert parse({"n": "4", "cursor0": "_first", "headers": "x,y"}).headers == frozenset({"x", "y"})


def test_page_limits_split_total_and_cap():
    assert page_limits(None, 4, default=1000, maximum=10000) == [250, 250, 250, 250]
    assert page_limits(10, 3, default=1000, maximum=10000) == [4, 3, 3]
    assert page_limits(2, 4, default=1000, maximum=10000) == [1, 1, 1, 1]
    assert page_limits(10**8, 2, default=1000, maximum=10000) == [5000, 5000]
    assert page_limits(None, 1, default=1000, maximum=500) == [500]


# --- cursor codec ---------------------------------------------------------------


def test_cursor_codec_round_trips_and_orders_like_bytes():
    ulid = ULID.from_str(ULID_TEXT)
    assert cursor_bytes(ULID_TEXT) == ulid.bytes
    assert cursor_text(ulid.bytes) == ULID_TEXT
    assert cursor_bytes("_first") == ZERO_CURSOR
    assert cursor_text(ZERO_CURSOR) == "0" * 26
    low, high = bytes(15) + b"\x01", b"\x01" + bytes(15)
    assert (cursor_text(low) < cursor_text(high)) == (low < high)


def test_cursor_codec_rejects_what_it_cannot_encode():
    with pytest.raises(ValueError, match="resolve it"):
        cursor_bytes("_last")
    with pytest.raises(ValueError, match="16 bytes"):
        cursor_text(b"\x00" * 15)
    with pytest.raises(ProtocolError):
        cursor_bytes("nope")


def test_parse_cursor_accepts_sentinels():
    assert parse_cursor("_first") == "_first"
    assert parse_cursor("_last") == "_last"


# --- encoding -------------------------------------------------------------------

EVENT = Event(data='{"id": 1, "name": "x"}', headers='{"a":"1","b":"2"}', event_type="t")


def test_event_line_embeds_stored_json_verbatim():
    line = encode_event(3, EVENT, None)
    assert line == b'{"partition":3,"data":{"id": 1, "name": "x"}}\n'
    assert orjson.loads(line) == {"partition": 3, "data": {"id": 1, "name": "x"}}


def test_event_line_compacts_json_holding_newlines():
    event = Event(data='{\n  "id": 1,\r\n  "s": "a\\nb"\n}')
    line = encode_event(0, event, None)
    assert line.count(b"\n") == 1
    assert orjson.loads(line)["data"] == {"id": 1, "s": "a\nb"}


def test_non_ascii_data_is_utf8():
    line = encode_event(0, Event(data='{"name":"Ærø ✓"}'), None)
    assert orjson.loads(line)["data"] == {"name": "Ærø ✓"}


def test_headers_all_selected_and_absent():
    assert orjson.loads(encode_event(0, EVENT, ALL_HEADERS))["headers"] == {"a": "1", "b": "2"}
    assert orjson.loads(encode_event(0, EVENT, frozenset({"b", "z"})))["headers"] == {"b": "2"}
    assert orjson.loads(encode_event(0, EVENT, frozenset()))["headers"] == {}
    assert "headers" not in orjson.loads(encode_event(0, EVENT, None))
    no_headers = Event(data="{}")
    assert orjson.loads(encode_event(0, no_headers, ALL_HEADERS))["headers"] == {}
    assert orjson.loads(encode_event(0, no_headers, frozenset({"a"})))["headers"] == {}


def test_checkpoint_line():
    assert (
        encode_checkpoint(2, ULID_TEXT) == b'{"partition":2,"cursor":"%s"}\n' % ULID_TEXT.encode()
    )


def test_response_has_one_checkpoint_per_partition_after_its_events():
    pages = [
        (0, Page([Event(data="[1]"), Event(data="[2]")], "C0")),
        (2, Page([], "_first")),
        (3, Page([Event(data="[3]")], "C3")),
    ]
    lines = [orjson.loads(line) for line in encode_response(pages, None).splitlines()]
    assert lines == [
        {"partition": 0, "data": [1]},
        {"partition": 0, "data": [2]},
        {"partition": 0, "cursor": "C0"},
        {"partition": 2, "cursor": "_first"},
        {"partition": 3, "data": [3]},
        {"partition": 3, "cursor": "C3"},
    ]


def test_error_body():
    assert orjson.loads(encode_error("bad 'x'")) == {"error": "bad 'x'"}
