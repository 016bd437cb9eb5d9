"""`zeh-mssql tail` against our blueprint over real HTTP, and its loop on its own."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from click.testing import CliRunner
from flask import Flask, Request
from werkzeug.exceptions import Unauthorized

from tests.http_server import running
from tests.misbehaving_server import Exchange, scripted_server
from zeh_mssql.blueprint import create_blueprint
from zeh_mssql.cli import main
from zeh_mssql.client import Client, HTTPStatusError
from zeh_mssql.consumer import Backoff
from zeh_mssql.tail import tail
from zeh_mssql.testing import MemorySource

TOKEN = "t0ken"


def require_token(request: Request) -> None:
    if request.headers.get("Authorization") != f"Bearer {TOKEN}":
        raise Unauthorized("a bearer token is required")


@pytest.fixture
def source() -> MemorySource:
    return MemorySource(3)


@pytest.fixture
def url(source: MemorySource) -> Iterator[str]:
    app = Flask(__name__)
    app.register_blueprint(create_blueprint(source, "/open/feed/v1", name="open"))
    app.register_blueprint(
        create_blueprint(source, "/guarded/feed/v1", name="guarded", authorize=require_token)
    )
    with running(app) as base:
        yield f"{base}/open/feed/v1"


def lines(output: bytes) -> list[Any]:
    return [orjson.loads(line) for line in output.splitlines()]


def run(*args: str, **env: str) -> Any:
    return CliRunner().invoke(main, list(args), env=env or None)


def test_prints_each_events_data_as_a_json_line_and_exits_0_at_the_end(
    source: MemorySource, url: str
) -> None:
    for n in range(25):
        source.append(n % 3, {"n": n, "text": "line\nbreak"})
    result = run("tail", url, "--partitions", "3", "--page-size", "4")
    assert result.exit_code == 0, result.output
    printed = lines(result.stdout_bytes)
    assert sorted(e["n"] for e in printed) == list(range(25))
    for partition in range(3):
        assert [e["n"] for e in printed if e["n"] % 3 == partition] == list(range(partition, 25, 3))
    assert printed[0]["text"] == "line\nbreak"
    # stderr is not a terminal here: no progress.
    assert result.stderr == ""


def test_envelope_prints_whole_protocol_lines_with_headers(source: MemorySource, url: str) -> None:
    source.append(1, {"n": 1}, headers={"trace": "abc"})
    source.append(2, [1, 2])
    result = run("tail", url, "--partitions", "3", "--envelope")
    assert result.exit_code == 0, result.output
    assert lines(result.stdout_bytes) == [
        {"partition": 1, "headers": {"trace": "abc"}, "data": {"n": 1}},
        {"partition": 2, "headers": {}, "data": [1, 2]},
    ]


def test_from_last_prints_nothing_of_the_past(source: MemorySource, url: str) -> None:
    source.append(0, {"n": 1})
    result = run("tail", url, "--partitions", "3", "--from", "_last")
    assert result.exit_code == 0, result.output
    assert result.stdout_bytes == b""


def test_token_from_option_or_environment(source: MemorySource, url: str) -> None:
    source.append(0, {"secret": True})
    guarded = url.replace("/open/", "/guarded/")
    by_option = run("tail", guarded, "--partitions", "3", "--token", TOKEN)
    by_env = run("tail", guarded, "--partitions", "3", ZEH_MSSQL_TOKEN=TOKEN)
    for result in (by_option, by_env):
        assert result.exit_code == 0, result.output
        assert lines(result.stdout_bytes) == [{"secret": True}]

    refused = run("tail", guarded, "--partitions", "3")
    assert refused.exit_code == 1
    assert refused.stderr == f"Error: {guarded}: HTTP 401: a bearer token is required\n"


def test_a_wrong_partition_count_is_one_clear_line(url: str) -> None:
    result = run("tail", url, "--partitions", "2")
    assert result.exit_code == 1
    assert result.stderr == f"Error: {url}: HTTP 400: handshake error: partition count mismatch\n"


def test_an_unreachable_server_is_one_clear_line() -> None:
    with scripted_server() as server:
        gone = server.url
    result = run("tail", gone, "--partitions", "1")
    assert result.exit_code == 1
    assert result.stderr.startswith(f"Error: {gone}: connection failed:")
    assert result.stderr.count("\n") == 1


def test_a_bad_url_is_one_clear_line() -> None:
    result = run("tail", "localhost:8080/feed", "--partitions", "1")
    assert result.exit_code == 1
    assert "absolute http(s) URL" in result.stderr
    assert result.stderr.count("\n") == 1


def test_follow_keeps_polling_with_bounded_backoff(source: MemorySource, url: str) -> None:
    source.append(0, {"n": 0})
    out = io.BytesIO()
    waits: list[float] = []

    def idle(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 3:
            source.append(2, {"n": 1})

    count = tail(
        Client(url, 3),
        out,
        follow=True,
        backoff=Backoff(initial=1, maximum=2),
        sleep=idle,
        stop=lambda: len(waits) >= 5,
    )
    assert count == 2
    assert lines(out.getvalue()) == [{"n": 0}, {"n": 1}]
    # Idle waits grow to the cap, and start over once events arrive.
    assert waits == [1, 2, 2, 1, 2]


def test_follow_retries_server_errors_and_reports_them(source: MemorySource) -> None:
    def unavailable(ex: Exchange) -> None:
        ex.respond(503, b'{"error":"the event store is unavailable; retry later"}')

    def page(ex: Exchange) -> None:
        ex.respond(200, b'{"partition":0,"data":{"n":7}}\n{"partition":0,"cursor":"C"}\n')

    def nothing_new(ex: Exchange) -> None:
        ex.respond(200, b'{"partition":0,"cursor":"C"}\n')

    warnings: list[str] = []
    out = io.BytesIO()
    with scripted_server() as server:
        server.answer(unavailable, page, nothing_new)
        waits: list[float] = []
        tail(
            Client(server.url, 1),
            out,
            follow=True,
            warn=warnings.append,
            sleep=waits.append,
            stop=lambda: len(waits) >= 2,
        )
    assert lines(out.getvalue()) == [{"n": 7}]
    assert warnings == ["HTTP 503: the event store is unavailable; retry later; retrying in 0.25 s"]


def test_without_follow_a_server_error_ends_the_run() -> None:
    with scripted_server() as server:
        server.answer(lambda ex: ex.respond(503, b"down"))
        with pytest.raises(HTTPStatusError):
            tail(Client(server.url, 1), io.BytesIO(), sleep=lambda _: pytest.fail("no retry"))


def test_progress_counts_events_and_rate(source: MemorySource, url: str) -> None:
    for n in range(10):
        source.append(0, {"n": n})
    progress = io.StringIO()
    tail(Client(url, 3), io.BytesIO(), page_size_hint=4, progress=progress)
    updates = progress.getvalue().split("\r")[1:]
    counts = [int(u.split(" events read, ")[0]) for u in updates]
    assert counts == sorted(set(counts))
    assert counts[-1] == 10
    assert len(counts) > 1
    assert all(u.rstrip("\n").endswith(" events/s") for u in updates)
    assert progress.getvalue().endswith("\n")
