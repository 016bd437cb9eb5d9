"""Bearer-token authentication: does an ``Authorization`` header carry an accepted token?

Knows nothing of HTTP frameworks; the app turns a refusal into a 401.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable


class BearerTokens:
    """A set of accepted bearer tokens, compared in constant time."""

    def __init__(self, tokens: Iterable[str]) -> None:
        self._tokens = tuple(token.encode() for token in tokens)
        if any(not token for token in self._tokens):
            raise ValueError("a bearer token must not be empty")

    @property
    def enabled(self) -> bool:
        """False when no token is configured, i.e. every request is accepted."""
        return bool(self._tokens)

    def accepts(self, authorization: str | None) -> bool:
        """True when ``authorization`` is ``Bearer <token>`` with an accepted token."""
        if not self._tokens:
            return True
        scheme, _, credentials = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer":
            return False
        given = credentials.strip().encode()
        # Compare against every token, without stopping early, so the time taken
        # says nothing about which token (or how much of one) matched.
        matched = False
        for token in self._tokens:
            matched |= hmac.compare_digest(token, given)
        return matched and bool(given)
