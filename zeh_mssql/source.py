"""The interface every event backend implements, and the values it returns.

A source serves one feed. Cursors crossing this interface are already validated
by the protocol layer: ``FIRST`` (``"_first"``), ``LAST`` (``"_last"``) or a
26-character upper-case ULID text. A ULID cursor means "the events after this
position"; it need not be the position of an existing event.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

FIRST = "_first"
LAST = "_last"


@dataclass(frozen=True, slots=True)
class Event:
    """One event as stored: its payload is JSON text, handed on without parsing."""

    data: str
    """The event's JSON document, as text."""
    headers: str | None = None
    """A JSON object of string values, as text; ``None`` when the event has none."""
    event_type: str | None = None


@dataclass(frozen=True, slots=True)
class Page:
    """The events of one partition after a cursor, and the checkpoint after them.

    ``cursor`` is where the next read of the partition continues. With no events
    it is the input cursor resolved: ``_last`` becomes the current head (or
    ``_first`` when the partition is empty), so it is always safe to store.
    """

    events: Sequence[Event]
    cursor: str


@dataclass(frozen=True, slots=True)
class TypeFilter:
    """Select events by type (case-insensitive): only ``types``, or all but them."""

    types: frozenset[str]
    """Lower-cased event types."""
    exclude: bool = False


class SourceError(Exception):
    """A backend failure that is not the caller's fault (the server answers 500)."""


class SourceUnavailable(SourceError):
    """The backend cannot be reached right now; retrying later may work (503)."""


@runtime_checkable
class EventSource(Protocol):
    """A partitioned, ordered event log that can be read page by page."""

    @property
    def partition_count(self) -> int:
        """How many partitions the feed has; fixed for the life of the feed."""

    def fetch(
        self,
        partition: int,
        cursor: str,
        limit: int,
        type_filter: TypeFilter | None = None,
    ) -> Page:
        """Return at most ``limit`` events of ``partition`` after ``cursor``, in order.

        With ``type_filter`` only matching events are returned, and the page's
        cursor still moves past the events that did not match. Raises
        ``SourceUnavailable`` when the backend is unreachable and ``SourceError``
        for other backend failures.
        """
