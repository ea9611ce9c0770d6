"""Small ingests are small: Spark jobs and wall time of `xray-spark ingest` vs a bare binaryFile count.

Why: issue 23. A 36-image folder took 104 Spark jobs and ~68 s, against ~20 s for a fresh JVM that only
lists and counts the folder; at that size the fixed cost per job (scheduling, a shuffle, a Python worker)
is the run. The job count must stay small and must not grow with the number of images.

Each command is a separate process, timed from outside, with Spark's event log on
(`spark.eventLog.enabled=true`, uncompressed, a fresh folder per run); jobs are the log's
`SparkListenerJobStart` events. Per folder size, one line each (with --rounds N the commands run
interleaved N times: wall_s is the median, each round's in brackets):
  ingest   `python -m xray_spark ingest --data DIR --out FRESH` (this checkout, or `--src SRC`);
  before   the same with `--before-src SRC` first on PYTHONPATH (e.g. HEAD from `git archive`);
  bare     this file with `--bare DIR`: a fresh local[2] JVM, `binaryFile` listing of DIR and `count()`.
Folders: 36 images (the first 12 per class of the Ozturk copy, as tests' `small_data`) and the whole
Ozturk copy (1,124 images, with its manifest.csv).

    python benchmarks/ingest_jobs.py
    python benchmarks/ingest_jobs.py --before-src /tmp/ingest-before/src   # HEAD's ingest side by side
    python benchmarks/ingest_jobs.py --sizes 36 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from common import cpu_line, timed, with_pythonpath  # benchmarks/ is on sys.path when run as a script

DEFAULT_SOURCE = Path("/work/shared/data/ozturk")
DEFAULT_WORK = Path(tempfile.gettempdir()) / "xray-ingest-jobs"
LABELS = ("covid", "no_findings", "pneumonia")
JOB_START = '"Event":"SparkListenerJobStart"'


def small_folder(source: Path, folder: Path, per_class: int) -> Path:
    """The first `per_class` sorted images of each class folder (as tests/conftest.copy_subset); reused."""
    if folder.is_dir() and sum(1 for p in folder.rglob("*") if p.is_file()) == per_class * len(LABELS):
        return folder
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    for label in LABELS:
        (tmp / label).mkdir(parents=True)
        for p in sorted((source / label).iterdir())[:per_class]:
            shutil.copyfile(p, tmp / label / p.name)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


def event_log_conf(log_dir: Path) -> list[str]:
    return ["spark.eventLog.enabled=true", "spark.eventLog.compress=false", f"spark.eventLog.dir={log_dir}"]


def count_jobs(log_dir: Path) -> int:
    """SparkListenerJobStart events in the one application's uncompressed event log under `log_dir` (Spark 4
    writes a folder of rolling `events_*` files per application; older versions one file)."""
    apps = list(log_dir.iterdir())
    if len(apps) != 1:
        raise SystemExit(f"expected one application's event log in {log_dir}, found {len(apps)}")
    files = sorted(p for p in apps[0].glob("events_*")) if apps[0].is_dir() else apps
    jobs = 0
    for f in files:
        with f.open(encoding="utf-8", errors="replace") as fh:
            jobs += sum(1 for line in fh if JOB_START in line)
    return jobs


def bare_count(data: Path, confs: list[str]) -> None:
    """The baseline: a fresh JVM that lists `data` with binaryFile and counts the files (no bytes read)."""
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.master("local[2]").appName("bare binaryFile count")
    for kv in confs:
        key, _, value = kv.partition("=")
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    n = spark.read.format("binaryFile").option("recursiveFileLookup", "true").load(str(data)).count()
    print(json.dumps({"files": n}))
    spark.stop()


def measure(tag: str, cmd: list[str], work: Path, log_file: Path,
            env: dict[str, str] | None = None) -> tuple[int, float]:
    """(Spark jobs, wall seconds) of one process run with a fresh event log folder."""
    log_dir = work / f"events-{tag}"
    shutil.rmtree(log_dir, ignore_errors=True)
    log_dir.mkdir(parents=True)
    confs = [x for kv in event_log_conf(log_dir) for x in ("--conf", kv)]
    seconds = timed([*cmd, *confs], log_file, env)
    return count_jobs(log_dir), seconds


def ingest(data: Path, tag: str, src: Path | None, work: Path, log_file: Path) -> tuple[int, float]:
    """(Spark jobs, wall seconds) of `python -m xray_spark ingest` on `data` into a fresh --out (removed)."""
    out = work / f"out-{tag}"
    try:
        return measure(tag, [sys.executable, "-m", "xray_spark", "ingest", "--data", str(data), "--out",
                             str(out)], work, log_file, with_pythonpath(src))
    finally:
        shutil.rmtree(out, ignore_errors=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="the Ozturk copy (class folders)")
    p.add_argument("--sizes", default="36,all", help="comma-separated: a multiple of 3, or `all`")
    p.add_argument("--workdir", type=Path, default=DEFAULT_WORK)
    p.add_argument("--rounds", type=int, default=1, help="interleaved rounds; wall_s is their median")
    p.add_argument("--src", type=Path, metavar="SRC", help="run the ingest under test from this src/")
    p.add_argument("--before-src", type=Path, metavar="SRC",
                   help="also run `python -m xray_spark ingest` with this src/ first on PYTHONPATH")
    p.add_argument("--bare", type=Path, metavar="DIR", help=argparse.SUPPRESS)  # the baseline process
    p.add_argument("--conf", action="append", default=[], help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.bare:
        bare_count(args.bare, args.conf)
        return

    args.workdir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="run-", dir=args.workdir))
    log_file = work / "commands.log"
    print(cpu_line(), flush=True)
    print(f"log={log_file}", flush=True)
    for size in [s.strip() for s in args.sizes.split(",") if s.strip()]:
        if size == "all":
            data = args.source
        else:
            data = small_folder(args.source, args.workdir / f"ozturk-{size}", int(size) // len(LABELS))
        n = sum(1 for p in data.rglob("*") if p.is_file() and p.name != "manifest.csv")

        runs: dict[str, list[tuple[int, float]]] = {}
        for r in range(max(1, args.rounds)):  # interleaved, so every command sees the same busy spells
            if args.before_src:
                runs.setdefault("before", []).append(
                    ingest(data, f"before-{size}-r{r}", args.before_src, work, log_file))
            runs.setdefault("ingest", []).append(ingest(data, f"after-{size}-r{r}", args.src, work, log_file))
            runs.setdefault("bare", []).append(measure(
                f"bare-{size}-r{r}", [sys.executable, str(Path(__file__).resolve()), "--bare", str(data)],
                work, log_file))
        for what, results in runs.items():
            jobs = sorted({j for j, _ in results})
            walls = [w for _, w in results]
            each = f" ({' '.join(f'{w:.1f}' for w in walls)})" if len(walls) > 1 else ""
            print(f"images={n} {what:<6} jobs={','.join(map(str, jobs)):<4} "
                  f"wall_s={statistics.median(walls):.1f}{each} load={os.getloadavg()[0]:.2f}", flush=True)

if __name__ == "__main__":
    main()
