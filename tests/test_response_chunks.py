"""The response body in chunks: the same bytes as line-by-line encoding, cut at line ends."""

from __future__ import annotations

import orjson
import pytest
import requests
from flask import Flask

from tests.http_server import running
from zeh_mssql import create_blueprint
from zeh_mssql.protocol import (
    ALL_HEADERS,
    CHUNK_CHARS,
    HeaderSelection,
    encode_checkpoint,
    encode_event,
    encode_response,
    encode_response_chunks,
)
from zeh_mssql.source import Event, Page
from zeh_mssql.testing import MemorySource

CURSOR = "01ARZ3NDEKTSV4RRFFQ69G5FAV"
SELECTIONS: list[HeaderSelection] = [None, ALL_HEADERS, frozenset({"a"}), frozenset()]


def kilobyte_event(number: int, text: str = "x") -> Event:
    data = orjson.dumps({"n": number, "pad": text * 1000}).decode()
    return Event(data=data, headers=orjson.dumps({"a": str(number), "b": "y"}).decode())


MIXED = [
    kilobyte_event(0),
    Event(data='{"name": "Ærø ✓ 東京"}', headers='{"a": "é"}'),
    Event(data='{\n  "pretty": [1,\r\n 2]\n}', headers='{\n"a": "1"}'),
    Event(data="[]"),
    kilobyte_event(1, "ø"),
    Event(data='{"s": "line\\nbreak escaped"}', headers="{}"),
    Event(data='{"carriage":\r1}', headers='{"a":\r"東"}'),  # a raw CR alone
]


def line_by_line(pages: list[tuple[int, Page]], headers: HeaderSelection) -> bytes:
    out = b""
    for partition, page in pages:
        for event in page.events:
            out += encode_event(partition, event, headers)
        out += encode_checkpoint(partition, page.cursor)
    return out


@pytest.mark.parametrize("headers", SELECTIONS)
def test_chunks_join_into_the_lines_of_every_event_then_the_checkpoint(headers):
    events = [*MIXED, *(kilobyte_event(n) for n in range(2, 300)), *MIXED]
    pages = [(0, Page(events, CURSOR)), (2, Page([], "_first")), (3, Page(MIXED, CURSOR))]
    expected = line_by_line(pages, headers)
    assert b"".join(encode_response_chunks(pages, headers)) == expected
    assert encode_response(pages, headers) == expected
    lines = [orjson.loads(line) for line in expected.splitlines()]
    assert len(lines) == len(events) + len(MIXED) + 3
    assert lines[2]["data"] == {"pretty": [1, 2]}
    assert lines[6]["data"] == {"carriage": 1}
    assert b"\r" not in expected


@pytest.mark.parametrize("text", ["x", "ø", "東"])
def test_a_big_page_comes_in_chunks_of_whole_lines(text):
    events = [kilobyte_event(n, text) for n in range(1000)]
    chunks = encode_response_chunks([(1, Page(events, CURSOR))], ALL_HEADERS)
    assert len(chunks) > 8
    for chunk in chunks:
        assert chunk.endswith(b"\n")  # never a line cut in two
        assert len(chunk.decode()) < 2 * CHUNK_CHARS
    assert orjson.loads(chunks[-1].splitlines()[-1]) == {"partition": 1, "cursor": CURSOR}


def test_pages_without_events_share_one_chunk():
    pages = [(p, Page([], "_first")) for p in range(16)]
    (chunk,) = encode_response_chunks(pages, None)
    assert [orjson.loads(line)["partition"] for line in chunk.splitlines()] == list(range(16))


def test_served_body_has_the_length_of_all_its_chunks():
    source = MemorySource(1)
    for n in range(600):
        source.append(0, {"n": n, "pad": "x" * 1000})
    app = Flask(__name__)
    app.register_blueprint(create_blueprint(source, "/feed"))
    with running(app) as base:
        response = requests.get(
            f"{base}/feed", params={"n": 1, "cursor0": "_first", "pagesizehint": 600}, timeout=10
        )
    assert response.status_code == 200
    assert int(response.headers["Content-Length"]) == len(response.content) > 600_000
    lines = [orjson.loads(line) for line in response.content.splitlines()]
    assert [line["data"]["n"] for line in lines[:-1]] == list(range(600))
    assert "cursor" in lines[-1]
