"""Waiting in tests for something another thread or process does.

Bounds on time are generous on purpose: tests check behaviour, never speed.
"""

from __future__ import annotations

import time
from collections.abc import Callable

PATIENCE = 10.0
"""Seconds a test waits for what should happen at once before it fails."""


def eventually(
    condition: Callable[[], bool],
    what: str,
    *,
    patience: float = PATIENCE,
    every: float = 0.01,
) -> None:
    """Poll ``condition`` every ``every`` seconds until it holds; fail after ``patience``."""
    deadline = time.monotonic() + patience
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(every)
