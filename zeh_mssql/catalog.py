"""Which feeds a server process serves, read from the feed registry when first needed.

The registry is not read at start, so the server starts while the database is
down and learns its feeds once the database answers. A name the catalog does
not know triggers a re-read (at most once per ``refresh_interval``), so feeds
created after the start are served without a restart.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from zeh_mssql.config import ConfigError, check_feed_name
from zeh_mssql.source import EventSource
from zeh_mssql.sqlserver import FeedInfo

_log = logging.getLogger(__name__)


class Catalog(Protocol):
    """Finds the source of a served feed by name; what the app dispatches through."""

    def get(self, name: str) -> EventSource | None:
        """The source of feed ``name``, or ``None`` when it is not served."""

    def all(self) -> Mapping[str, EventSource]:
        """Every served feed by name, in name order."""


class StaticCatalog:
    """A fixed set of sources by name: serve any ``EventSource`` with ``create_app``."""

    def __init__(self, feeds: Mapping[str, EventSource]) -> None:
        for name in feeds:
            check_feed_name(name, variable="feeds")
        self._feeds = dict(sorted(feeds.items()))

    def get(self, name: str) -> EventSource | None:
        return self._feeds.get(name)

    def all(self) -> Mapping[str, EventSource]:
        return dict(self._feeds)


class FeedCatalog:
    """The served feeds of the registry, as sources made by ``make_source``, by name.

    ``read_registry`` lists the registry (``sqlserver.list_feeds`` on a pool) and
    raises what the pool raises when it cannot. ``names`` limits serving to
    those feeds; ``None`` serves every registered feed whose name fits in a URL
    path segment.
    """

    def __init__(
        self,
        read_registry: Callable[[], Sequence[FeedInfo]],
        make_source: Callable[[FeedInfo], EventSource],
        *,
        names: Sequence[str] | None = None,
        refresh_interval: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._read_registry = read_registry
        self._make_source = make_source
        self._names = None if names is None else frozenset(names)
        self._refresh_interval = refresh_interval
        self._clock = clock
        self._lock = threading.Lock()
        self._feeds: dict[str, EventSource] = {}
        self._refreshed_at: float | None = None

    def get(self, name: str) -> EventSource | None:
        """The served feed ``name``, or ``None`` when it is not served."""
        if self._names is not None and name not in self._names:
            return None  # answered without asking the database
        # A known feed is answered without the lock, so requests for it never
        # queue behind a registry read that waits on a slow or absent database.
        feed = self._feeds.get(name)
        if feed is not None:
            return feed
        with self._lock:
            feed = self._feeds.get(name)
            if feed is None and self._stale():
                self._refresh()
                feed = self._feeds.get(name)
        return feed

    def all(self) -> Mapping[str, EventSource]:
        """Every served feed, by name, from a registry read at most ``refresh_interval`` ago."""
        with self._lock:
            if self._stale():
                self._refresh()
            return {name: self._feeds[name] for name in sorted(self._feeds)}

    def _stale(self) -> bool:
        return (
            self._refreshed_at is None
            or self._clock() - self._refreshed_at >= self._refresh_interval
        )

    def _refresh(self) -> None:
        feeds: dict[str, EventSource] = {}
        for info in self._read_registry():
            if not self._serves(info):
                continue
            known = self._feeds.get(info.name)
            if known is not None and known.partition_count == info.partition_count:
                feeds[info.name] = known  # the same object: callers cache by identity
            else:
                feeds[info.name] = self._make_source(info)
        if self._names is not None:
            for missing in sorted(self._names - feeds.keys()):
                _log.warning("feed %s is configured to be served but is not registered", missing)
        self._feeds = feeds
        self._refreshed_at = self._clock()

    def _serves(self, info: FeedInfo) -> bool:
        if self._names is not None:
            return info.name in self._names
        try:
            check_feed_name(info.name, variable="registry")
        except ConfigError:
            _log.warning("feed %r is not served: its name cannot be a URL path segment", info.name)
            return False
        return True
