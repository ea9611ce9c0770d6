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


CPU_FLAGS_SHOWN = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "avx_vnni", "avx512_vnni", "amx_int8")


def cpu_line() -> str:
    """One line naming the CPU, its cores, whether bf16 is native and its int8 support, printed by every
    benchmark.

    Why: engine ratios depend on the CPU (AMX / AVX512-BF16 or neither; AMX-INT8 / AVX512-VNNI / AVX-VNNI or
    no int8 dot product); a figure without it cannot be compared, and where bf16 is not native OpenVINO's bf16
    hint runs fp32, which the line says plainly.
    """
    from xray_spark.features.engines import cpu_flags, has_native_bf16
    from xray_spark.features.quantize import int8_support

    model = "unknown"
    info = Path("/proc/cpuinfo")
    for line in (info.read_text(errors="replace") if info.exists() else "").splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            model = value.strip()
            break
    flags = cpu_flags()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    shown = " ".join(f"{f}={'yes' if f in flags else 'no'}" for f in CPU_FLAGS_SHOWN)
    native = has_native_bf16(flags)
    note = "" if native else " (no AMX/AVX512-BF16: OpenVINO's bf16 hint runs as fp32 on this CPU)"
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"cpu={model!r} cores={cores} {shown} native_bf16={'yes' if native else 'no'}{note} "
            f"int8_support={int8_support(flags)} load={load}")


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


def timed(cmd: list[str], log_file: Path, env: dict[str, str] | None = None) -> float:
    """Wall seconds of one whole process; its output is appended to `log_file`, a failure stops the run."""
    import subprocess
    import time

    t = time.perf_counter()
    with log_file.open("a") as fh:
        fh.write(f"\n$ {' '.join(cmd)}\n")
        fh.flush()
        rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, check=False, env=env).returncode
    seconds = time.perf_counter() - t
    if rc != 0:
        raise SystemExit(f"{cmd[0]} exited {rc}; see {log_file}")
    return seconds


def with_pythonpath(src: Path | None) -> dict[str, str] | None:
    """This environment with `src` (another checkout's src/, e.g. the code before a change) first on
    PYTHONPATH; None (inherit) without one."""
    if src is None:
        return None
    return {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(src.resolve()), os.environ.get("PYTHONPATH")]))}
