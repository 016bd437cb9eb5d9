"""FeedCatalog: the registry read on first need, re-read for unknown names, rate-limited."""

from __future__ import annotations

import pytest

from zeh_mssql.catalog import FeedCatalog, StaticCatalog
from zeh_mssql.config import ConfigError
from zeh_mssql.source import EventSource, SourceUnavailable
from zeh_mssql.sqlserver import FeedInfo
from zeh_mssql.testing import MemorySource


class Registry:
    """Stands in for ``list_feeds(pool)``: returns ``feeds``, or raises ``down``."""

    def __init__(self, *feeds: FeedInfo) -> None:
        self.feeds = list(feeds)
        self.down: Exception | None = None
        self.reads = 0

    def __call__(self) -> list[FeedInfo]:
        self.reads += 1
        if self.down is not None:
            raise self.down
        return list(self.feeds)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make_source(info: FeedInfo) -> EventSource:
    return MemorySource(info.partition_count)


ORDERS = FeedInfo("orders", 4, "outbox")
PAYMENTS = FeedInfo("payments", 2, "blocking")


def catalog_of(registry: Registry, clock: Clock, **options) -> FeedCatalog:
    return FeedCatalog(registry, make_source, refresh_interval=5.0, clock=clock, **options)


def test_the_registry_is_read_on_first_need_only():
    registry = Registry(ORDERS, PAYMENTS)
    catalog = catalog_of(registry, Clock())
    assert registry.reads == 0
    orders = catalog.get("orders")
    assert orders is not None
    assert orders.partition_count == 4
    assert catalog.get("orders") is orders
    assert catalog.get("payments") is not None
    assert registry.reads == 1


def test_all_lists_served_feeds_by_name():
    catalog = catalog_of(Registry(PAYMENTS, ORDERS), Clock())
    served = catalog.all()
    assert list(served) == ["orders", "payments"]
    assert [s.partition_count for s in served.values()] == [4, 2]


def test_an_unknown_name_rereads_the_registry_at_most_once_per_interval():
    registry = Registry(ORDERS)
    clock = Clock()
    catalog = catalog_of(registry, clock)
    assert catalog.get("orders") is not None
    registry.feeds.append(PAYMENTS)  # created after the server started
    assert catalog.get("nope") is None
    assert catalog.get("payments") is None  # still within the interval: no re-read
    assert registry.reads == 1
    clock.now += 5.0
    assert catalog.get("payments") is not None
    assert registry.reads == 2


def test_a_known_feed_keeps_its_source_and_a_changed_one_gets_a_new_one():
    registry = Registry(ORDERS, PAYMENTS)
    clock = Clock()
    catalog = catalog_of(registry, clock)
    orders, payments = catalog.get("orders"), catalog.get("payments")
    registry.feeds = [ORDERS, FeedInfo("payments", 8, "outbox")]
    clock.now += 10
    served = catalog.all()
    assert served["orders"] is orders
    assert served["payments"] is not payments
    assert served["payments"].partition_count == 8


def test_configured_names_limit_what_is_served_without_asking_the_database():
    registry = Registry(ORDERS, PAYMENTS)
    catalog = catalog_of(registry, Clock(), names=["orders", "later"])
    assert catalog.get("payments") is None
    assert registry.reads == 0
    assert list(catalog.all()) == ["orders"]


def test_registered_names_that_cannot_be_a_path_segment_are_not_served():
    registry = Registry(ORDERS, FeedInfo("has space", 1, "outbox"), FeedInfo("a/b", 1, "outbox"))
    assert list(catalog_of(registry, Clock()).all()) == ["orders"]


def test_a_database_outage_propagates_and_the_catalog_recovers_afterwards():
    registry = Registry(ORDERS)
    clock = Clock()
    catalog = catalog_of(registry, clock)
    registry.down = SourceUnavailable("primary database unavailable")
    with pytest.raises(SourceUnavailable):
        catalog.get("orders")
    with pytest.raises(SourceUnavailable):
        catalog.all()  # a failed read is not a read: it is tried again at once
    registry.down = None
    assert catalog.get("orders") is not None


def test_static_catalog_serves_what_it_is_given():
    orders = MemorySource(1)
    catalog = StaticCatalog({"orders": orders})
    assert catalog.get("orders") is orders
    assert catalog.get("other") is None
    assert dict(catalog.all()) == {"orders": orders}
    with pytest.raises(ConfigError):
        StaticCatalog({"not/ok": orders})
