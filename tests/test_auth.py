"""BearerTokens: which Authorization headers are accepted."""

from __future__ import annotations

import pytest

from zeh_mssql.auth import BearerTokens


def test_no_tokens_accepts_everything():
    tokens = BearerTokens([])
    assert not tokens.enabled
    assert tokens.accepts(None)
    assert tokens.accepts("Bearer anything")


@pytest.mark.parametrize(
    ("header", "accepted"),
    [
        ("Bearer alpha", True),
        ("bearer beta", True),
        ("BEARER  alpha ", True),
        ("Bearer alph", False),
        ("Bearer alphaa", False),
        ("Bearer ", False),
        ("Bearer", False),
        ("Basic alpha", False),
        ("alpha", False),
        ("Bearer ålpha", False),
        ("", False),
        (None, False),
    ],
)
def test_only_a_configured_bearer_token_is_accepted(header, accepted):
    tokens = BearerTokens(["alpha", "beta"])
    assert tokens.enabled
    assert tokens.accepts(header) is accepted


def test_an_empty_token_cannot_be_configured():
    with pytest.raises(ValueError, match="empty"):
        BearerTokens(["alpha", ""])
