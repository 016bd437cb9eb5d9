"""Deterministic events shaped like those the SQL Server backend hands over.

``changefeed.read_feed`` returns each event's data and headers as JSON text
(``nvarchar``, so ``str`` through pyodbc) and its type as a string; that is what
``Event`` carries. The payloads here are order documents of about 1 KB as a
typical writer serialises them (``json.dumps`` spacing), with a trace header.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator

from zeh_mssql.source import Event

TARGET_BYTES = 1000
_TYPES = ("OrderCreated", "OrderPaid", "OrderShipped", "OrderCancelled")
# Text a Scandinavian or Japanese shop really stores; makes the UTF-8 path do work.
_NON_ASCII_NAMES = ("Ærøskøbing Bådeværft", "Søren Kierkegård", "東京都渋谷区", "Zoë Ångström")


def _document(rng: random.Random, number: int, non_ascii: bool) -> str:
    doc: dict[str, object] = {
        "order_id": f"ord-{number:09d}",
        "customer": {
            "id": rng.getrandbits(48),
            "name": (
                rng.choice(_NON_ASCII_NAMES) if non_ascii else f"Customer {rng.randrange(10**6)}"
            ),
            "email": f"customer{number}@example.com",
            "country": rng.choice(("NO", "SE", "DK", "FI", "JP")),
        },
        "lines": [
            {
                "sku": f"SKU-{rng.randrange(10**6):06d}",
                "quantity": rng.randrange(1, 9),
                "unit_price": rng.randrange(100, 100_000) / 100,
            }
            for _ in range(rng.randrange(3, 7))
        ],
        "currency": "NOK",
        "status": rng.choice(("created", "paid", "shipped")),
        "created_at": f"2024-05-{rng.randrange(1, 29):02d}T{rng.randrange(24):02d}:"
        f"{rng.randrange(60):02d}:{rng.randrange(60):02d}.{rng.randrange(1000):03d}Z",
    }
    text = json.dumps(doc, ensure_ascii=False)
    # Pad with a note so every document is close to TARGET_BYTES of UTF-8.
    room = TARGET_BYTES - len(text.encode()) - len(', "note": ""')
    if room > 0:
        doc["note"] = "".join(rng.choices("abcdefghijklmnopqrstuvwxyz ", k=room))
    return json.dumps(doc, ensure_ascii=False)


def make_events(count: int, *, seed: int = 7, non_ascii_share: float = 0.0) -> list[Event]:
    """``count`` events of ~1 KB of data; ``non_ascii_share`` of them hold non-ASCII text."""
    return list(iter_events(count, seed=seed, non_ascii_share=non_ascii_share))


def iter_events(count: int, *, seed: int = 7, non_ascii_share: float = 0.0) -> Iterator[Event]:
    rng = random.Random(seed)
    for number in range(count):
        non_ascii = rng.random() < non_ascii_share
        headers = json.dumps(
            {
                "trace-id": f"{rng.getrandbits(128):032x}",
                "source": "orders-service",
                "content-type": "application/json",
            }
        )
        yield Event(
            data=_document(rng, number, non_ascii),
            headers=headers,
            event_type=rng.choice(_TYPES),
        )


def as_fetched(events: list[Event]) -> list[Event]:
    """The same events with their text laid out in memory as a database driver hands it over.

    pyodbc decodes each ``nvarchar`` value of a page from UTF-16, row after row,
    so a page's strings sit one after another in memory. Strings built by
    ``make_events`` are scattered among its temporaries, which makes reading
    them slower than reading a fetched page (about 30% for the encoder).
    """

    def fetched(text: str) -> str:
        return text.encode("utf-16-le").decode("utf-16-le")

    return [
        Event(
            data=fetched(e.data),
            headers=None if e.headers is None else fetched(e.headers),
            event_type=e.event_type,
        )
        for e in events
    ]
