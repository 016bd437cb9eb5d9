"""partition_for_key: the documented hash, its range, its spread and its errors."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zeh_mssql import partition_for_key

# First four bytes of SHA-256 of the UTF-8 key, computed with hashlib once:
# "" -> e3b0c442, "a" -> ca978112, "customer-42" -> a045eb33,
# "Ünïcødé ключ 🔑" -> baf260f9, "x" * 450 -> 72883c91.
VECTORS = [
    ("", 0xE3B0C442),
    ("a", 0xCA978112),
    ("customer-42", 0xA045EB33),
    ("Ünïcødé ключ 🔑", 0xBAF260F9),
    ("x" * 450, 0x72883C91),
]


@pytest.mark.parametrize(("key", "prefix"), VECTORS)
@pytest.mark.parametrize("count", [1, 2, 7, 32, 1000, 2**32 + 1])
def test_known_vectors(key, prefix, count):
    assert partition_for_key(key, count) == prefix % count


def test_known_vectors_spelled_out():
    # The same facts as literal answers, so a change of byte order or encoding shows.
    assert partition_for_key("customer-42", 32) == 19
    assert partition_for_key("a", 1000) == 610
    assert partition_for_key("Ünïcødé ключ 🔑", 7) == 1


def test_utf8_not_utf16():
    # "é" as UTF-8 (c3 a9) and as UTF-16-LE (e9 00) hash differently; UTF-8 is the contract.
    assert partition_for_key("é", 2**32) == 0x4A99557E
    assert partition_for_key("é", 2**32) != 0x63E3C807


@given(st.text(max_size=225), st.integers(min_value=1, max_value=10_000))
def test_in_range_and_deterministic(key, count):
    first = partition_for_key(key, count)
    assert 0 <= first < count
    assert partition_for_key(key, count) == first


def test_one_partition_takes_everything():
    assert {partition_for_key(f"key-{i}", 1) for i in range(100)} == {0}


def test_keys_spread_over_partitions():
    counts = Counter(partition_for_key(f"order-{i}", 8) for i in range(8000))
    assert set(counts) == set(range(8))
    # 1000 expected per partition; a uniform hash stays well within +-20 %.
    assert all(800 < n < 1200 for n in counts.values()), counts


@pytest.mark.parametrize("count", [0, -1])
def test_partition_count_below_one(count):
    with pytest.raises(ValueError, match="at least 1"):
        partition_for_key("k", count)


@pytest.mark.parametrize("count", [True, 2.0, "4", None])
def test_partition_count_not_an_int(count):
    with pytest.raises(TypeError, match="partition_count must be an int"):
        partition_for_key("k", count)


@pytest.mark.parametrize("key", [b"bytes", 42, None])
def test_key_not_a_str(key):
    with pytest.raises(TypeError, match="partition key must be a str"):
        partition_for_key(key, 4)


def test_key_with_lone_surrogate():
    with pytest.raises(ValueError, match="unpaired surrogate at index 1"):
        partition_for_key("a\ud800b", 4)


def test_key_longer_than_sql_server_accepts_is_refused():
    assert 0 <= partition_for_key("k" * 450, 8) < 8
    assert 0 <= partition_for_key("é" * 450, 8) < 8
    with pytest.raises(ValueError, match="451 characters"):
        partition_for_key("k" * 451, 8)
    # Outside the BMP a character is two UTF-16 code units, as nvarchar counts them.
    with pytest.raises(ValueError, match="452 characters"):
        partition_for_key("😀" * 226, 8)
    assert 0 <= partition_for_key("😀" * 225, 8) < 8
