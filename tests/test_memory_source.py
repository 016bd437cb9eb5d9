"""MemorySource: the in-memory EventSource shipped for users' tests."""

from __future__ import annotations

import threading

import orjson
import pytest

from zeh_mssql.protocol import cursor_bytes
from zeh_mssql.source import EventSource, TypeFilter
from zeh_mssql.testing import MemorySource


def test_is_an_event_source():
    assert isinstance(MemorySource(2), EventSource)
    assert MemorySource(3).partition_count == 3


def test_append_returns_increasing_cursors_and_reads_in_order():
    source = MemorySource(1)
    cursors = [source.append(0, {"i": i}) for i in range(50)]
    assert cursors == sorted(cursors)
    assert len(set(cursors)) == 50
    assert [cursor_bytes(c) for c in cursors] == sorted(cursor_bytes(c) for c in cursors)
    page = source.fetch(0, "_first", 100)
    assert [orjson.loads(e.data)["i"] for e in page.events] == list(range(50))
    assert page.cursor == cursors[-1]


def test_paging_by_cursor():
    source = MemorySource(1)
    cursors = [source.append(0, [i]) for i in range(5)]
    first = source.fetch(0, "_first", 3)
    assert [e.data for e in first.events] == ["[0]", "[1]", "[2]"]
    assert first.cursor == cursors[2]
    second = source.fetch(0, first.cursor, 3)
    assert [e.data for e in second.events] == ["[3]", "[4]"]
    end = source.fetch(0, second.cursor, 3)
    assert end.events == ()
    assert end.cursor == second.cursor


def test_any_ulid_cursor_reads_what_follows_it():
    source = MemorySource(1)
    a = source.append(0, [1])
    b = source.append(0, [2])
    assert len(source.fetch(0, "0" * 25 + "1", 10).events) == 2
    assert source.fetch(0, a, 10).cursor == b
    beyond = "7" + "Z" * 25
    page = source.fetch(0, beyond, 10)
    assert page.events == ()
    assert page.cursor == beyond


def test_last_resolves_to_head_or_first_when_empty():
    source = MemorySource(2)
    empty = source.fetch(0, "_last", 10)
    assert empty.events == ()
    assert empty.cursor == "_first"
    head = source.append(1, {"x": 1})
    page = source.fetch(1, "_last", 10)
    assert page.events == ()
    assert page.cursor == head
    later = source.append(1, {"x": 2})
    assert [e.data for e in source.fetch(1, page.cursor, 10).events] == ['{"x":2}']
    assert source.fetch(1, page.cursor, 10).cursor == later


def test_first_on_empty_partition_stays_first():
    page = MemorySource(1).fetch(0, "_first", 10)
    assert page.events == ()
    assert page.cursor == "_first"


def test_data_as_text_is_kept_verbatim_and_headers_and_type_stored():
    source = MemorySource(1)
    source.append(0, '{ "spaced" : true }', headers={"h": "v"}, event_type="Created")
    (event,) = source.fetch(0, "_first", 1).events
    assert event.data == '{ "spaced" : true }'
    assert orjson.loads(event.headers or "") == {"h": "v"}
    assert event.event_type == "Created"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("{not json", "not valid JSON"),
        ("42", "object or array"),
        (42, "object or array"),
        ({1j}, "cannot be serialised"),
    ],
)
def test_bad_data_is_refused(data, message):
    with pytest.raises(ValueError, match=message):
        MemorySource(1).append(0, data)


def test_bad_headers_partition_and_limit_are_refused():
    source = MemorySource(2)
    with pytest.raises(ValueError, match="strings to strings"):
        source.append(0, {}, headers={"a": 1})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="partition 2 out of range"):
        source.append(2, {})
    with pytest.raises(ValueError, match="partition -1 out of range"):
        source.fetch(-1, "_first", 1)
    with pytest.raises(ValueError, match="limit"):
        source.fetch(0, "_first", 0)
    with pytest.raises(ValueError, match="at least 1"):
        MemorySource(0)


def test_type_filter_returns_matches_and_moves_past_the_rest():
    source = MemorySource(1)
    source.append(0, [1], event_type="Created")
    source.append(0, [2], event_type="deleted")
    last = source.append(0, [3], event_type="CREATED")
    only = source.fetch(0, "_first", 10, TypeFilter(frozenset({"created"})))
    assert [e.data for e in only.events] == ["[1]", "[3]"]
    assert only.cursor == last
    skip = source.fetch(0, "_first", 2, TypeFilter(frozenset({"created"}), exclude=True))
    assert [e.data for e in skip.events] == ["[2]"]
    none = source.fetch(0, "_first", 1, TypeFilter(frozenset({"deleted"})))
    assert none.events == ()
    assert none.cursor != "_first"


def test_concurrent_appends_keep_order_and_lose_nothing():
    source = MemorySource(1)

    def writer(w: int) -> None:
        for i in range(200):
            source.append(0, {"w": w, "i": i})

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    events = source.fetch(0, "_first", 10_000).events
    assert len(events) == 1600 == len(source)
    per_writer: dict[int, list[int]] = {}
    for event in events:
        value = orjson.loads(event.data)
        per_writer.setdefault(value["w"], []).append(value["i"])
    assert all(seq == list(range(200)) for seq in per_writer.values())


def test_wait_for_append_wakes_on_append():
    source = MemorySource(1)
    assert source.wait_for_append(0.01) is False
    timer = threading.Timer(0.05, source.append, args=(0, {}))
    timer.start()
    assert source.wait_for_append(30) is True
    timer.join()
