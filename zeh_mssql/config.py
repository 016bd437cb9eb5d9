"""Server configuration, read from ``ZEH_MSSQL_*`` environment variables.

Every error names the variable at fault, so a misconfigured deployment says
what to fix in one line. Secrets (connection strings, tokens) are kept out of
the dataclass's ``repr``.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_PATH_TEMPLATE = "/{feed}/feed/v1"
FEED_PLACEHOLDER = "{feed}"
_FEED_NAME = re.compile(r"[A-Za-z0-9_.-]{1,128}")
_PATH_CHARS = re.compile(r"[A-Za-z0-9_.~/-]*")
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class ConfigError(ValueError):
    """A configuration value is missing or invalid; the message names the variable."""


@dataclass(frozen=True)
class Config:
    """Everything ``create_app`` needs to serve feeds from SQL Server."""

    dsn: str = field(repr=False)
    """ODBC connection string of the primary database."""
    replica_dsn: str | None = field(default=None, repr=False)
    """Optional read replica (``ApplicationIntent=ReadOnly``) for reads behind the head."""
    feeds: tuple[str, ...] | None = None
    """Feeds to serve; ``None`` serves every feed in the registry."""
    path_template: str = DEFAULT_PATH_TEMPLATE
    default_page_size: int = 1000
    max_page_size: int = 10000
    tokens: frozenset[str] = field(default=frozenset(), repr=False)
    """Accepted bearer tokens; empty means no authentication."""
    login_timeout: int = 5
    """Seconds to wait for a connection (login) to the database."""
    query_timeout: int = 30
    """Seconds a single database call may take."""
    pool_size: int = 8
    """Database connections per process, per database (primary and replica)."""
    log_level: str = "INFO"
    max_wait: int = 30
    """Seconds a long-poll (a request's ``wait``) may hold a request at most; 0 turns it off."""
    poll_ceiling_ms: int = 1000
    """Longest pause between two polls of a partition that requests wait on: the most an
    event waits before a long-poll sees it."""

    def __post_init__(self) -> None:
        if not self.dsn.strip():
            raise ConfigError("ZEH_MSSQL_DSN: must not be empty")
        check_path_template(self.path_template)
        if self.feeds is not None:
            for name in self.feeds:
                check_feed_name(name, variable="ZEH_MSSQL_FEEDS")
        if not 1 <= self.default_page_size <= self.max_page_size:
            raise ConfigError(
                "ZEH_MSSQL_DEFAULT_PAGE_SIZE: must be between 1 and ZEH_MSSQL_MAX_PAGE_SIZE "
                f"({self.max_page_size}), got {self.default_page_size}"
            )
        if self.log_level not in _LOG_LEVELS:
            raise ConfigError(
                f"ZEH_MSSQL_LOG_LEVEL: expected one of {', '.join(_LOG_LEVELS)}, "
                f"got {self.log_level!r}"
            )

    @property
    def log_level_number(self) -> int:
        """``log_level`` as a ``logging`` level number."""
        return logging.getLevelNamesMapping()[self.log_level]

    def feed_path(self, feed: str) -> str:
        """The URL path at which ``feed`` is served."""
        return self.path_template.replace(FEED_PLACEHOLDER, feed)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Config:
        """Read the configuration from ``env`` (default: the process environment)."""
        env = os.environ if env is None else env
        dsn = _text(env, "ZEH_MSSQL_DSN")
        if dsn is None:
            raise ConfigError("ZEH_MSSQL_DSN: not set; give the ODBC connection string")
        feeds = _text(env, "ZEH_MSSQL_FEEDS")
        return cls(
            dsn=dsn,
            replica_dsn=_text(env, "ZEH_MSSQL_REPLICA_DSN"),
            feeds=None if feeds is None else _comma_list(feeds, "ZEH_MSSQL_FEEDS"),
            path_template=_text(env, "ZEH_MSSQL_PATH_TEMPLATE") or DEFAULT_PATH_TEMPLATE,
            default_page_size=env_int(env, "ZEH_MSSQL_DEFAULT_PAGE_SIZE", 1000, minimum=1),
            max_page_size=env_int(env, "ZEH_MSSQL_MAX_PAGE_SIZE", 10000, minimum=1),
            tokens=_tokens(env),
            login_timeout=env_int(env, "ZEH_MSSQL_LOGIN_TIMEOUT", 5, minimum=1),
            query_timeout=env_int(env, "ZEH_MSSQL_QUERY_TIMEOUT", 30, minimum=1),
            pool_size=env_int(env, "ZEH_MSSQL_POOL_SIZE", 8, minimum=1),
            log_level=(_text(env, "ZEH_MSSQL_LOG_LEVEL") or "INFO").upper(),
            max_wait=env_int(env, "ZEH_MSSQL_MAX_WAIT", 30, minimum=0),
            # Polls start 5 ms apart (zeh_mssql.longpoll), so the ceiling cannot be lower.
            poll_ceiling_ms=env_int(env, "ZEH_MSSQL_POLL_CEILING_MS", 1000, minimum=5),
        )


def check_path_template(template: str) -> None:
    """Raise ``ConfigError`` unless ``template`` is an absolute path with one ``{feed}``."""
    name = "ZEH_MSSQL_PATH_TEMPLATE"
    if not template.startswith("/"):
        raise ConfigError(f"{name}: must start with '/', got {template!r}")
    if template.count(FEED_PLACEHOLDER) != 1:
        raise ConfigError(f"{name}: must contain {{feed}} exactly once, got {template!r}")
    before, after = template.split(FEED_PLACEHOLDER)
    if not before.endswith("/") or not (after == "" or after.startswith("/")):
        raise ConfigError(f"{name}: {{feed}} must be a whole path segment, got {template!r}")
    if not _PATH_CHARS.fullmatch(before + after) or "//" in template:
        raise ConfigError(
            f"{name}: only letters, digits, '/', '-', '_', '.' and '~' may surround "
            f"{{feed}}, got {template!r}"
        )


def check_feed_name(name: str, *, variable: str) -> None:
    """Raise ``ConfigError`` unless ``name`` can stand in a URL path segment as it is."""
    if not _FEED_NAME.fullmatch(name):
        raise ConfigError(
            f"{variable}: {name[:60]!r} is not a servable feed name "
            "(letters, digits, '_', '-' and '.', at most 128)"
        )


def _text(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name, "").strip()
    return value or None


def env_int(env: Mapping[str, str], name: str, default: int, *, minimum: int) -> int:
    """Integer variable ``name`` of ``env`` (``default`` when unset or blank), at least ``minimum``.

    Raises ``ConfigError`` naming the variable.
    """
    text = _text(env, name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"{name}: expected an integer, got {text[:40]!r}") from None
    if value < minimum:
        raise ConfigError(f"{name}: must be at least {minimum}, got {value}")
    return value


def _comma_list(text: str, name: str) -> tuple[str, ...]:
    items = tuple(dict.fromkeys(item.strip() for item in text.split(",") if item.strip()))
    if not items:
        raise ConfigError(f"{name}: no names in {text!r}")
    return items


def _tokens(env: Mapping[str, str]) -> frozenset[str]:
    inline = _text(env, "ZEH_MSSQL_TOKENS")
    path = _text(env, "ZEH_MSSQL_TOKENS_FILE")
    if inline is not None and path is not None:
        raise ConfigError("ZEH_MSSQL_TOKENS_FILE: give either it or ZEH_MSSQL_TOKENS, not both")
    if inline is not None:
        return frozenset(_comma_list(inline, "ZEH_MSSQL_TOKENS"))
    if path is None:
        return frozenset()
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"ZEH_MSSQL_TOKENS_FILE: cannot read {path!r}: {exc.strerror}") from None
    # One token per line; blank lines and '#' comments let operators annotate the file.
    lines = (line.strip() for line in text.splitlines())
    tokens = frozenset(line for line in lines if line and not line.startswith("#"))
    if not tokens:
        raise ConfigError(f"ZEH_MSSQL_TOKENS_FILE: {path!r} holds no tokens")
    return tokens
