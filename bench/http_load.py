"""HTTP end to end: gunicorn serving MemorySource, against a pre-built baseline on the same stack.

Two gunicorn servers run with the shipped configuration on 127.0.0.1: the real
app (``bench.http_apps:real_app()``) and a baseline answering with pre-built
bodies (``bench.http_apps:baseline_app()``). Clients are separate processes,
so their CPU is not the server's GIL; each drains its own partition of 25,000
events from ``_first``, following checkpoints, in pages of 1,000. For 1 and 8
clients the two servers take turns, round after round, so both see the same
machine. Reported: events/s, MB/s, p50/p99 page latency, peak server memory,
and the ratios real/baseline held to the targets.

    python -m bench.http_load [--config PATH] [--rounds N] [--clients 1,8]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import math
import multiprocessing
import multiprocessing.synchronize
import os
import statistics
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.queues import Queue
from pathlib import Path
from typing import Any

import orjson

from bench.gunicorn_server import ROOT, Server, start, stop, wait_ready
from bench.http_apps import PATH
from bench.procs import PeakSampler, children, cpu_seconds, tree
from bench.report import Report, core_note, percentile, write_report
from zeh_mssql.server import GUNICORN_CONF

STARTUP_TIMEOUT_S = 300.0
CLIENT_TIMEOUT_S = 180.0
TARGET_THROUGHPUT = 0.5
TARGET_P99 = 2.0
APPS = {"baseline": "bench.http_apps:baseline_app()", "real": "bench.http_apps:real_app()"}


# --- clients (each in its own process) ---------------------------------------


@dataclass(frozen=True)
class DrainJob:
    port: int
    partition: int
    partitions: int
    page_size: int
    headers: str
    expected_events: int
    verify: bool


def drain(
    job: DrainJob, start: multiprocessing.synchronize.Barrier, results: Queue[dict[str, Any]]
) -> None:
    """Follow one partition's checkpoints from ``_first`` to the end; report timings."""
    try:
        results.put(_drain(job, start))
    except Exception as exc:
        results.put({"partition": job.partition, "error": f"{type(exc).__name__}: {exc}"})


def _drain(job: DrainJob, start: multiprocessing.synchronize.Barrier) -> dict[str, Any]:
    max_pages = job.expected_events // job.page_size * 2 + 10
    connection = http.client.HTTPConnection("127.0.0.1", job.port, timeout=60)
    query = f"{PATH}?n={job.partitions}&pagesizehint={job.page_size}&headers={job.headers}"
    cursor = "_first"
    latencies: list[float] = []
    events = 0
    received = 0
    start.wait(timeout=120)
    started = time.monotonic()
    deadline = started + CLIENT_TIMEOUT_S
    while True:
        if len(latencies) >= max_pages or time.monotonic() > deadline:
            raise RuntimeError(f"partition {job.partition}: not drained within bounds")
        sent = time.perf_counter()
        connection.request("GET", f"{query}&cursor{job.partition}={cursor}")
        response = connection.getresponse()
        body = response.read()
        latencies.append(time.perf_counter() - sent)
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {body[:200]!r}")
        received += len(body)
        last_line = body.rfind(b"\n", 0, len(body) - 1) + 1
        checkpoint = orjson.loads(body[last_line:])
        if job.verify:
            events += _verify_page(body, job.partition)
        if last_line == 0:  # nothing but the checkpoint: the partition is drained
            break
        cursor = checkpoint["cursor"]
    finished = time.monotonic()
    connection.close()
    if job.verify and events != job.expected_events:
        expected = job.expected_events
        raise RuntimeError(f"partition {job.partition}: {events} events, {expected} expected")
    return {
        "partition": job.partition,
        "started": started,
        "finished": finished,
        "latencies": latencies,
        "bytes": received,
    }


def _verify_page(body: bytes, partition: int) -> int:
    lines = [orjson.loads(line) for line in body.splitlines()]
    if "cursor" not in lines[-1] or any("data" not in line for line in lines[:-1]):
        raise RuntimeError("a page is not events followed by one checkpoint")
    if any(line["partition"] != partition for line in lines):
        raise RuntimeError("a line of another partition")
    return len(lines) - 1


@dataclass
class Run:
    events_per_s: float
    mb_per_s: float
    latencies: list[float]
    rss_mb: float
    pss_mb: float
    server_cpu_s: float
    pages: int


