"""HeadWatcher: shared polls per partition, wake-ups, timeouts, cancellation and backoff."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import pytest

from tests.counting_source import CountingSource, GatedSource
from tests.waiting import PATIENCE, eventually
from zeh_mssql.longpoll import HeadWatcher, next_interval
from zeh_mssql.source import Page, SourceUnavailable, TypeFilter


class Waiting:
    """Run ``watcher.wait`` in a thread and keep its result."""

    def __init__(
        self,
        watcher: HeadWatcher,
        cursors: dict[int, str],
        timeout: float,
        gone: Callable[[], bool] | None = None,
    ) -> None:
        self.result: frozenset[int] | None = None
        self.finished_at: float | None = None
        self.thread = threading.Thread(target=self._run, args=(watcher, cursors, timeout, gone))
        self.started_at = time.monotonic()
        self.thread.start()

    def _run(self, watcher, cursors, timeout, gone) -> None:
        self.result = watcher.wait(cursors, timeout, gone=gone)
        self.finished_at = time.monotonic()

    def join(self) -> frozenset[int]:
        self.thread.join(PATIENCE * 2)
        assert not self.thread.is_alive(), "the wait never ended"
        assert self.result is not None
        return self.result


def test_an_append_wakes_a_waiter_before_its_timeout():
    source = CountingSource(2)
    watcher = HeadWatcher(source, min_interval=0.005, max_interval=0.05)
    waiting = Waiting(watcher, {1: "_first"}, timeout=30)
    eventually(lambda: watcher.waiting(1) == 1, "the waiter registered")
    source.append(1, {"x": 1})
    assert waiting.join() == frozenset({1})
    assert waiting.finished_at is not None
    assert waiting.finished_at - waiting.started_at < 30 - 10  # long before the timeout
    eventually(lambda: watcher.polling() == frozenset(), "the poll thread stopped")


def test_a_waiter_for_a_cursor_behind_the_head_returns_at_once():
    source = CountingSource(1)
    first = source.append(0, {"x": 1})
    source.append(0, {"x": 2})
    watcher = HeadWatcher(source)
    assert watcher.wait({0: first}, 30) == frozenset({0})
    assert watcher.wait({0: "_first"}, 30) == frozenset({0})


def test_a_waiter_at_the_head_times_out_with_nothing():
    source = CountingSource(1)
    head = source.append(0, {"x": 1})
    watcher = HeadWatcher(source, min_interval=0.005, max_interval=0.05)
    started = time.monotonic()
    assert watcher.wait({0: head}, 0.5) == frozenset()
    elapsed = time.monotonic() - started
    assert 0.45 <= elapsed < 0.5 + PATIENCE
    assert watcher.waiting() == 0


def test_only_the_partitions_that_moved_are_returned():
    source = CountingSource(3)
    watcher = HeadWatcher(source, min_interval=0.005, max_interval=0.05)
    waiting = Waiting(watcher, {0: "_first", 2: "_first"}, timeout=30)
    eventually(lambda: watcher.waiting(0) == 1 and watcher.waiting(2) == 1, "registered")
    assert watcher.waiting() == 1
    source.append(2, {"x": 1})
    assert waiting.join() == frozenset({2})


def test_many_waiters_share_one_head_read_per_poll():
    source = GatedSource(1)
    # Long intervals: after the one gated poll nothing else may poll before the waiters leave.
    watcher = HeadWatcher(source, min_interval=5, max_interval=5)
    waiters = [Waiting(watcher, {0: "_first"}, timeout=30) for _ in range(50)]
    eventually(lambda: watcher.waiting(0) == 50, "all 50 registered")
    assert source.head_read_started.wait(PATIENCE)
    assert source.head_reads == 1
    source.append(0, {"x": 1})
    source.gate.set()
    assert all(w.join() == frozenset({0}) for w in waiters)
    eventually(lambda: watcher.polling() == frozenset(), "the poll thread stopped")
    assert source.head_reads == 1
    assert source.page_reads == 0


def test_each_watched_partition_has_its_own_poll_and_it_stops_with_its_last_waiter():
    source = CountingSource(4)
    watcher = HeadWatcher(source, min_interval=0.005, max_interval=0.02)
    cancel = threading.Event()
    waiters = [Waiting(watcher, {p: "_first"}, 30, gone=cancel.is_set) for p in (1, 3, 3)]
    eventually(lambda: watcher.waiting() == 3, "all three registered")
    assert (watcher.waiting(1), watcher.waiting(3), watcher.waiting(0)) == (1, 2, 0)
    assert watcher.polling() == frozenset({1, 3})
    cancel.set()
    assert all(w.join() == frozenset() for w in waiters)
    eventually(lambda: watcher.polling() == frozenset(), "every poll thread stopped")
    polls = watcher.polls
    time.sleep(0.1)
    assert watcher.polls == polls  # nothing polls without waiters


def test_gone_ends_the_wait_long_before_the_timeout():
    source = CountingSource(1)
    watcher = HeadWatcher(source, check_interval=0.01)
    cancel = threading.Event()
    waiting = Waiting(watcher, {0: "_first"}, timeout=60, gone=cancel.is_set)
    eventually(lambda: watcher.waiting(0) == 1, "registered")
    cancel.set()
    assert waiting.join() == frozenset()
    assert waiting.finished_at is not None
    assert waiting.finished_at - waiting.started_at < 60 - 10
    assert watcher.waiting() == 0


def test_polls_back_off_while_nothing_changes():
    source = CountingSource(1)
    watcher = HeadWatcher(source, min_interval=0.001, max_interval=0.1)
    started = time.monotonic()
    watcher.wait({0: "_first"}, 1.0)
    elapsed = time.monotonic() - started
    # Without backoff a 1 ms interval would poll ~1000 times; with it: ~7 doublings
    # to the 0.1 s ceiling, then one poll per 0.1 s.
    assert 2 <= watcher.polls <= 7 + elapsed / 0.1 + 5


def test_backoff_doubles_to_the_ceiling_and_resets_after_a_change():
    intervals = [0.005]
    for _ in range(10):
        intervals.append(next_interval(intervals[-1], changed=False, minimum=0.005, maximum=0.1))
    assert intervals[:6] == [0.005, 0.01, 0.02, 0.04, 0.08, 0.1]
    assert set(intervals[5:]) == {0.1}
    assert next_interval(0.1, changed=True, minimum=0.005, maximum=0.1) == 0.005


class FailingHead(CountingSource):
    def fetch(
        self, partition: int, cursor: str, limit: int, type_filter: TypeFilter | None = None
    ) -> Page:
        if cursor == "_last":
            raise SourceUnavailable("database down")
        return super().fetch(partition, cursor, limit, type_filter)


def test_failing_polls_are_logged_once_and_the_waiter_times_out(caplog):
    watcher = HeadWatcher(FailingHead(1), min_interval=0.001, max_interval=0.01)
    with caplog.at_level(logging.WARNING, logger="zeh_mssql.longpoll"):
        assert watcher.wait({0: "_first"}, 0.3) == frozenset()
    assert watcher.polls >= 2
    assert [r.getMessage() for r in caplog.records] == ["long-poll of partition 0 failed"]


def test_last_must_be_resolved_before_waiting():
    with pytest.raises(ValueError, match="_last"):
        HeadWatcher(CountingSource(1)).wait({0: "_last"}, 1)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"min_interval": 0}, "0 < min_interval <= max_interval"),
        ({"min_interval": 2, "max_interval": 1}, "0 < min_interval <= max_interval"),
        ({"check_interval": 0}, "check_interval must be positive"),
    ],
)
def test_options_are_checked(options, message):
    with pytest.raises(ValueError, match=message):
        HeadWatcher(CountingSource(1), **options)
