"""The README's consumer examples still match the API (they run in full in tests/integration)."""

from __future__ import annotations

import inspect

from tests.readme_examples import load_consumer_examples
from zeh_mssql.client import TypedEventPage
from zeh_mssql.consumer import consume


def test_the_examples_define_what_the_readme_says_with_the_current_api() -> None:
    namespace = load_consumer_examples()

    assert namespace["THEIR_PARTITION_COUNT"] == 1
    event = namespace["TheirEvent"](order_id="o1", status="paid")
    page = TypedEventPage(namespace["TheirEvent"])
    page.event(0, {}, {"order_id": "o1", "status": "paid", "added_later": 1})
    page.checkpoint(0, "C")
    assert [e.data for e in page.events] == [event]
    for name in ("my_ingest", "my_ingest_with_consume", "my_write_effects"):
        assert callable(namespace[name])
    # The keyword arguments the consume example passes exist.
    assert {"start", "decode", "stop"} <= set(inspect.signature(consume).parameters)
