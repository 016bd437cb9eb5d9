"""Event sources for long-poll tests: one that counts reads, one whose head read can be held."""

from __future__ import annotations

import threading

from zeh_mssql.source import LAST, Page, TypeFilter
from zeh_mssql.testing import MemorySource


class CountingSource:
    """A ``MemorySource`` that counts head reads (``_last``, what long-polls do) and page reads."""

    def __init__(self, partition_count: int) -> None:
        self.memory = MemorySource(partition_count)
        self._lock = threading.Lock()
        self.head_reads = 0
        self.page_reads = 0

    @property
    def partition_count(self) -> int:
        return self.memory.partition_count

    def append(self, partition: int, data: object, *, event_type: str | None = None) -> str:
        return self.memory.append(partition, data, event_type=event_type)

    def fetch(
        self, partition: int, cursor: str, limit: int, type_filter: TypeFilter | None = None
    ) -> Page:
        with self._lock:
            if cursor == LAST:
                self.head_reads += 1
            else:
                self.page_reads += 1
        return self.memory.fetch(partition, cursor, limit, type_filter)


class GatedSource(CountingSource):
    """Head reads block until ``gate`` is set, so a test can hold a poll in flight."""

    def __init__(self, partition_count: int) -> None:
        super().__init__(partition_count)
        self.gate = threading.Event()
        self.head_read_started = threading.Event()

    def fetch(
        self, partition: int, cursor: str, limit: int, type_filter: TypeFilter | None = None
    ) -> Page:
        if cursor != LAST:
            return super().fetch(partition, cursor, limit, type_filter)
        with self._lock:
            self.head_reads += 1  # counted when it starts, not when the gate lets it finish
        self.head_read_started.set()
        if not self.gate.wait(30):
            raise TimeoutError("the test never opened the gate")
        return self.memory.fetch(partition, cursor, limit, type_filter)
