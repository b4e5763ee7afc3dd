"""Small measuring helpers shared by both sides of the benchmark."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

FULL_RATE = 0.98  # a stream "sustains full rate" when it delivers >= 98 % of the source fps


def rss_mb(pid: int | None = None) -> float:
    """Resident set size of a process in MiB, from /proc (no psutil needed)."""
    status = Path(f"/proc/{pid or os.getpid()}/status").read_text()
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmRSS in /proc status")


_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int, reaped_children: bool = False) -> float:
    """CPU seconds (user + system) a process has used so far, from /proc/<pid>/stat; with
    `reaped_children`, those of its children that exited and were waited for are added."""
    # The command name (field 2) may hold spaces and parentheses: the fields are read after its last ')'.
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    utime, stime, cutime, cstime = (int(v) for v in fields[11:15])  # fields 14 to 17 of proc(5)
    return (utime + stime + (cutime + cstime if reaped_children else 0)) / _TICKS_PER_S


def percentiles_ms(latencies_s) -> dict:
    """p50 / p99 / max of latencies given in seconds, in milliseconds (None when empty)."""
    values = np.asarray(latencies_s, np.float64)
    if values.size == 0:
        return {"p50": None, "p99": None, "max": None, "n": 0}
    p50, p99 = np.percentile(values, [50, 99])
    return {
        "p50": round(float(p50) * 1000, 1),
        "p99": round(float(p99) * 1000, 1),
        "max": round(float(values.max()) * 1000, 1),
        "n": int(values.size),
    }


def thirds(times, latencies_s, start: float, end: float) -> list[dict]:
    """Latency percentiles in the first, middle and last third of [start, end): a growing backlog shows
    as rising thirds, a bounded pipeline as flat ones."""
    times = np.asarray(times, np.float64)
    latencies = np.asarray(latencies_s, np.float64)
    edges = np.linspace(start, end, 4)
    return [
        percentiles_ms(latencies[(times >= lo) & (times < hi)]) for lo, hi in zip(edges[:-1], edges[1:], strict=False)
    ]


def bounded(windows: list[dict], slack_ms: float = 50.0, ratio: float = 1.5) -> bool | None:
    """True when the last third's p99 is no worse than the first's by more than `ratio` and `slack_ms`."""
    first, last = windows[0]["p99"], windows[-1]["p99"]
    if first is None or last is None:
        return None
    return bool(last <= max(first * ratio, first + slack_ms))


def memory_flat(
    samples: list[tuple[float, float]],
    start: float,
    end: float,
    minute: float = 60.0,
    max_growth_mb: float = 50.0,
    max_slope_mb_per_min: float = 1.0,
) -> dict:
    """Flat when RSS grew less than `max_growth_mb` from the first minute to the last (means), and
    its least-squares slope after the first minute is under `max_slope_mb_per_min`.

    A ratio of RSS would not do: a CUDA process holds gigabytes, so 5 % lets a leak of a gigabyte
    an hour pass. The first minute is left out of the slope: pools and caches fill there."""
    first = [mb for t, mb in samples if start <= t < start + minute]
    last = [mb for t, mb in samples if end - minute <= t <= end]
    later = [(t, mb) for t, mb in samples if start + minute <= t <= end]
    if not first or not last or len(later) < 3:
        return {"first_mb": None, "last_mb": None, "growth_mb": None, "slope_mb_per_min": None, "flat": None}
    a, b = float(np.mean(first)), float(np.mean(last))
    t, mb = np.asarray(later, np.float64).T
    slope = float(np.polyfit(t / 60.0, mb, 1)[0])
    return {
        "first_mb": round(a, 1),
        "last_mb": round(b, 1),
        "growth_mb": round(b - a, 1),
        "slope_mb_per_min": round(slope, 2),
        "flat": bool(b - a < max_growth_mb and slope < max_slope_mb_per_min),
    }
