"""Run an app under gunicorn on 127.0.0.1 for a benchmark, and stop it again."""

from __future__ import annotations

import contextlib
import http.client
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Server:
    name: str
    process: subprocess.Popen[bytes]
    port: int
    log: Path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start(
    name: str,
    app: str,
    *,
    config: Path,
    env: Mapping[str, str],
    log_dir: Path,
    extra: Sequence[str] = (),
) -> Server:
    """gunicorn with ``config`` serving ``app`` (``module:callable()``), output to a log file."""
    port = free_port()
    log = log_dir / f"{name}.log"
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "--config",
        str(config),
        "--bind",
        f"127.0.0.1:{port}",
        *extra,
        app,
    ]
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, cwd=ROOT, env=dict(env), stdout=out, stderr=subprocess.STDOUT
        )
    return Server(name, process, port, log)


def wait_ready(server: Server, path: str, deadline: float) -> None:
    """Poll ``GET path`` until it answers 200; fail at once on another status, with the log."""
    while True:
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.name} server exited:\n{tail(server.log)}")
        status, body = 0, b""
        with contextlib.suppress(OSError, http.client.HTTPException):
            connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
            try:
                connection.request("GET", path)
                response = connection.getresponse()
                status, body = response.status, response.read()
            finally:
                connection.close()
        if status == 200:
            return
        if status:
            raise RuntimeError(f"{server.name} server answers {status}: {body[:300]!r}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{server.name} server not ready in time:\n{tail(server.log)}")
        time.sleep(0.5)


def stop(server: Server) -> None:
    """SIGTERM (gunicorn's graceful stop), then SIGKILL if it lingers."""
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait(timeout=10)


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
