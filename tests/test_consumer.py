"""consume() with the in-memory cursor store: exactly-once across failures and restarts."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from tests.http_server import serving
from tests.misbehaving_server import Exchange, scripted_server
from zeh_mssql.client import Client, FeedEvent, HTTPStatusError
from zeh_mssql.consumer import (
    Backoff,
    CursorConflict,
    MemoryCursorStore,
    MemoryTransaction,
    consume,
)
from zeh_mssql.testing import MemorySource


@pytest.fixture
def source() -> MemorySource:
    return MemorySource(2)


@pytest.fixture
def client(source: MemorySource) -> Iterator[Client]:
    with serving(source, "/feed/v1") as url:
        yield Client(url, 2)


def record(tx: MemoryTransaction, events: list[FeedEvent[Any]]) -> None:
    tx.changes.extend((e.partition, e.data["n"]) for e in events)


def publish(source: MemorySource, count: int, offset: int = 0) -> dict[int, list[int]]:
    """Append ``count`` events spread over both partitions; the numbers per partition."""
    expected: dict[int, list[int]] = {0: [], 1: []}
    for n in range(offset, offset + count):
        partition = 0 if n % 3 else 1
        source.append(partition, {"n": n})
        expected[partition].append(n)
    return expected


def per_partition(changes: list[Any]) -> dict[int, list[int]]:
    result: dict[int, list[int]] = {0: [], 1: []}
    for partition, n in changes:
        result[partition].append(n)
    return result


class Sleeps:
    """Records the waits consume asks for, and stops it after ``limit`` of them."""

    def __init__(self, limit: int) -> None:
        self.delays: list[float] = []
        self.limit = limit

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)

    def done(self) -> bool:
        return len(self.delays) >= self.limit


def until_idle() -> dict[str, Any]:
    """consume() arguments that end it at its first wait: when the feed has run dry."""
    sleeps = Sleeps(limit=1)
    return {"stop": sleeps.done, "sleep": sleeps}


def test_consumes_every_event_once_in_order_and_saves_the_cursors(
    source: MemorySource, client: Client
) -> None:
    expected = publish(source, 50)
    store = MemoryCursorStore()
    sleeps = Sleeps(limit=1)

    handled = consume(client, store, record, page_size_hint=8, stop=sleeps.done, sleep=sleeps)

    assert handled == 50
    assert per_partition(store.committed) == expected
    assert store.commits >= 50 // 8
    assert sleeps.delays == [0.5]  # one empty fetch at the end, then stop
    # The saved cursors continue after the last events: nothing more to read.
    more = MemoryCursorStore(store.cursors)
    assert consume(client, more, record, **until_idle()) == 0


def test_a_handler_failing_mid_page_replays_that_page_on_the_next_run(
    source: MemorySource, client: Client
) -> None:
    expected = publish(source, 30)
    store = MemoryCursorStore()
    calls = 0

    def flaky(tx: MemoryTransaction, events: list[FeedEvent[Any]]) -> None:
        nonlocal calls
        calls += 1
        for event in events:
            tx.changes.append((event.partition, event.data["n"]))
            if calls == 3 and event is events[len(events) // 2]:
                raise RuntimeError("the handler's database went away")

    with pytest.raises(RuntimeError, match="went away"):
        consume(client, store, flaky, page_size_hint=4, **until_idle())
    committed_before = list(store.committed)
    cursors_before = dict(store.cursors)
    assert store.commits == 2  # pages 1 and 2; page 3 rolled back half-handled
    assert len(committed_before) == 8

    # The next run starts from the last committed page: page 3 comes again.
    sleeps = Sleeps(limit=1)
    consume(client, store, record, page_size_hint=4, stop=sleeps.done, sleep=sleeps)
    assert store.committed[:8] == committed_before
    assert per_partition(store.committed) == expected
    assert store.cursors != cursors_before


def test_restarting_after_each_page_neither_skips_nor_repeats(
    source: MemorySource, client: Client
) -> None:
    expected = publish(source, 21)
    store = MemoryCursorStore()
    runs = 0
    while True:
        before = store.commits
        # Each run ends right after one commit, like a process killed there.
        consume(
            client,
            store,
            record,
            page_size_hint=5,
            stop=lambda before=before: store.commits > before,
            sleep=lambda _: pytest.fail("the feed ran dry before all events were seen"),
        )
        runs += 1
        if per_partition(store.committed) == expected:
            break
        assert runs < 20
    assert runs >= 21 // 5


def test_events_published_while_consuming_are_picked_up(
    source: MemorySource, client: Client
) -> None:
    first = publish(source, 5)
    store = MemoryCursorStore()
    published_more = False

    idle = 0

    def publish_more_when_idle(seconds: float) -> None:
        nonlocal published_more, idle
        idle += 1
        assert idle < 50, "the events published meanwhile never arrived"
        if not published_more:
            publish(source, 7, offset=5)
            published_more = True

    stop = lambda: published_more and len(store.committed) == 12  # noqa: E731
    consume(client, store, record, stop=stop, sleep=publish_more_when_idle)
    got = per_partition(store.committed)
    assert got[0][: len(first[0])] == first[0]
    assert sorted(got[0] + got[1]) == list(range(12))


def test_start_last_skips_history_and_saves_the_resolved_cursor(
    source: MemorySource, client: Client
) -> None:
    publish(source, 6)
    store = MemoryCursorStore()
    consume(client, store, record, start="_last", **until_idle())
    assert store.committed == []
    # _last resolved to the heads and was saved without any event to handle,
    # so a restart does not skip what is published in between.
    assert set(store.cursors) == {0, 1}
    assert "_last" not in store.cursors.values()

    later = publish(source, 4, offset=100)
    sleeps = Sleeps(limit=1)
    consume(client, store, record, start="_last", stop=sleeps.done, sleep=sleeps)
    assert per_partition(store.committed) == later


def test_only_the_given_partitions_are_consumed(source: MemorySource, client: Client) -> None:
    expected = publish(source, 9)
    store = MemoryCursorStore()
    consume(client, store, record, partitions=[1], **until_idle())
    assert per_partition(store.committed) == {0: [], 1: expected[1]}
    assert set(store.cursors) == {1}


def test_an_empty_feed_backs_off_exponentially_up_to_the_cap(client: Client) -> None:
    sleeps = Sleeps(limit=7)
    store = MemoryCursorStore()
    consume(
        client,
        store,
        record,
        stop=sleeps.done,
        sleep=sleeps,
        backoff=Backoff(initial=0.25, maximum=3.0),
    )
    assert sleeps.delays == [0.25, 0.5, 1.0, 2.0, 3.0, 3.0, 3.0]
    assert store.commits == 0  # _first on an empty feed stays _first: nothing to save


def test_server_errors_back_off_honouring_retry_after_then_recover() -> None:
    body = b'{"partition":0,"data":{"n":1}}\n{"partition":0,"cursor":"C1"}\n'

    def unavailable(ex: Exchange) -> None:
        ex.respond(503, b'{"error":"unavailable"}', {"Retry-After": "2"})

    def bad_gateway(ex: Exchange) -> None:
        ex.respond(502, b"bad gateway")

    def page(ex: Exchange) -> None:
        ex.respond(200, body)

    def empty(ex: Exchange) -> None:
        ex.respond(200, b'{"partition":0,"cursor":"C1"}\n')

    with scripted_server() as server:
        server.answer(unavailable, bad_gateway, bad_gateway, page, empty)
        sleeps = Sleeps(limit=4)
        store = MemoryCursorStore()
        handled = consume(Client(server.url, 1), store, record, stop=sleeps.done, sleep=sleeps)
        cursors_sent = [dict(ex.query).get("cursor0") for ex in server.requests]

    assert handled == 1
    assert store.committed == [(0, 1)]
    assert store.cursors == {0: "C1"}
    # 503 with Retry-After 2 beats the first 0.5 s; then 1.0 and 2.0; after the
    # page the backoff starts over for the empty feed.
    assert sleeps.delays == [2.0, 1.0, 2.0, 0.5]
    assert cursors_sent == ["_first"] * 4 + ["C1"]


def test_connection_refused_is_retried() -> None:
    with scripted_server() as server:
        url = server.url
    # The server is gone: every attempt is refused.
    sleeps = Sleeps(limit=3)
    consume(Client(url, 1), MemoryCursorStore(), record, stop=sleeps.done, sleep=sleeps)
    assert sleeps.delays == [0.5, 1.0, 2.0]


def test_a_client_error_is_not_retried(source: MemorySource, client: Client) -> None:
    wrong = Client(client.url, 5)  # the server has 2 partitions
    with pytest.raises(HTTPStatusError, match="partition count mismatch"):
        consume(wrong, MemoryCursorStore(), record, sleep=lambda _: pytest.fail("no retry"))


def test_another_instance_moving_the_cursor_rolls_this_page_back(
    source: MemorySource, client: Client
) -> None:
    publish(source, 6)
    store = MemoryCursorStore()

    def racing(tx: MemoryTransaction, events: list[FeedEvent[Any]]) -> None:
        record(tx, events)
        # Meanwhile another instance commits the same page.
        with store.transaction() as other:
            record(other, events)
            store.save(other, {0: "OTHER"}, {})

    with pytest.raises(CursorConflict, match="partition 0"):
        consume(client, store, racing, **until_idle())
    # Only the other instance's effects are there, once.
    assert len(store.committed) == 6
    assert store.cursors == {0: "OTHER"}


class WaitSignallingEvent(threading.Event):
    """A stop event that tells when someone starts waiting on it."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting = threading.Event()

    def wait(self, timeout: float | None = None) -> bool:
        self.waiting.set()
        return super().wait(timeout)


