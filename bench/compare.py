"""Put two benchmark runs side by side: every figure of the rows both have, and the ratios.

python -m bench.compare encoding              # the two newest runs of a benchmark
python -m bench.compare OLD.json NEW.json     # any two result files
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from bench.report import COLUMNS, RESULTS

# Figures where smaller is better; everything else in COLUMNS is better larger.
_LOWER_IS_BETTER = {"p50_ms", "p99_ms", "peak_rss_mb", "peak_pss_mb"}


def newest_two(benchmark: str, results: Path = RESULTS) -> tuple[Path, Path]:
    """The two most recent timestamped result files of ``benchmark``, older first."""
    runs = sorted(results.glob(f"{benchmark}-2*.json"))
    if len(runs) < 2:
        raise SystemExit(f"need two runs of {benchmark!r} in {results}, found {len(runs)}")
    return runs[-2], runs[-1]


def _change(old: float, new: float, key: str) -> str:
    if not old or math.isnan(old) or math.isnan(new):
        return ""
    change = (new - old) / old * 100
    better = change < 0 if key in _LOWER_IS_BETTER else change > 0
    mark = "" if abs(change) < 5 else (" better" if better else " worse")
    return f"{change:+.1f}%{mark}"


def compare(old: dict[str, Any], new: dict[str, Any]) -> str:
    """A text report of the figures both runs have, and of their ratios."""
    keys = [(key, heading) for key, heading, _ in COLUMNS] + [("peak_pss_mb", "peak PSS MB")]
    old_rows = {row["name"]: row for row in old["rows"]}
    lines = [f"{old['benchmark']}: {old['time']} -> {new['time']}"]
    for row in new["rows"]:
        before = old_rows.get(row["name"])
        if before is None:
            lines.append(f"  {row['name']}: only in the newer run")
            continue
        lines.append(f"  {row['name']}")
        for key, heading in keys:
            if key in row and key in before and row[key] is not None and before[key] is not None:
                change = _change(before[key], row[key], key)
                lines.append(
                    f"    {heading:<12} {before[key]:>14,.3f} -> {row[key]:>14,.3f}  {change}"
                )
    old_ratios = {r["name"]: r for r in old.get("ratios", [])}
    for ratio in new.get("ratios", []):
        before = old_ratios.get(ratio["name"])
        was = f"{before['value']:.2f}x -> " if before else ""
        lines.append(
            f"  ratio {ratio['name']}: {was}{ratio['value']:.2f}x (target {ratio['target']})"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("runs", nargs="+", help="a benchmark name, or two result files")
    args = parser.parse_args(argv)
    if len(args.runs) == 1:
        old_path, new_path = newest_two(args.runs[0])
    elif len(args.runs) == 2:
        old_path, new_path = Path(args.runs[0]), Path(args.runs[1])
    else:
        parser.error("give a benchmark name or two result files")
    print(compare(orjson.loads(old_path.read_bytes()), orjson.loads(new_path.read_bytes())))


if __name__ == "__main__":
    main()
