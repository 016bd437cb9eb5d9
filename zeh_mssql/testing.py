"""An in-memory ``EventSource``, for tests of servers and consumers (ours and users')."""

from __future__ import annotations

import bisect
import secrets
import threading
import time
from collections.abc import Mapping
from typing import Any

import orjson

from zeh_mssql.protocol import cursor_bytes, cursor_text
from zeh_mssql.source import FIRST, LAST, Event, Page, TypeFilter

# Fresh random parts keep their top bit clear so counting up within one
# millisecond can never overflow the 80 bits (the same scheme as the SQL side).
_RANDOM_BITS = 79


class MemorySource:
    """A thread-safe partitioned event log kept in memory.

    Positions are real ULIDs, strictly increasing within a partition, and cursor
    semantics match the SQL Server backend: ``_first`` reads from the start,
    ``_last`` resolves to the current head (``_first`` while a partition is empty).
    """

    def __init__(self, partition_count: int) -> None:
        if partition_count < 1:
            raise ValueError(f"partition_count must be at least 1, got {partition_count}")
        self._partition_count = partition_count
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._positions: list[list[bytes]] = [[] for _ in range(partition_count)]
        self._events: list[list[Event]] = [[] for _ in range(partition_count)]
        self._last_ms = [0] * partition_count
        self._next_random = [0] * partition_count

    @property
    def partition_count(self) -> int:
        return self._partition_count

    def append(
        self,
        partition: int,
        data: Any,
        *,
        headers: Mapping[str, str] | None = None,
        event_type: str | None = None,
    ) -> str:
        """Append one event and return its cursor.

        ``data`` is a JSON object or array: as Python values, or as JSON text
        (``str``), which is stored as given. ``headers`` maps names to strings.
        """
        self._check_partition(partition)
        event = Event(
            data=_json_document(data), headers=_headers_json(headers), event_type=event_type
        )
        with self._lock:
            position = self._next_position(partition)
            self._positions[partition].append(position)
            self._events[partition].append(event)
            self._changed.notify_all()
        return cursor_text(position)

    def fetch(
        self,
        partition: int,
        cursor: str,
        limit: int,
        type_filter: TypeFilter | None = None,
    ) -> Page:
        """Up to ``limit`` events after ``cursor``; see ``EventSource.fetch``."""
        self._check_partition(partition)
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        with self._lock:
            positions = self._positions[partition]
            if cursor == LAST:
                return Page((), cursor_text(positions[-1]) if positions else FIRST)
            start = bisect.bisect_right(positions, cursor_bytes(cursor))
            window = self._events[partition][start : start + limit]
            if not window:
                return Page((), cursor)
            end_cursor = cursor_text(positions[start + len(window) - 1])
        if type_filter is not None:
            window = [e for e in window if _matches(e, type_filter)]
        return Page(tuple(window), end_cursor)

    def wait_for_append(self, timeout: float) -> bool:
        """Block until any event is appended or ``timeout`` seconds pass; True if appended."""
        with self._lock:
            return self._changed.wait(timeout)

    def __len__(self) -> int:
        with self._lock:
            return sum(len(p) for p in self._positions)

    def _check_partition(self, partition: int) -> None:
        if not 0 <= partition < self._partition_count:
            raise ValueError(
                f"partition {partition} out of range: the source has {self._partition_count}"
            )

    def _next_position(self, partition: int) -> bytes:
        now_ms = max(time.time_ns() // 1_000_000, self._last_ms[partition])
        if now_ms > self._last_ms[partition]:
            self._last_ms[partition] = now_ms
            self._next_random[partition] = secrets.randbits(_RANDOM_BITS)
        random_part = self._next_random[partition]
        self._next_random[partition] = random_part + 1
        return now_ms.to_bytes(6, "big") + random_part.to_bytes(10, "big")


def _json_document(data: Any) -> str:
    if isinstance(data, str):
        try:
            value = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"data is not valid JSON: {exc}") from None
        text = data
    else:
        value = data
        try:
            text = orjson.dumps(data).decode()
        except TypeError as exc:
            raise ValueError(f"data cannot be serialised as JSON: {exc}") from None
    if not isinstance(value, dict | list):
        raise ValueError("data must be a JSON object or array, as the SQL Server backend requires")
    return text


def _headers_json(headers: Mapping[str, str] | None) -> str | None:
    if headers is None:
        return None
    for name, value in headers.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise ValueError(f"headers must map strings to strings, got {name!r}: {value!r}")
    return orjson.dumps(dict(headers)).decode()


def _matches(event: Event, type_filter: TypeFilter) -> bool:
    listed = (event.event_type or "").lower() in type_filter.types
    return listed != type_filter.exclude