def run_clients(server: Server, clients: int, settings: dict[str, Any], verify: bool) -> Run:
    context = multiprocessing.get_context("fork")
    start = context.Barrier(clients + 1)
    results: Queue[dict[str, Any]] = context.Queue()
    jobs = [
        DrainJob(
            port=server.port,
            partition=partition,
            partitions=settings["partitions"],
            page_size=settings["page_size"],
            headers=settings["headers"],
            expected_events=settings["events"],
            verify=verify,
        )
        for partition in range(clients)
    ]
    processes = [context.Process(target=drain, args=(job, start, results)) for job in jobs]
    for process in processes:
        process.start()
    server_pids = tree(server.process.pid)
    try:
        with PeakSampler(server.process.pid) as sampler:
            cpu_before = cpu_seconds(server_pids)
            start.wait(timeout=120)
            outcomes = [results.get(timeout=CLIENT_TIMEOUT_S + 30) for _ in processes]
            server_cpu = cpu_seconds(server_pids) - cpu_before
    finally:
        for process in processes:
            process.join(timeout=10)
            if process.is_alive():
                process.terminate()
    errors = [o["error"] for o in outcomes if "error" in o]
    if errors:
        raise RuntimeError(f"{server.name} with {clients} clients: {errors[0]}")
    window = max(o["finished"] for o in outcomes) - min(o["started"] for o in outcomes)
    total_bytes = sum(o["bytes"] for o in outcomes)
    latencies = [latency for o in outcomes for latency in o["latencies"]]
    return Run(
        events_per_s=settings["events"] * clients / window,
        mb_per_s=total_bytes / window / 1e6,
        latencies=latencies,
        rss_mb=sampler.peak.rss_mb,
        pss_mb=sampler.peak.pss_mb,
        server_cpu_s=server_cpu,
        pages=len(latencies),
    )


# --- the benchmark -------------------------------------------------------------


@contextlib.contextmanager
def servers(
    settings: dict[str, Any], config: Path, extra: Sequence[str], *, keep_heap: bool
) -> Iterator[list[Server]]:
    env = dict(os.environ)
    # The shipped config keeps each worker's heap (zeh_mssql/malloc.py) unless told not to.
    env["ZEH_MSSQL_KEEP_HEAP"] = "1" if keep_heap else "0"
    env.update(
        BENCH_PARTITIONS=str(settings["partitions"]),
        BENCH_EVENTS=str(settings["events"]),
        BENCH_PAGE_SIZE=str(settings["page_size"]),
        BENCH_HEADERS=settings["headers"],
        PYTHONPATH=str(ROOT),
    )
    started: list[Server] = []
    with tempfile.TemporaryDirectory(prefix="zeh-bench-") as log_dir:
        try:
            for name, app in APPS.items():
                # Cursors are positions in one MemorySource: build it once, then fork.
                options = ["--preload", *extra]
                started.append(
                    start(name, app, config=config, env=env, log_dir=Path(log_dir), extra=options)
                )
            deadline = time.monotonic() + STARTUP_TIMEOUT_S
            for server in started:
                wait_ready(server, f"{PATH}?n={settings['partitions']}&cursor0=_first", deadline)
            yield started
        finally:
            for server in started:
                stop(server)


