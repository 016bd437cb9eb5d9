"""zeh_mssql.partition_for_key agrees with the SQL side for every key we can think of."""

from __future__ import annotations

import contextlib
import json

import pytest

from tests.integration.feedsql import connect, create_feed, publish, read_all
from zeh_mssql import partition_for_key

KEYS = [
    "",
    " ",
    "a",
    "A",
    "key ",  # trailing spaces count: nvarchar comparisons ignore them, hashing must not
    " key",
    "customer-42",
    "Zoë",
    "naïve café",
    "ключ",
    "鍵",
    "🔑",
    "e\u0301",  # a combining accent: not normalized away
    "\u00e9",
    "tab\there",
    "line\nbreak",
    "x" * 450,  # the longest key publish takes
    "é" * 450,  # 900 UTF-8 bytes
    "😀" * 225,  # 450 UTF-16 code units, 900 UTF-8 bytes
    *(f"order-{i}" for i in range(300)),
    *(f"Ünïcode-{i}-ключ-🔑" for i in range(100)),
]


@pytest.mark.parametrize("count", [1, 2, 7, 32, 1000, 4096])
def test_python_and_sql_agree(migrated_dsn, count):
    with contextlib.closing(connect(migrated_dsn)) as conn:
        rows = conn.execute(
            "select cast(k.[key] as int) as position,"
            " changefeed.partition_for_key(cast(k.value as nvarchar(450)), ?) as p"
            " from openjson(?) as k order by position",
            count,
            json.dumps(KEYS),
        ).fetchall()
    assert [(r.position, r.p) for r in rows] == [
        (i, partition_for_key(key, count)) for i, key in enumerate(KEYS)
    ]


def test_the_sql_keys_arrive_intact(migrated_dsn):
    # Guards the test above: the keys SQL Server hashed are the keys Python hashed.
    with contextlib.closing(connect(migrated_dsn)) as conn:
        rows = conn.execute(
            "select cast(k.value as nvarchar(450)) from openjson(?) as k"
            " order by cast(k.[key] as int)",
            json.dumps(KEYS),
        ).fetchall()
    assert [r[0] for r in rows] == KEYS


@pytest.mark.parametrize("mode", ["outbox", "blocking"])
def test_publish_puts_a_keyed_event_where_python_says(migrated_dsn, mode):
    keys = KEYS[:20] + KEYS[-10:]
    with contextlib.closing(connect(migrated_dsn)) as conn:
        create_feed(conn, "keyed", 8, mode)
        for key in keys:
            publish(conn, "keyed", {"key": key}, partition_key=key)
        found = {
            row.json["key"]: partition
            for partition in range(8)
            for row in read_all(conn, "keyed", partition)[0]
        }
    assert found == {key: partition_for_key(key, 8) for key in keys}
