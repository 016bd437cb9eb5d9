"""Shared by the benchmarks: percentiles, memory readings, the printed table, the JSON file.

Every benchmark ends in ``write_report``: a table on stdout and
``bench/results/<benchmark>-<UTC time>.json`` (plus ``<benchmark>-latest.json``),
which ``python -m bench.compare`` reads to put two runs side by side.
"""

from __future__ import annotations

import math
import os
import platform
import resource
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

RESULTS = Path(__file__).resolve().parent / "results"

COLUMNS: tuple[tuple[str, str, str], ...] = (
    # (key in a row, heading, format)
    ("events_per_s", "events/s", "{:,.0f}"),
    ("mb_per_s", "MB/s", "{:,.1f}"),
    ("p50_ms", "p50 ms", "{:.3f}"),
    ("p99_ms", "p99 ms", "{:.3f}"),
    ("peak_rss_mb", "peak RSS MB", "{:,.0f}"),
)


@dataclass
class Report:
    """One benchmark run: rows of figures, ratios against limits, targets, notes."""

    benchmark: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    ratios: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)
    extra_columns: tuple[tuple[str, str, str], ...] = ()

    def row(self, name: str, **figures: Any) -> dict[str, Any]:
        """Add a row named ``name`` (unique within the report) and return it."""
        entry = {"name": name, **figures}
        self.rows.append(entry)
        return entry

    def ratio(
        self, name: str, value: float, *, target: str, met: bool | None, detail: str = ""
    ) -> None:
        """Record a ratio against a limit, with the target it is held to."""
        self.ratios.append(
            {"name": name, "value": value, "target": target, "met": met, "detail": detail}
        )


def percentile(samples: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by linear interpolation between closest ranks."""
    if not samples:
        return math.nan
    ordered = sorted(samples)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def own_peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine() -> dict[str, Any]:
    """What the figures were measured on; the core count matters most."""
    return {
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "processor": _cpu_model(),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def core_note() -> str:
    """A line saying how many cores the figures had to share."""
    cpus = os.cpu_count() or 1
    return (
        f"this machine has {cpus} CPU core{'s' if cpus != 1 else ''}: server and clients share "
        "them, so absolute figures are low and ratios are what to compare"
    )


def _format(value: Any, pattern: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return pattern.format(value)


def format_table(rows: Iterable[dict[str, Any]], columns: Sequence[tuple[str, str, str]]) -> str:
    """Rows as a fixed-width text table: the name, then each column present in any row."""
    rows = list(rows)
    used = [c for c in columns if any(c[0] in r for r in rows)]
    header = ["benchmark", *(c[1] for c in used)]
    body = [[str(r["name"]), *(_format(r.get(c[0]), c[2]) for c in used)] for r in rows]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]

    def render(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True))
        return "  ".join([first, *rest]).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([render(header), rule, *(render(line) for line in body)])


def format_ratios(ratios: Iterable[dict[str, Any]]) -> str:
    lines = []
    for r in ratios:
        verdict = {True: "met", False: "MISSED", None: "info"}[r["met"]]
        detail = f"  ({r['detail']})" if r["detail"] else ""
        lines.append(f"  {r['name']}: {r['value']:.2f}x  target {r['target']}: {verdict}{detail}")
    return "\n".join(lines)


def write_report(report: Report, *, results: Path = RESULTS) -> Path:
    """Print the report and write it as JSON; returns the path of the timestamped file."""
    print(f"\n== {report.benchmark} ==")
    print(format_table(report.rows, COLUMNS + report.extra_columns))
    if report.ratios:
        print("ratios:")
        print(format_ratios(report.ratios))
    for note in report.notes:
        print(f"note: {note}")
    started = datetime.now(UTC)
    document = {
        "benchmark": report.benchmark,
        "time": started.isoformat(timespec="seconds"),
        "machine": machine(),
        "parameters": report.parameters,
        "rows": report.rows,
        "ratios": report.ratios,
        "notes": report.notes,
    }
    results.mkdir(parents=True, exist_ok=True)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    path = results / f"{report.benchmark}-{stamp}.json"
    data = orjson.dumps(document, option=orjson.OPT_INDENT_2)
    path.write_bytes(data)
    (results / f"{report.benchmark}-latest.json").write_bytes(data)
    print(f"results: {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}")
    return path
