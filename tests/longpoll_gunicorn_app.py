"""A test app for gunicorn: a MemorySource feed, plus routes to append and to watch the waiters.

gunicorn runs it in another process, so the test appends and observes over HTTP.
"""

from __future__ import annotations

from flask import Flask, jsonify
from flask.typing import ResponseReturnValue

from zeh_mssql.blueprint import FeedEndpoint, add_feed_routes
from zeh_mssql.testing import MemorySource

PATH = "/orders/feed/v1"


def create_app() -> Flask:
    source = MemorySource(1)
    endpoint = FeedEndpoint(source, name="orders", poll_max_interval=0.2)
    app = Flask(__name__)
    add_feed_routes(app, PATH, endpoint)

    @app.get("/healthz")
    def healthz() -> ResponseReturnValue:
        return jsonify(status="ok")

    @app.post("/append")
    def append() -> ResponseReturnValue:
        return jsonify(cursor=source.append(0, {"appended": True}))

    @app.get("/watcher")
    def watcher() -> ResponseReturnValue:
        w = endpoint.watcher
        return jsonify(waiting=w.waiting(), polling=sorted(w.polling()), polls=w.polls)

    return app
