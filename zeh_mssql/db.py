"""Opening pyodbc connections and classifying their errors.

Shared by everything that talks to SQL Server (migrations, the feed source, the
cursor store, the CLI), so that timeouts, retries and secret handling agree.
"""

from __future__ import annotations

import re

import pyodbc

# SQLSTATE classes that mean "the server could not be reached or the link broke":
# connection exceptions (08xxx) and timeouts (HYT00 query, HYT01 connection).
_UNAVAILABLE_STATES = ("08", "HYT00", "HYT01")
DEADLOCK_VICTIM = 1205
_DRIVER_TAGS = re.compile(r"^\s*(?:\[[^\]]*\]\s*)+")
_TRAILING_CODES = re.compile(r"(?:\s*\((?:-?\d+|SQL\w+)\))+\s*$")
_NUMBER_BEFORE_FUNCTION = re.compile(r"\((\d{1,6})\)\s*\(SQL[A-Za-z]+\)")
_TRAILING_NUMBER = re.compile(r"\((\d{3,6})\)\s*$")
_PASSWORD = re.compile(r"(?i)\b(pwd|password)\s*=\s*(\{(?:[^}]|\}\})*\}|[^;]*)")


def connect(
    dsn: str, *, autocommit: bool = True, timeout: int = 5, query_timeout: int = 0
) -> pyodbc.Connection:
    """Open a connection; ``timeout`` bounds the login, ``query_timeout`` each statement.

    Both are in seconds; a ``query_timeout`` of 0 lets statements run unbounded.
    """
    connection = pyodbc.connect(dsn, autocommit=autocommit, timeout=timeout)
    # pyodbc's Connection.timeout is the ODBC query timeout of every later cursor.
    connection.timeout = query_timeout
    return connection


def sqlstate(exc: BaseException) -> str:
    """The SQLSTATE of a pyodbc error, or ``""``."""
    args = getattr(exc, "args", ())
    if args and isinstance(args[0], str) and len(args[0]) == 5:
        return args[0]
    return ""


def error_number(exc: BaseException) -> int | None:
    """The SQL Server error number named in a pyodbc error message, if any."""
    text = " ".join(str(a) for a in getattr(exc, "args", ()))
    # pyodbc ends each diagnostic record with "(number) (SQLFunctionName)"; the
    # message text before it may hold parenthesised digits of its own (a name).
    match = _NUMBER_BEFORE_FUNCTION.search(text) or _TRAILING_NUMBER.search(text)
    return int(match.group(1)) if match else None


def is_unavailable(exc: BaseException) -> bool:
    """True when the error means the database is unreachable, not that the query failed."""
    if isinstance(exc, pyodbc.InterfaceError | pyodbc.OperationalError):
        return True
    return sqlstate(exc).startswith(_UNAVAILABLE_STATES)


def is_deadlock(exc: BaseException) -> bool:
    """True when the session was chosen as a deadlock victim (error 1205)."""
    return sqlstate(exc) == "40001" or error_number(exc) == DEADLOCK_VICTIM


def server_message(exc: BaseException) -> str:
    """The human part of a pyodbc error: without SQLSTATE, driver tags and call names.

    ``[42000] [FreeTDS][SQL Server]unknown feed (51001) (SQLExecDirectW)`` becomes
    ``unknown feed``; fit for a one-line message to a user.
    """
    args = getattr(exc, "args", ())
    text = str(args[-1]) if args else str(exc)
    text = _DRIVER_TAGS.sub("", text)
    text = _TRAILING_CODES.sub("", text)
    return text.strip() or type(exc).__name__


def redact_dsn(dsn: str) -> str:
    """The connection string with its password replaced, fit for logs and messages."""
    return _PASSWORD.sub(lambda m: f"{m.group(1)}=***", dsn)