def run(
    *,
    config: Path,
    rounds: int,
    client_counts: Sequence[int],
    events: int,
    page_size: int,
    headers: str,
    extra: Sequence[str],
    keep_heap: bool = True,
) -> Report:
    settings = {
        "partitions": max(client_counts),
        "events": events,
        "page_size": page_size,
        "headers": headers,
    }
    report = Report(
        "http",
        parameters={
            **settings,
            "rounds": rounds,
            "clients": list(client_counts),
            "gunicorn_config": str(config),
            "gunicorn_extra_args": [*extra, "--preload"],
            "malloc": "heap kept" if keep_heap else "default",
        },
        extra_columns=(
            ("peak_pss_mb", "peak PSS MB", "{:,.0f}"),
            ("server_cpu_ms_per_page", "server CPU ms/page", "{:.2f}"),
        ),
    )
    runs: dict[tuple[str, int], list[Run]] = {}
    with servers(settings, config, extra, keep_heap=keep_heap) as started:
        workers = {s.name: len(children(s.process.pid)) for s in started}
        print(
            f"servers up: {', '.join(f'{s.name} on port {s.port}' for s in started)}; "
            f"workers per server: {workers}",
            flush=True,
        )
        for server in started:  # warm up every worker, and check what is served
            run_clients(server, max(client_counts), settings, verify=True)
        for round_number in range(rounds):
            for clients in client_counts:
                order = started if round_number % 2 == 0 else started[::-1]
                for server in order:
                    result = run_clients(server, clients, settings, verify=False)
                    runs.setdefault((server.name, clients), []).append(result)
            print(f"round {round_number + 1}/{rounds} done", flush=True)

    summary: dict[tuple[str, int], dict[str, Any]] = {}
    for clients in client_counts:
        for name in APPS:
            results = runs[(name, clients)]
            latencies = [x for r in results for x in r.latencies]
            summary[(name, clients)] = report.row(
                f"{name}, {clients} client{'s' if clients != 1 else ''}",
                events_per_s=statistics.median(r.events_per_s for r in results),
                mb_per_s=statistics.median(r.mb_per_s for r in results),
                p50_ms=percentile(latencies, 50) * 1e3,
                p99_ms=percentile(latencies, 99) * 1e3,
                peak_rss_mb=max(r.rss_mb for r in results),
                peak_pss_mb=max(r.pss_mb for r in results),
                server_cpu_ms_per_page=1e3
                * sum(r.server_cpu_s for r in results)
                / sum(r.pages for r in results),
                pages=len(latencies),
                events_per_s_rounds=[r.events_per_s for r in results],
            )
    for clients in client_counts:
        real, base = summary[("real", clients)], summary[("baseline", clients)]
        throughput = real["events_per_s"] / base["events_per_s"]
        p99 = real["p99_ms"] / base["p99_ms"]
        report.ratio(
            f"events/s real/baseline, {clients} clients",
            throughput,
            target=f">= {TARGET_THROUGHPUT:g}x",
            met=throughput >= TARGET_THROUGHPUT if clients == 8 else None,
        )
        # CPU time comes in clock ticks (10 ms): a short run may show none.
        cpu = real["server_cpu_ms_per_page"] / (base["server_cpu_ms_per_page"] or math.nan)
        report.ratio(
            f"server CPU per page real/baseline, {clients} clients",
            cpu,
            target="(none)",
            met=None,
            detail="CPU time of the server processes: unaffected by other load on the machine",
        )
        report.ratio(
            f"p99 latency real/baseline, {clients} clients",
            p99,
            target=f"<= {TARGET_P99:g}x",
            met=p99 <= TARGET_P99 if clients == 1 else None,
        )
    report.notes.append(core_note())
    report.notes.append(
        f"gunicorn config {config} with --preload; worker processes per server: {workers}"
    )
    report.notes.append(
        "workers kept their heap (zeh_mssql/malloc.py), as the shipped config does"
        if keep_heap
        else "workers ran with glibc's default malloc thresholds (ZEH_MSSQL_KEEP_HEAP=0)"
    )
    report.notes.append(
        "peak RSS sums master and workers (shared pages counted in each); PSS splits them"
    )
    return report


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--config", type=Path, default=GUNICORN_CONF, help="gunicorn config file")
    parser.add_argument(
        "--rounds", type=int, default=5, help="turns of every server and client count"
    )
    parser.add_argument("--clients", default="1,8", help="comma-separated client counts")
    parser.add_argument("--events", type=int, default=25000, help="events per partition")
    parser.add_argument("--page-size", type=int, default=1000)
    parser.add_argument("--headers", default="_all", help="the headers parameter clients send")
    parser.add_argument(
        "--gunicorn-arg", action="append", default=[], help="extra gunicorn argument (repeat)"
    )
    parser.add_argument(
        "--default-malloc",
        action="store_true",
        help="run the workers with glibc's default malloc thresholds (ZEH_MSSQL_KEEP_HEAP=0)",
    )
    args = parser.parse_args(argv)
    report = run(
        config=args.config,
        rounds=args.rounds,
        client_counts=[int(c) for c in args.clients.split(",")],
        events=args.events,
        page_size=args.page_size,
        headers=args.headers,
        extra=args.gunicorn_arg,
        keep_heap=not args.default_malloc,
    )
    write_report(report)


if __name__ == "__main__":
    main()