def test_a_threading_event_stops_the_loop_and_its_waits(client: Client) -> None:
    stop = WaitSignallingEvent()
    store = MemoryCursorStore()
    done = threading.Event()

    def run() -> None:
        consume(client, store, record, stop=stop, backoff=Backoff(initial=600, maximum=600))
        done.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert stop.waiting.wait(timeout=60)
    stop.set()
    # The 600 s wait on the empty feed ends as soon as the event is set.
    assert done.wait(timeout=60)
    thread.join()


def test_decode_gives_the_handler_typed_events(source: MemorySource, client: Client) -> None:
    source.append(0, {"n": 41})
    seen: list[int] = []

    def handle(tx: MemoryTransaction, events: list[FeedEvent[Any]]) -> None:
        seen.extend(e.data for e in events)

    consume(
        client,
        MemoryCursorStore(),
        handle,
        decode=lambda data: data["n"] + 1,
        **until_idle(),
    )
    assert seen == [42]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"start": "01ARZ3NDEKTSV4RRFFQ69G5FAV"}, "start must be"),
        ({"partitions": []}, "no partitions"),
    ],
)
def test_bad_arguments(client: Client, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        consume(client, MemoryCursorStore(), record, **kwargs)


def test_backoff_validates_and_caps() -> None:
    assert Backoff(initial=1, maximum=10).delay(1000) == 10
    with pytest.raises(ValueError, match="backoff"):
        Backoff(initial=0)
    with pytest.raises(ValueError, match="backoff"):
        Backoff(initial=2, maximum=1)


def test_memory_store_rechecks_the_cursor_at_commit() -> None:
    store = MemoryCursorStore({0: "A"})

    def commit_page(tx: MemoryTransaction, effect: str, other: Any = None) -> None:
        tx.changes.append(effect)
        store.save(tx, {0: f"after-{effect}"}, {0: "A"})
        if other is not None:
            other()  # another instance commits between our save and our commit

    def second_instance() -> None:
        with store.transaction() as tx:
            commit_page(tx, "second")

    with pytest.raises(CursorConflict, match="partition 0"), store.transaction() as tx:
        commit_page(tx, "first", second_instance)
    assert store.committed == ["second"]
    assert store.cursors == {0: "after-second"}


def test_memory_store_saves_unconditionally_without_previous() -> None:
    store = MemoryCursorStore({0: "A"})
    with store.transaction() as tx:
        store.save(tx, {0: "B", 1: "C"})
    assert store.cursors == {0: "B", 1: "C"}
