"""Helpers shared by the benchmark scripts (run as `python benchmarks/<name>.py`, so this folder is on
sys.path)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path


def setup_logging(noisy: Iterable[str] = ()) -> None:
    """The CLI's logging (xray_spark.logs) at INFO for the benchmark's own progress, plus `noisy` loggers
    (e.g. the package's own, when its INFO lines would drown the figures) at WARNING."""
    from xray_spark.logs import setup_logging as package_logging

    package_logging(logging.INFO)
    for name in noisy:
        logging.getLogger(name).setLevel(logging.WARNING)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def tree_cpu_seconds() -> float | None:
    """CPU seconds used so far by this process and all its descendants (JVM, Python workers), from /proc.

    On a shared machine wall time swings with other people's load; CPU seconds per image barely do, so the
    benchmark reports both. Linux only (None elsewhere).
    """
    proc = Path("/proc")
    if not (proc / "self" / "stat").exists():
        return None
    tick = os.sysconf("SC_CLK_TCK")
    stats: dict[int, tuple[int, float]] = {}
    for d in proc.iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # after the command: state ppid ... utime(12) stime(13) cutime(14) cstime(15), 0-based from state
        stats[int(d.name)] = (int(fields[1]), sum(int(x) for x in fields[11:15]) / tick)
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    total, todo = 0.0, [os.getpid()]
    while todo:
        pid = todo.pop()
        total += stats.get(pid, (0, 0.0))[1]
        todo += children.get(pid, [])
    return total
