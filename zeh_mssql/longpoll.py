"""Long-polling: hold requests until a partition has events after their cursor.

Every request that waits registers its partitions and cursors with a
``HeadWatcher``. While a partition has at least one waiter, one thread polls the
partition's head (the position of its last event, through
``source.fetch(partition, "_last", 1)``) and wakes the waiters whose cursor the
head has passed. However many requests wait on a partition, the source sees one
query per poll tick for it. Positions only grow, so comparing a cursor with the
last head seen never misses an event appended between the request's own read
and its registration: the next poll sees it.

Polls start a few milliseconds apart and back off (doubling) to a ceiling while
nothing changes; a change resets the interval, since events tend to come in
bursts. An event appended while a request waits is therefore seen within the
ceiling. When a partition's last waiter leaves, its poll thread ends.

Knows nothing of HTTP or SQL: the caller passes ``gone`` to stop waiting for a
client that disconnected.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from zeh_mssql.protocol import cursor_bytes
from zeh_mssql.source import LAST, EventSource

_log = logging.getLogger(__name__)

DEFAULT_MIN_INTERVAL = 0.005
DEFAULT_MAX_INTERVAL = 1.0
DEFAULT_CHECK_INTERVAL = 0.25


class _Waiter:
    """One waiting request; its event is set when a partition it waits on moves."""

    __slots__ = ("woken",)

    def __init__(self) -> None:
        self.woken = threading.Event()


@dataclass(eq=False)
class _Watch:
    """The shared state of one watched partition."""

    waiters: set[_Waiter] = field(default_factory=set)
    head: bytes | None = None
    """The head at the last successful poll; ``None`` before the first one."""
    idle: threading.Event = field(default_factory=threading.Event)
    """Set when the last waiter leaves, so the poll thread stops without finishing its sleep."""
    polling: bool = False


class HeadWatcher:
    """Shares one poll per partition of ``source`` among all requests waiting on it.

    ``min_interval`` and ``max_interval`` (seconds) bound the time between two
    polls of a partition; ``max_interval`` is the ceiling on how late a waiter
    learns of a new event. Waiters check ``gone`` every ``check_interval``.
    """

    def __init__(
        self,
        source: EventSource,
        *,
        min_interval: float = DEFAULT_MIN_INTERVAL,
        max_interval: float = DEFAULT_MAX_INTERVAL,
        check_interval: float = DEFAULT_CHECK_INTERVAL,
    ) -> None:
        if not 0 < min_interval <= max_interval:
            raise ValueError(
                "poll intervals must satisfy 0 < min_interval <= max_interval, got "
                f"{min_interval} and {max_interval}"
            )
        if check_interval <= 0:
            raise ValueError(f"check_interval must be positive, got {check_interval}")
        self._source = source
        self.min_interval = min_interval
        self.max_interval = max_interval
        self._check_interval = check_interval
        self._lock = threading.Lock()
        self._watches: dict[int, _Watch] = {}
        self._polls = 0

    @property
    def polls(self) -> int:
        """Head polls made so far (successful or not), over all partitions."""
        with self._lock:
            return self._polls

    def waiting(self, partition: int | None = None) -> int:
        """Requests waiting now: on ``partition``, or on any partition."""
        with self._lock:
            if partition is not None:
                watch = self._watches.get(partition)
                return len(watch.waiters) if watch is not None else 0
            return len({w for watch in self._watches.values() for w in watch.waiters})

    def polling(self) -> frozenset[int]:
        """The partitions that have a poll thread running now."""
        with self._lock:
            return frozenset(p for p, watch in self._watches.items() if watch.polling)

    def wait(
        self,
        cursors: Mapping[int, str],
        timeout: float,
        *,
        gone: Callable[[], bool] | None = None,
    ) -> frozenset[int]:
        """Block until a partition has events after its cursor; return those partitions.

        ``cursors`` maps partitions to resolved cursors (``_first`` or a ULID, as
        a page's checkpoint is). Returns an empty set when ``timeout`` seconds
        pass first, or as soon as ``gone()`` is true.
        """
        positions = {partition: _position(cursor) for partition, cursor in cursors.items()}
        deadline = time.monotonic() + timeout
        waiter = _Waiter()
        with self._lock:
            for partition in positions:
                self._join(partition, waiter)
        try:
            while True:
                moved = self._moved(positions)
                if moved:
                    return moved
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (gone is not None and gone()):
                    return frozenset()
                waiter.woken.wait(min(remaining, self._check_interval))
                # Cleared before the heads are compared again: a head updated
                # after this point sets the event anew, so no wake-up is lost.
                waiter.woken.clear()
        finally:
            with self._lock:
                for partition in positions:
                    self._leave(partition, waiter)

    def _moved(self, positions: Mapping[int, bytes]) -> frozenset[int]:
        with self._lock:
            return frozenset(
                partition
                for partition, position in positions.items()
                if (head := self._watches[partition].head) is not None and head > position
            )

    def _join(self, partition: int, waiter: _Waiter) -> None:
        watch = self._watches.get(partition)
        if watch is None:
            watch = self._watches[partition] = _Watch()
        watch.waiters.add(waiter)
        if not watch.polling:
            watch.polling = True
            watch.idle.clear()
            thread = threading.Thread(
                target=self._poll,
                args=(partition, watch),
                name=f"zeh-longpoll-{partition}",
                daemon=True,
            )
            thread.start()

    def _leave(self, partition: int, waiter: _Waiter) -> None:
        watch = self._watches[partition]
        watch.waiters.discard(waiter)
        if not watch.waiters:
            watch.idle.set()

    def _poll(self, partition: int, watch: _Watch) -> None:
        interval = self.min_interval
        failing = False
        while True:
            with self._lock:
                if not watch.waiters:
                    watch.polling = False
                    # A head seen long ago is forgotten: the next waiter starts afresh.
                    if self._watches.get(partition) is watch:
                        del self._watches[partition]
                    return
                watch.idle.clear()
            head: bytes | None = None
            try:
                head = _position(self._source.fetch(partition, LAST, 1).cursor)
            except Exception:
                # Waiters keep waiting; their own final read reports the failure.
                if not failing:
                    _log.warning("long-poll of partition %d failed", partition, exc_info=True)
                failing = True
            else:
                failing = False
            with self._lock:
                self._polls += 1
                changed = head is not None and watch.head is not None and head != watch.head
                if head is not None and head != watch.head:
                    watch.head = head
                    for waiter in watch.waiters:
                        waiter.woken.set()
            if failing:
                interval = self.max_interval
            else:
                interval = next_interval(
                    interval, changed=changed, minimum=self.min_interval, maximum=self.max_interval
                )
            watch.idle.wait(interval)


def next_interval(interval: float, *, changed: bool, minimum: float, maximum: float) -> float:
    """Pause before the next poll: ``minimum`` after a change, else doubled up to ``maximum``."""
    return minimum if changed else min(interval * 2, maximum)


def _position(cursor: str) -> bytes:
    # _first is the zero position; _last has none and must be resolved by a read first.
    return cursor_bytes(cursor)
