"""The benchmark harness's own logic: what it measures must be what the server serves.

Nothing here is timed; the benchmarks themselves run with ``make bench``.
"""

from __future__ import annotations

import orjson
import pytest

from bench.compare import compare
from bench.events import as_fetched, make_events
from bench.http_apps import PATH, build_source, prebuilt_bodies, serve_prebuilt, serve_source
from bench.procs import memory, tree
from bench.report import Report, format_table, percentile, write_report
from tests.logging_state import package_logger_restored  # noqa: F401


def test_percentile_interpolates_between_closest_ranks():
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([5.0], 99) == 5.0
    assert percentile([3.0, 1.0, 2.0], 0) == 1.0
    assert percentile([3.0, 1.0, 2.0], 100) == 3.0


def test_events_are_deterministic_and_about_one_kilobyte():
    first, again = make_events(50, seed=3), make_events(50, seed=3)
    assert first == again
    sizes = [len(e.data.encode()) for e in first]
    assert all(900 <= size <= 1100 for size in sizes)
    for event in first:
        assert isinstance(orjson.loads(event.data), dict)
        assert isinstance(orjson.loads(event.headers or ""), dict)
    mixed = make_events(200, non_ascii_share=0.5)
    assert any(not e.data.isascii() for e in mixed)


def test_baseline_serves_exactly_what_the_real_app_serves():
    source = build_source(partitions=2, events_per_partition=25)
    real = serve_source(source, page_size=10).test_client()
    baseline = serve_prebuilt(prebuilt_bodies(source, page_size=10, headers="_all")).test_client()
    for partition in range(2):
        cursor, pages = "_first", 0
        while True:
            query = f"{PATH}?n=2&cursor{partition}={cursor}&pagesizehint=10&headers=_all"
            served = real.get(query)
            prebuilt = baseline.get(query)
            assert served.status_code == prebuilt.status_code == 200
            assert served.data == prebuilt.data
            lines = served.data.splitlines()
            pages += 1
            if len(lines) == 1:
                break
            cursor = orjson.loads(lines[-1])["cursor"]
        assert pages == 4  # 10 + 10 + 5 events, then the empty page at the head


def test_table_and_json_report(tmp_path, capsys):
    report = Report("demo")
    report.row("fast", events_per_s=2000.0, p50_ms=0.5)
    report.row("slow", events_per_s=1000.0, p50_ms=1.0, p99_ms=3.0)
    report.ratio("fast/slow", 2.0, target=">= 1x", met=True)
    table = format_table(report.rows, [("events_per_s", "events/s", "{:,.0f}")])
    assert table.splitlines()[0].split() == ["benchmark", "events/s"]
    assert "2,000" in table
    path = write_report(report, results=tmp_path)
    document = orjson.loads(path.read_bytes())
    assert document["rows"][1]["p99_ms"] == 3.0
    assert document["machine"]["cpus"] >= 1
    assert (tmp_path / "demo-latest.json").read_bytes() == path.read_bytes()
    printed = capsys.readouterr().out
    assert "fast/slow: 2.00x" in printed
    assert "met" in printed


def test_compare_shows_changes_of_rows_in_both_runs():
    old = {
        "benchmark": "demo",
        "time": "t0",
        "rows": [{"name": "a", "events_per_s": 100.0, "p99_ms": 2.0}],
        "ratios": [{"name": "r", "value": 1.0, "target": ">= 1x"}],
    }
    new = {
        "benchmark": "demo",
        "time": "t1",
        "rows": [
            {"name": "a", "events_per_s": 150.0, "p99_ms": 4.0},
            {"name": "b", "events_per_s": 1.0},
        ],
        "ratios": [{"name": "r", "value": 1.5, "target": ">= 1x"}],
    }
    text = compare(old, new)
    assert "+50.0% better" in text  # more events/s
    assert "+100.0% worse" in text  # a higher p99
    assert "b: only in the newer run" in text
    assert "1.00x -> 1.50x" in text


def test_memory_of_own_process_tree():
    import os

    pids = tree(os.getpid())
    assert pids[0] == os.getpid()
    used = memory(pids)
    assert used.rss_mb > 1
    assert 0 < used.pss_mb <= used.rss_mb + 1


@pytest.mark.parametrize("share", [0.0, 1.0])
def test_non_ascii_share_is_respected(share):
    events = make_events(20, non_ascii_share=share)
    assert all(e.data.isascii() for e in events) == (share == 0.0)


def test_sql_benchmark_says_in_one_line_why_it_skips(monkeypatch, capsys):
    import tests.integration.conftest as integration
    from bench import sql_feed

    monkeypatch.setattr(integration, "docker_unavailable_reason", lambda: "no engine here")
    monkeypatch.setattr(
        integration,
        "running_sqlserver",
        lambda: pytest.fail("must not start SQL Server without Docker"),
    )
    sql_feed.main([])
    assert capsys.readouterr().out == (
        "sql: skipped: Docker is needed to start SQL Server: no engine here\n"
    )


def test_fetched_events_are_equal_copies():
    events = make_events(30, non_ascii_share=0.5)
    fetched = as_fetched(events)
    assert fetched == events
    assert all(a.data is not b.data for a, b in zip(events, fetched, strict=True))


def test_sql_benchmark_rows_share_one_throughput_shape():
    from bench.sql_feed import throughput

    row = throughput(1000, 2_000_000, 2.0, [0.001] * 99 + [0.010])
    assert row["events_per_s"] == 500
    assert row["mb_per_s"] == 1.0
    assert row["p50_ms"] == pytest.approx(1.0)
    assert row["p99_ms"] >= row["p50_ms"]
    assert row["peak_rss_mb"] > 0
