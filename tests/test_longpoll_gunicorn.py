"""Long-polls under gunicorn with the shipped configuration (gthread workers), for real.

The feed is a MemorySource in the gunicorn worker (tests/longpoll_gunicorn_app.py);
the test appends and watches the waiters through that app's extra routes.
"""

from __future__ import annotations

import functools
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests

from tests import waiting
from tests.gunicorn_process import BIN, running
from zeh_mssql.server import GUNICORN_CONF

ROOT = Path(__file__).resolve().parents[1]
PATH = "/orders/feed/v1"
WAITERS = 200
LONG_WAIT = 30
PATIENCE = 15.0
COMMAND = [
    str(BIN / "gunicorn"),
    "-c",
    str(GUNICORN_CONF),
    "--chdir",
    str(ROOT),
    "tests.longpoll_gunicorn_app:create_app()",
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("gunicorn") / "server.log"
    # One process, so every waiter shares its poll; threads for all of them at once.
    env = {"ZEH_MSSQL_THREADS": str(WAITERS + 20), "ZEH_MSSQL_LOG_LEVEL": "WARNING"}
    with running(env, log, command=COMMAND) as url:
        yield url


def watcher(url: str) -> dict[str, Any]:
    return dict(requests.get(f"{url}/watcher", timeout=10).json())


# Each check is an HTTP request to the worker: check less often, and allow gunicorn more time.
eventually = functools.partial(waiting.eventually, patience=PATIENCE, every=0.05)


def test_200_waiting_clients_are_all_answered_after_one_append(server):
    def wait_once(_: int) -> list[dict[str, Any]]:
        with requests.Session() as http:
            response = http.get(
                server + PATH,
                params={"n": 1, "cursor0": "_last", "wait": LONG_WAIT},
                timeout=LONG_WAIT + PATIENCE,
            )
        assert response.status_code == 200
        return [orjson.loads(line) for line in response.content.splitlines()]

    with ThreadPoolExecutor(WAITERS) as pool:
        futures = [pool.submit(wait_once, i) for i in range(WAITERS)]
        eventually(lambda: watcher(server)["waiting"] == WAITERS, f"{WAITERS} requests wait")
        polls_while_waiting = watcher(server)["polls"]
        started = time.monotonic()
        requests.post(f"{server}/append", timeout=10).raise_for_status()
        answers = [f.result(timeout=LONG_WAIT + PATIENCE) for f in futures]
        elapsed = time.monotonic() - started
    assert all(a[0] == {"partition": 0, "data": {"appended": True}} for a in answers)
    assert elapsed < LONG_WAIT - 10
    assert polls_while_waiting < WAITERS / 4  # one poll per tick, not one per waiter
    eventually(lambda: watcher(server)["waiting"] == 0, "the waiters left")


def test_a_client_that_disconnects_stops_its_wait(server):
    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as client:
        request = f"GET {PATH}?n=1&cursor0=_last&wait={LONG_WAIT} HTTP/1.1\r\nHost: x\r\n\r\n"
        client.sendall(request.encode())
        eventually(lambda: watcher(server)["waiting"] == 1, "the request waits")
        assert watcher(server)["polling"] == [0]
    # gunicorn's socket shows the hang-up long before the 30 s wait ends.
    eventually(lambda: watcher(server)["waiting"] == 0, "the waiter left")
    eventually(lambda: watcher(server)["polling"] == [], "polling stopped")
