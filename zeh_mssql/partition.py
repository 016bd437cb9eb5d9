"""The partition a partition key maps to, exactly as ``changefeed.publish`` computes it.

The function is part of the feed's contract: writers publishing from Python and from
T-SQL must agree on it for every key, or events of one key land in two partitions and
lose their order. It is the first four bytes of SHA-256 over the key's UTF-8 bytes,
read as a big-endian unsigned integer, modulo the partition count.
"""

from __future__ import annotations

import hashlib

MAX_KEY_LENGTH = 450
"""UTF-16 code units, as SQL Server counts ``nvarchar`` characters; longer keys are refused."""


def partition_for_key(key: str, partition_count: int) -> int:
    """The partition (``0 <= p < partition_count``) that events with ``key`` go to."""
    if not isinstance(key, str):
        raise TypeError(f"partition key must be a str, not {type(key).__name__}")
    if isinstance(partition_count, bool) or not isinstance(partition_count, int):
        raise TypeError(f"partition_count must be an int, not {type(partition_count).__name__}")
    if partition_count < 1:
        raise ValueError(f"partition_count must be at least 1, not {partition_count}")
    # SQL Server's nvarchar(450) limit counts UTF-16 code units: a character
    # outside the BMP takes two.
    length = len(key.encode("utf-16-le", "surrogatepass")) // 2
    if length > MAX_KEY_LENGTH:
        raise ValueError(
            f"partition key is {length} characters (UTF-16 code units) long; "
            f"changefeed.publish accepts at most {MAX_KEY_LENGTH}"
        )
    try:
        encoded = key.encode("utf-8")
    except UnicodeEncodeError as exc:
        # Lone surrogates have no UTF-8 form, and SQL Server could not hash them either.
        raise ValueError(
            f"partition key is not valid Unicode text (unpaired surrogate at index {exc.start})"
        ) from None
    digest = hashlib.sha256(encoded).digest()
    return int.from_bytes(digest[:4], "big") % partition_count
