"""Notice that the client of a WSGI request has hung up, through the server's socket.

WSGI gives an application no way to learn that its client left, but gunicorn
(``gunicorn.socket``) and werkzeug's development server (``werkzeug.socket``)
put the connection's socket in the environ. While a request is being handled
nobody else reads from it, so if the socket turns readable, the client either
sent more bytes (a pipelined request: still there) or closed the connection
(end of stream or an error: gone). Peeking leaves any bytes for the server.
"""

from __future__ import annotations

import select
import socket
from collections.abc import Callable, Mapping
from typing import Any, Final

SOCKET_KEYS: Final = ("gunicorn.socket", "werkzeug.socket")
"""Environ keys under which WSGI servers expose the client connection."""

_HAS_POLL: Final = hasattr(select, "poll")
# POLLRDHUP (Linux) reports the client's FIN even behind unread bytes, such as a
# TLS close_notify alert that a peek would otherwise mistake for more data.
_HANGUP: Final = (
    select.POLLHUP | select.POLLERR | select.POLLNVAL | getattr(select, "POLLRDHUP", 0)
    if _HAS_POLL
    else 0
)


def disconnect_probe(environ: Mapping[str, Any]) -> Callable[[], bool] | None:
    """A cheap check that returns True once the request's client has disconnected.

    ``None`` when the server does not expose the connection's socket (a test
    client, or a server that is neither gunicorn nor werkzeug's).
    """
    for key in SOCKET_KEYS:
        sock = environ.get(key)
        if isinstance(sock, socket.socket):
            return lambda: peer_closed(sock)
    return None


def peer_closed(sock: socket.socket) -> bool:
    """True when the peer of ``sock`` has closed or reset the connection; never blocks."""
    try:
        fd = sock.fileno()
        if fd < 0:
            return True
        if _HAS_POLL:
            poller = select.poll()
            poller.register(fd, select.POLLIN | select.POLLPRI | _HANGUP)
            events = poller.poll(0)
            if not events:
                return False
            if events[0][1] & _HANGUP:
                return True
        else:  # pragma: no cover - Windows has no poll()
            readable, _, _ = select.select([fd], [], [], 0)
            if not readable:
                return False
        # The base class's recv reads the TCP stream itself, so this also works
        # for a TLS socket (whose own recv refuses flags); readable means it
        # cannot block.
        return socket.socket.recv(sock, 1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True
