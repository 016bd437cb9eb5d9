"""Memory of a process tree from /proc (Linux): RSS and PSS of a server and its workers.

RSS counts pages shared between a gunicorn master and its forked workers once
per process; PSS splits each shared page between its sharers, so the PSS sum is
the tree's real footprint. Both are reported.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

_PROC = Path("/proc")


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (from every thread's children file)."""
    found: list[int] = []
    try:
        for task in (_PROC / str(pid) / "task").iterdir():
            text = (task / "children").read_text()
            found.extend(int(c) for c in text.split())
    except OSError:
        pass
    return found


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    pids = [pid]
    for child in children(pid):
        pids.extend(tree(child))
    return pids


@dataclass
class Memory:
    rss_mb: float = 0.0
    pss_mb: float = 0.0


def memory(pids: list[int]) -> Memory:
    """Summed RSS and PSS of ``pids``, in MB; processes that are gone count zero."""
    total = Memory()
    for pid in pids:
        try:
            text = (_PROC / str(pid) / "smaps_rollup").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            name, _, rest = line.partition(":")
            if name == "Rss":
                total.rss_mb += int(rest.split()[0]) / 1024
            elif name == "Pss":
                total.pss_mb += int(rest.split()[0]) / 1024
    return total


def cpu_seconds(pids: list[int]) -> float:
    """User plus system CPU time the processes have used so far, in seconds."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            text = (_PROC / str(pid) / "stat").read_text()
        except OSError:
            continue
        # The command name (field 2) may hold spaces; the fields after it do not.
        fields = text[text.rindex(")") + 2 :].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15
    return total / ticks


class PeakSampler:
    """Samples a process tree's memory in a thread until stopped; keeps the peaks."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self._pid = pid
        self._interval = interval
        self._stop = threading.Event()
        self.peak = Memory()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> PeakSampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sample()

    def _sample(self) -> None:
        now = memory(tree(self._pid))
        self.peak.rss_mb = max(self.peak.rss_mb, now.rss_mb)
        self.peak.pss_mb = max(self.peak.pss_mb, now.pss_mb)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._sample()
