"""A tiny HTTP server on 127.0.0.1 whose answers a test scripts byte by byte.

It lets the client tests produce what a well-behaved server never sends:
error statuses, broken lines, responses cut off mid-page, answers that hang.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

Responder = Callable[["Exchange"], None]


@dataclass
class Exchange:
    """One request as received, and the raw socket to answer it on."""

    handler: BaseHTTPRequestHandler
    release: threading.Event
    """Set when the test ends; a responder that hangs waits on it."""

    @property
    def query(self) -> list[tuple[str, str]]:
        return parse_qsl(urlsplit(self.handler.path).query, keep_blank_values=True)

    def send(self, data: bytes) -> None:
        self.handler.wfile.write(data)
        self.handler.wfile.flush()

    def respond(
        self,
        status: int,
        body: bytes,
        headers: dict[str, str] | None = None,
        *,
        length: bool = True,
    ) -> None:
        """A complete response; without ``length`` the body ends when the connection closes."""
        lines = [f"HTTP/1.1 {status} Status"]
        all_headers = {"Content-Type": "application/x-ndjson", "Connection": "close"}
        all_headers.update(headers or {})
        if length and "Content-Length" not in all_headers:
            all_headers["Content-Length"] = str(len(body))
        lines += [f"{k}: {v}" for k, v in all_headers.items()]
        self.send(("\r\n".join(lines) + "\r\n\r\n").encode() + body)


@dataclass
class ScriptedServer:
    url: str
    requests: list[Exchange] = field(default_factory=list)
    responders: list[Responder] = field(default_factory=list)

    def answer(self, *responders: Responder) -> None:
        """Queue responders; each answers one request, the last one all further requests."""
        self.responders.extend(responders)


@contextmanager
def scripted_server() -> Iterator[ScriptedServer]:
    """Run a server on a free port; every request is answered by the next queued responder."""
    release = threading.Event()
    lock = threading.Lock()
    state = ScriptedServer(url="")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            exchange = Exchange(self, release)
            with lock:
                state.requests.append(exchange)
                responder = (
                    state.responders.pop(0) if len(state.responders) > 1 else state.responders[0]
                )
            self.close_connection = True
            # The client may give up first, which is what some tests want.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                responder(exchange)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.url = f"http://127.0.0.1:{server.server_port}/feed/v1"
    thread = threading.Thread(
        target=server.serve_forever, args=(0.05,), name="scripted-http", daemon=True
    )
    thread.start()
    try:
        yield state
    finally:
        release.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
