"""Profile serving pages in-process: where the server's Python time goes, per function.

Drains a partition of ``MemorySource`` through ``create_app`` (the app gunicorn
runs) with Flask's test client, under pyinstrument. For a profile of gunicorn
workers under load, run ``py-spy record --gil --subprocesses`` against the
servers of ``bench.http_load``.

    python -m bench.profile_pages [--events N] [--drains N]
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence

import orjson
from flask.testing import FlaskClient
from pyinstrument import Profiler

from bench.http_apps import PATH, build_source, serve_source
from zeh_mssql.malloc import keep_heap

PAGE_SIZE = 1000


def drain(client: FlaskClient, events: int) -> None:
    """Follow partition 0 from ``_first`` until a page has no events (bounded)."""
    cursor = "_first"
    for _ in range(events // PAGE_SIZE + 2):
        response = client.get(f"{PATH}?n=1&cursor0={cursor}&pagesizehint={PAGE_SIZE}&headers=_all")
        body = response.data
        last_line = body.rfind(b"\n", 0, len(body) - 1) + 1
        if last_line == 0:
            return
        cursor = orjson.loads(body[last_line:])["cursor"]
    raise RuntimeError("the partition did not end")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", type=int, default=25000)
    parser.add_argument("--drains", type=int, default=4)
    args = parser.parse_args(argv)
    keep_heap()  # page faults are the allocator's, not the code's: see zeh_mssql/malloc.py
    app = serve_source(build_source(1, args.events), PAGE_SIZE)
    # The request log is part of the cost, but not of the output.
    with open(os.devnull, "w") as devnull:
        for handler in logging.getLogger("zeh_mssql").handlers:
            if isinstance(handler, logging.StreamHandler):
                handler.setStream(devnull)
        client = app.test_client()
        drain(client, args.events)  # warm up
        profiler = Profiler(interval=0.0005)
        profiler.start()
        for _ in range(args.drains):
            drain(client, args.events)
        profiler.stop()
    print(profiler.output_text(unicode=False, color=False))


if __name__ == "__main__":
    main()
