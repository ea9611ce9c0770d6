"""Training time with features cached: every backbone x head x task, serial vs concurrent fits.

The issue's goal: with features cached, the 12 combinations of
`train --backbones ResNet50,InceptionV3 --heads lr,rf,dt --tasks binary,multiclass` take under 60 s on a
2-core machine. This script
  1. runs `train` once cold (ingest + featurize both backbones into a feature cache), then
  2. runs it again `--repeats` times for each `--parallel` setting (train.parallel_fits), alternating,
     reusing the ingest output and the feature cache, each into a fresh MLflow store,
and prints, per setting, the best wall time of the image combinations (fit, evaluate with 1000 bootstrap
resamples, confusion plot, nested MLflow run with the full PipelineModel), of the metadata baseline, and of
the whole command. (CPU seconds are not shown: Spark's Python workers exit when idle, taking theirs along.)
It also checks that every run produced the same metrics (concurrency must not change results). Last line:
`image_combos_s=<best> ... serial_over_parallel=<r>`.

    python benchmarks/train.py --data ../shared/data/ozturk --weights none
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import pandas as pd
from common import setup_logging  # benchmarks/ is on sys.path when run as a script

log = logging.getLogger("benchmarks.train")
METRICS = ["accuracy", "covid_recall", "macro_f1", "accuracy_ci_low", "accuracy_ci_high"]


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/ozturk")
    ap.add_argument("--backbones", default="ResNet50,InceptionV3")
    ap.add_argument("--heads", default="lr,rf,dt")
    ap.add_argument("--tasks", default="binary,multiclass")
    ap.add_argument("--weights", default="none",
                    help="none (seeded random init) trains exactly as fast as imagenet")
    ap.add_argument("--parallel", default="1,3", help="train.parallel_fits values to compare")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--master", default="local[2]")
    ap.add_argument("--keep", help="work folder to keep (default: a temporary folder, removed at the end)")
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    setup_logging(("py4j", "mlflow", "PIL", "h5py", "absl", "xray_spark", "alembic"))

    from xray_spark.config import load_config
    from xray_spark.session import get_spark
    from xray_spark.train.run import TrainSpec, run_training

    cfg = load_config(local=None)
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="xray-train-bench-"))
    lists = {k: getattr(args, k).split(",") for k in ("backbones", "heads", "tasks")}
    n_combos = len(lists["backbones"]) * len(lists["heads"]) * len(lists["tasks"])
    features = work / "features"

    def run(name: str, data: str, parallel: int) -> dict[str, float]:
        cfg.train.parallel_fits = parallel
        out = work / name
        shutil.rmtree(out, ignore_errors=True)
        spec = TrainSpec(data=data, out_dir=str(out), weights=args.weights, cache_dir=str(features), **lists)
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):  # the comparison tables: not what is measured here
            result = run_training(spark, cfg, spec)
        wall = time.perf_counter() - t0
        s = result.seconds
        row = {"wall": wall, "image_combos": sum(v for k, v in s.items() if k.startswith("heads_")),
               "featurize": sum(v for k, v in s.items() if k.startswith("featurize_")),
               "baseline": s.get("baseline", 0.0)}
        metrics[name] = result.comparison.set_index(["task", "backbone", "head"])[METRICS]
        log.info("%s: %s", name, ", ".join(f"{k} {v:.1f}s" for k, v in row.items()))
        return row

    metrics: dict[str, pd.DataFrame] = {}
    try:
        spark = get_spark(cfg, master=args.master, conf={"spark.ui.enabled": "false"})
        log.info("cold run: ingest + featurize %s into %s", args.backbones, features)
        cold = run("cold", args.data, cfg.train.parallel_fits)
        ingest_dir = str(work / "cold" / "ingest")
        settings = [int(p) for p in args.parallel.split(",")]
        rows: dict[int, list[dict[str, float]]] = {p: [] for p in settings}
        for r in range(args.repeats):
            for p in settings:
                rows[p].append(run(f"warm_p{p}_r{r}", ingest_dir, p))

        print(f"\n{n_combos} image combinations ({args.backbones} x {args.heads} x {args.tasks}, weights "
              f"{args.weights}) + metadata baseline; master {args.master}, {os.cpu_count()} CPUs; "
              "shared machine")
        print(f"cold run (featurize {cold['featurize']:.1f}s): {cold['wall']:.1f}s")
        print(f"{'parallel_fits':<14}{'image combos s':>15}{'per combo s':>12}{'baseline s':>11}"
              f"{'featurize s':>12}{'whole train s':>14}   (best of {args.repeats}; all image-combo runs)")
        best = {}
        for p in settings:
            b = min(rows[p], key=lambda x: x["image_combos"])
            best[p] = b
            runs = ", ".join(f"{x['image_combos']:.1f}" for x in rows[p])
            print(f"{p:<14}{b['image_combos']:>15.1f}{b['image_combos'] / n_combos:>12.2f}"
                  f"{b['baseline']:>11.1f}{b['featurize']:>12.1f}{b['wall']:>14.1f}   {runs}")
        frames = list(metrics.values())
        same = all(f.equals(frames[0]) for f in frames[1:])
        print(f"identical metrics in all {len(frames)} runs: {'yes' if same else 'NO'}")
        fastest = min(best, key=lambda p: best[p]["image_combos"])
        line = (f"image_combos_s={best[fastest]['image_combos']:.1f} (parallel_fits={fastest}) "
                f"goal_under_60s={'met' if best[fastest]['image_combos'] < 60 else 'NOT met'}")
        if 1 in best and fastest != 1:
            line += f" serial_over_parallel={best[1]['image_combos'] / best[fastest]['image_combos']:.2f}"
        print(line)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
