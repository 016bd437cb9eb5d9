"""Start the server under gunicorn, with the shipped configuration, as a child process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import requests

from zeh_mssql.server import GUNICORN_CONF

BIN = Path(sys.executable).parent
STARTUP_LIMIT_S = 60.0
GUNICORN_COMMAND = [str(BIN / "gunicorn"), "-c", str(GUNICORN_CONF), "zeh_mssql.app:create_app()"]


def free_port() -> int:
    """A port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def running(
    env: Mapping[str, str],
    log: Path,
    *,
    command: list[str] | None = None,
    port: int | None = None,
) -> Iterator[str]:
    """Run ``command`` (default: gunicorn on the app) until the block ends; yield its URL.

    ``env`` is added to this process's environment. The server listens on
    ``port`` (default: a free one, passed as ``ZEH_MSSQL_BIND`` unless ``env``
    names a bind address itself); stdout and stderr go to ``log``.
    """
    port = port or free_port()
    full_env = {**os.environ, "ZEH_MSSQL_BIND": f"127.0.0.1:{port}", "ZEH_MSSQL_WORKERS": "1"}
    full_env.update(env)
    with log.open("wb") as sink:
        process = subprocess.Popen(
            command or GUNICORN_COMMAND,
            env=full_env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            cwd=log.parent,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_LIMIT_S
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited ({process.returncode}): {log.read_text()}")
            try:
                requests.get(f"{url}/healthz", timeout=10)
                break
            except requests.ConnectionError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the server did not answer: {log.read_text()}") from None
                time.sleep(0.2)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
