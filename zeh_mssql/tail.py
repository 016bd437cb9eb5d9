"""Print a feed's events as JSON lines: the engine of ``zeh-mssql tail``."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, BinaryIO, TextIO

import orjson

from zeh_mssql.client import ALL_HEADERS, DEFAULT_PAGE_SIZE, Client, Cursor, EventPage, FetchError
from zeh_mssql.consumer import Backoff
from zeh_mssql.source import FIRST

__all__ = ["FOLLOW_BACKOFF", "tail"]

FOLLOW_BACKOFF = Backoff(initial=0.25, maximum=5.0)
"""How long ``--follow`` waits between polls of an idle feed, and after server errors."""


def tail(
    client: Client,
    out: BinaryIO,
    *,
    start: str = FIRST,
    follow: bool = False,
    envelope: bool = False,
    page_size_hint: int = DEFAULT_PAGE_SIZE,
    progress: TextIO | None = None,
    warn: Callable[[str], None] | None = None,
    backoff: Backoff = FOLLOW_BACKOFF,
    sleep: Callable[[float], None] = time.sleep,
    stop: Callable[[], bool] | None = None,
    wait: float = 0.0,
) -> int:
    """Write every partition's events to ``out``, one JSON line each; return how many.

    Each line is the event's data, or with ``envelope`` the whole protocol
    line (partition, all headers, data). Without ``follow`` it returns at the
    first page without events; with it, it keeps polling with ``backoff`` and
    retries errors that may pass (``warn`` hears about each), until ``stop``
    returns True. ``progress`` gets a running count and rate.

    With ``follow`` and ``wait`` (seconds) each request long-polls: the server
    holds it until new events arrive or the wait runs out, and an idle page
    only sleeps what its request did not already wait of the backoff delay.
    """
    cursors = {p: start for p in range(client.partition_count)}
    headers = [ALL_HEADERS] if envelope else []
    page = EventPage()
    count = 0
    attempt = 0
    started = time.monotonic()
    try:
        while stop is None or not stop():
            page.clear()
            requested = time.monotonic()
            try:
                client.fetch_events(
                    [Cursor(p, c) for p, c in cursors.items()],
                    page_size_hint,
                    page,
                    headers,
                    # Without follow the first empty page ends the run: no reason to hold it.
                    wait=wait if follow else 0.0,
                )
            except FetchError as exc:
                if not (follow and exc.retryable):
                    raise
                delay = backoff.delay(attempt)
                if warn is not None:
                    warn(f"{exc}; retrying in {delay:g} s")
                attempt += 1
                sleep(delay)
                continue
            if page.events:
                out.write(
                    b"".join(_line(e.partition, e.headers, e.data, envelope) for e in page.events)
                )
                out.flush()
                count += len(page.events)
                if progress is not None:
                    rate = count / max(time.monotonic() - started, 1e-3)
                    progress.write(f"\r{count} events read, {rate:,.0f} events/s")
                    progress.flush()
            cursors.update(page.cursors)
            if page.events:
                attempt = 0
            elif not follow:
                break
            else:
                delay = backoff.idle_delay(attempt, wait=wait, requested=requested)
                if delay > 0:
                    sleep(delay)
                attempt += 1
    finally:
        if progress is not None and count:
            progress.write("\n")
            progress.flush()
    return count


def _line(partition: int, headers: Mapping[str, str], data: Any, envelope: bool) -> bytes:
    if envelope:
        return (
            orjson.dumps({"partition": partition, "headers": dict(headers), "data": data}) + b"\n"
        )
    return orjson.dumps(data) + b"\n"
