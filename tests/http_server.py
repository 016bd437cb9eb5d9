"""Run a WSGI app on a real socket on 127.0.0.1 for tests that need real HTTP.

``serving`` and ``serving_endpoint`` run a one-feed Flask app with our routes.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from flask import Flask
from werkzeug.serving import make_server

from zeh_mssql.blueprint import FeedEndpoint, add_feed_routes, create_blueprint
from zeh_mssql.source import EventSource


@contextmanager
def running(app: Any) -> Iterator[str]:
    """Serve ``app`` on a free port (threaded) and yield its base URL."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="test-http", daemon=True
    )
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@contextmanager
def serving(source: EventSource, path: str, **blueprint_options: Any) -> Iterator[str]:
    """Serve ``source`` at ``path`` with ``create_blueprint``; yield the feed's URL."""
    app = Flask(__name__)
    app.register_blueprint(create_blueprint(source, path, **blueprint_options))
    with running(app) as base:
        yield base + path


@contextmanager
def serving_endpoint(endpoint: FeedEndpoint, path: str) -> Iterator[str]:
    """Serve ``endpoint`` at ``path`` (``add_feed_routes``); yield the feed's URL."""
    app = Flask(__name__)
    add_feed_routes(app, path, endpoint)
    with running(app) as base:
        yield base + path
