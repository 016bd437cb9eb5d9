"""A per-process, thread-safe pool of database connections.

Nothing connects until the first call, so a pool made before gunicorn forks
holds no sockets the workers would share. Work runs through ``run``, which owns
the failure policy of the server's database calls:

- a connection that failed because the link broke is discarded (with every
  idle one, which a restarted server has also dropped) and the work is retried
  once on a fresh connection;
- a deadlock victim (error 1205), or a reader that could not get a partition's
  drain lock (51012, raised by changefeed.read_feed), is retried with a short
  backoff, and reported unavailable if the contention outlasts the retries;
- the database being unreachable surfaces as ``SourceUnavailable``, any other
  database error as ``SourceError``; their messages never carry the connection
  string.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import pyodbc

from zeh_mssql import db
from zeh_mssql.source import SourceError, SourceUnavailable

T = TypeVar("T")
DRAIN_LOCK_NOT_GRANTED = 51012
"""changefeed.read_feed could not take a partition's application lock in time."""
_log = logging.getLogger(__name__)


class Connection(Protocol):
    """What the pool needs of a connection (pyodbc's satisfies it)."""

    def cursor(self) -> Any: ...

    def close(self) -> None: ...


ConnectionFactory = Callable[[], Connection]
"""Opens one new connection; raises a pyodbc error when it cannot."""


class ConnectionPool:
    """Lends connections to one thread at a time, keeping at most ``size`` open."""

    def __init__(
        self,
        connect: ConnectionFactory,
        *,
        size: int = 8,
        acquire_timeout: float = 10.0,
        deadlock_retries: int = 3,
        name: str = "database",
    ) -> None:
        if size < 1:
            raise ValueError(f"size must be at least 1, got {size}")
        self._connect = connect
        self._size = size
        self._acquire_timeout = acquire_timeout
        self._deadlock_retries = deadlock_retries
        self.name = name
        self._lock = threading.Lock()
        self._idle: list[Connection] = []
        self._slots = threading.BoundedSemaphore(size)
        self._pid = os.getpid()

    @property
    def idle_count(self) -> int:
        """Open connections waiting to be lent."""
        with self._lock:
            return len(self._idle)

    def run(self, work: Callable[[Connection], T]) -> T:
        """Call ``work`` with a pooled connection and return its result.

        ``work`` must be safe to repeat: it is called again after a broken link
        or a deadlock. Raises ``SourceUnavailable`` when the database cannot be
        reached and ``SourceError`` for other database errors.
        """
        if os.getpid() != self._pid:
            self._after_fork()
        deadlocks = 0
        reconnected = False
        while True:
            connection, fresh = self._acquire()
            try:
                result = work(connection)
            except pyodbc.Error as exc:
                if _contended(exc):
                    # The victim's transaction was rolled back; the session itself is fine.
                    self._release(connection)
                    if deadlocks < self._deadlock_retries:
                        deadlocks += 1
                        _log.info("%s: lock contention, retry %d: %s", self.name, deadlocks, exc)
                        time.sleep(_backoff(deadlocks))
                        continue
                    # Still contended: a client retrying later is the right answer (503).
                    raise SourceUnavailable(_describe(self.name, exc)) from exc
                self._discard(connection)
                if db.is_unavailable(exc):
                    if not fresh and not reconnected and _link_broken(exc):
                        # A pooled connection may have died with a server restart
                        # that is already over: retry once on a new one. (A query
                        # timeout is not retried: it would only double the wait.)
                        reconnected = True
                        self._discard_idle()
                        _log.info("%s: connection lost, reconnecting", self.name)
                        continue
                    raise SourceUnavailable(_describe(self.name, exc)) from exc
                raise SourceError(_describe(self.name, exc)) from exc
            except BaseException:
                self._discard(connection)
                raise
            self._release(connection)
            return result

    def close(self) -> None:
        """Close every idle connection; lent ones are closed when they come back."""
        self._discard_idle()

    def _acquire(self) -> tuple[Connection, bool]:
        """A connection and whether it was opened just now."""
        if not self._slots.acquire(timeout=self._acquire_timeout):
            raise SourceUnavailable(f"{self.name}: all {self._size} connections are busy")
        try:
            with self._lock:
                if self._idle:
                    return self._idle.pop(), False
            return self._open(), True
        except BaseException:
            self._slots.release()
            raise

    def _open(self) -> Connection:
        try:
            return self._connect()
        except pyodbc.Error as exc:
            if db.is_unavailable(exc):
                raise SourceUnavailable(_describe(self.name, exc)) from exc
            raise SourceError(_describe(self.name, exc)) from exc

    def _release(self, connection: Connection) -> None:
        with self._lock:
            self._idle.append(connection)
        self._slots.release()

    def _discard(self, connection: Connection) -> None:
        _close_quietly(connection)
        self._slots.release()

    def _discard_idle(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for connection in idle:
            _close_quietly(connection)

    def _after_fork(self) -> None:
        # Connections inherited through fork share their sockets with the parent;
        # closing them here would log the parent out, so they are only dropped,
        # and the locks start afresh in case another parent thread held them.
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(self._size)
        self._idle = []
        self._pid = os.getpid()


def _link_broken(exc: BaseException) -> bool:
    """The connection itself failed (SQLSTATE class 08), not merely the statement."""
    return db.sqlstate(exc).startswith("08")


def _contended(exc: BaseException) -> bool:
    """A deadlock victim, or a refused drain lock: transient, worth retrying."""
    return db.is_deadlock(exc) or db.error_number(exc) == DRAIN_LOCK_NOT_GRANTED


def _describe(name: str, exc: BaseException) -> str:
    """``name``, the SQL Server error number and the driver's message: no connection string."""
    kind = "unavailable" if db.is_unavailable(exc) else "error"
    number = db.error_number(exc)
    suffix = f" {number}" if number is not None else ""
    return f"{name} {kind}{suffix}: {db.server_message(exc)}"


def _backoff(attempt: int) -> float:
    """Seconds to wait before retry ``attempt`` (1, 2, ...): jittered, growing, capped."""
    ceiling: float = min(0.05 * 2**attempt, 1.0)
    return float(random.uniform(ceiling / 2, ceiling))


def _close_quietly(connection: Connection) -> None:
    try:
        connection.close()
    except Exception:
        _log.debug("closing a connection failed", exc_info=True)
