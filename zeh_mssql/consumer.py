"""Exactly-once consumption: a page's effects and its cursors commit in one transaction.

The consumer keeps its cursors in its own database. For each page it opens a
transaction, lets the handler write the effects of the events, records the
page's cursors in the same transaction and commits. A crash anywhere before the
commit leaves both the effects and the cursors as they were, so the next run
fetches the same page again; after the commit neither can be lost.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from zeh_mssql.client import (
    DEFAULT_PAGE_SIZE,
    Client,
    Cursor,
    FeedEvent,
    FetchError,
    HTTPStatusError,
    TypedEventPage,
)
from zeh_mssql.source import FIRST, LAST

__all__ = [
    "Backoff",
    "CursorConflict",
    "CursorStore",
    "MemoryCursorStore",
    "MemoryTransaction",
    "consume",
]

Tx = TypeVar("Tx")

_log = logging.getLogger(__name__)


class CursorConflict(Exception):
    """A stored cursor is not the one this page was read from: another instance moved it.

    Raised by :meth:`CursorStore.save`; the transaction must roll back, which
    undoes this instance's effects of the page, so no event is applied twice.
    """


class CursorStore(Protocol[Tx]):
    """Where a consumer keeps its cursors: in the database its effects go to."""

    def load(self) -> dict[int, str]:
        """The saved cursors by partition; partitions never saved are absent."""

    def transaction(self) -> AbstractContextManager[Tx]:
        """A transaction for one page: commits on normal exit, rolls back on an exception."""

    def save(
        self,
        transaction: Tx,
        cursors: Mapping[int, str],
        previous: Mapping[int, str] | None = None,
    ) -> None:
        """Record ``cursors`` inside ``transaction``.

        With ``previous`` (the saved cursors the page was read from; partitions
        never saved are absent), a partition whose saved cursor differs from
        its ``previous`` one raises :class:`CursorConflict`. Without it the
        cursors are written unconditionally.
        """


@dataclass
class MemoryTransaction:
    """One transaction of a :class:`MemoryCursorStore`: staged until it commits."""

    changes: list[Any] = field(default_factory=list)
    """Whatever the handler records as the effects of the page."""
    cursors: dict[int, str] = field(default_factory=dict)
    expected: dict[int, str | None] = field(default_factory=dict)
    """Per partition, the saved cursor this transaction was based on (None: never saved)."""


class MemoryCursorStore:
    """A :class:`CursorStore` in memory, with a transactional list of effects, for tests.

    Handlers append their effects to ``transaction.changes``; a commit moves
    them to :attr:`committed` together with the cursors, a rollback drops both.
    Like a database row lock held to the commit, the conflict check of
    :meth:`save` is repeated atomically with the commit.
    """

    def __init__(self, cursors: Mapping[int, str] | None = None) -> None:
        self._lock = threading.Lock()
        self.cursors: dict[int, str] = dict(cursors or {})
        """The committed cursors."""
        self.committed: list[Any] = []
        """The committed effects, in commit order."""
        self.commits = 0

    def load(self) -> dict[int, str]:
        with self._lock:
            return dict(self.cursors)

    @contextmanager
    def transaction(self) -> Iterator[MemoryTransaction]:
        staged = MemoryTransaction()
        yield staged
        with self._lock:
            self._check(staged.expected)
            self.committed.extend(staged.changes)
            self.cursors.update(staged.cursors)
            self.commits += 1

    def save(
        self,
        transaction: MemoryTransaction,
        cursors: Mapping[int, str],
        previous: Mapping[int, str] | None = None,
    ) -> None:
        if previous is not None:
            expected = {p: previous.get(p) for p in cursors}
            with self._lock:
                self._check(expected)
            transaction.expected.update(expected)
        transaction.cursors.update(cursors)

    def _check(self, expected: Mapping[int, str | None]) -> None:
        for partition, cursor in expected.items():
            if self.cursors.get(partition) != cursor:
                raise CursorConflict(
                    f"partition {partition}: the saved cursor is "
                    f"{self.cursors.get(partition)!r}, not {cursor!r}"
                )


@dataclass(frozen=True, slots=True)
class Backoff:
    """Capped exponential delays: ``initial * factor**attempt``, at most ``maximum`` seconds."""

    initial: float = 0.5
    maximum: float = 30.0
    factor: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.initial <= self.maximum or self.factor < 1:
            raise ValueError("backoff needs 0 < initial <= maximum and factor >= 1")

    def delay(self, attempt: int) -> float:
        """The delay before retry number ``attempt`` (counted from 0)."""
        # Bounding the exponent keeps the power finite for very long outages.
        return min(self.maximum, self.initial * self.factor ** min(attempt, 64))

    def idle_delay(self, attempt: int, *, wait: float, requested: float) -> float:
        """The delay after idle page number ``attempt``, less what its long-poll waited.

        ``requested`` is the request's ``time.monotonic()``; with ``wait`` > 0 the
        server may have held it, and that time counts towards the delay. Nothing
        to sleep when the result is not positive.
        """
        delay = self.delay(attempt)
        if wait > 0:
            delay -= time.monotonic() - requested
        return delay


Stop = threading.Event | Callable[[], bool]
"""Ends :func:`consume`: an event that is set, or a callable that returns True."""


def consume(
    client: Client,
    store: CursorStore[Tx],
    handle: Callable[[Tx, list[FeedEvent[Any]]], None],
    *,
    partitions: Iterable[int] | None = None,
    start: str = FIRST,
    page_size_hint: int = DEFAULT_PAGE_SIZE,
    decode: type[Any] | Callable[[Any], Any] | None = None,
    headers: Sequence[str] = (),
    stop: Stop | None = None,
    backoff: Backoff = Backoff(),
    sleep: Callable[[float], None] | None = None,
    wait: float = 0.0,
) -> int:
    """Read the feed page by page, applying each page exactly once; return the events handled.

    For each page with events, ``handle(transaction, events)`` runs inside
    ``store.transaction()``, and the page's cursors are saved in the same
    transaction before it commits. Partitions without a saved cursor start at
    ``start`` (``_first`` or ``_last``). ``decode`` turns each event's data into
    a type, as :class:`TypedEventPage` does.

    When the feed has no new events, and when the server is unavailable (429,
    502, 503, 504, connection or timeout failures, a response cut off), the loop
    waits with ``backoff`` (honouring ``Retry-After``, up to the cap) and tries
    again. Other errors, including the handler's, roll the page back and
    propagate: the next run starts again from the last committed page.

    ``stop`` ends the loop, checked before each fetch: a ``threading.Event``
    (which also cuts waits short) or a callable returning True. Without it the
    loop runs until an error. ``sleep`` replaces the waiting, e.g. in tests.

    With ``wait`` (seconds) each fetch long-polls: a server that has no new
    events holds the request until some arrive or the wait runs out, so new
    events are handled as soon as the server sees them instead of after a
    backoff delay. An idle page then only sleeps what its request did not
    already wait of the backoff delay, so a server that does not hold requests
    is still not polled in a tight loop. ``stop`` is seen between requests,
    after at most ``wait`` seconds.
    """
    if start not in (FIRST, LAST):
        raise ValueError(f"start must be {FIRST!r} or {LAST!r}, not {start!r}")
    wanted = sorted(set(range(client.partition_count) if partitions is None else partitions))
    if not wanted:
        raise ValueError("no partitions to consume")
    should_stop, pause = _stopper(stop, sleep)

    saved = {p: c for p, c in store.load().items() if p in wanted}
    position = {p: saved.get(p, start) for p in wanted}
    page: TypedEventPage[Any] = TypedEventPage(decode if decode is not None else _identity)
    handled = 0
    attempt = 0
    while not should_stop():
        page.clear()
        requested = time.monotonic()
        try:
            client.fetch_events(
                [Cursor(p, position[p]) for p in wanted], page_size_hint, page, headers, wait=wait
            )
        except FetchError as exc:
            if not exc.retryable:
                raise
            delay = _retry_delay(exc, backoff, attempt)
            _log.warning("fetching %s failed, retrying in %.1f s: %s", client.url, delay, exc)
            attempt += 1
            pause(delay)
            continue

        moved = {p: c for p, c in page.cursors.items() if c != position[p]}
        if page.events or moved:
            events = list(page.events)
            with store.transaction() as transaction:
                if events:
                    handle(transaction, events)
                store.save(transaction, moved, saved)
            saved.update(moved)
            position.update(moved)
            handled += len(events)
        if page.events:
            attempt = 0
        else:
            delay = backoff.idle_delay(attempt, wait=wait, requested=requested)
            if delay > 0:
                pause(delay)
            attempt += 1
    return handled


def _identity(data: Any) -> Any:
    return data


def _retry_delay(exc: FetchError, backoff: Backoff, attempt: int) -> float:
    delay = backoff.delay(attempt)
    if isinstance(exc, HTTPStatusError) and exc.retry_after is not None:
        delay = min(max(delay, exc.retry_after), backoff.maximum)
    return delay


def _stopper(
    stop: Stop | None, sleep: Callable[[float], None] | None
) -> tuple[Callable[[], bool], Callable[[float], None]]:
    if isinstance(stop, threading.Event):
        event = stop

        def wait_unless_stopped(seconds: float) -> None:
            event.wait(seconds)

        return event.is_set, sleep or wait_unless_stopped
    return (stop or _never), sleep or time.sleep


def _never() -> bool:
    return False
