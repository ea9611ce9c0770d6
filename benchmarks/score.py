"""Scoring throughput vs featurizer throughput, side by side in one Spark session.

Same images, same warm Python workers (the backbone is loaded once per worker and shared):
  (f) featurizer only: binaryFile -> DeepImageFeaturizer -> `noop` sink (forces every vector);
  (s) full scoring: `score_folder` into a fresh output folder: listing, content hashing, ledger anti-join,
      featurizer, head, quarantine split, one Parquet file per chunk, atomic rename.
Each is run `--repeats` times, alternating, after one warm-up; the best run of each is compared (the
machine is shared, so the best run is the least disturbed one). CPU seconds of the whole process tree are
reported too: they barely move with other people's load. Last line: `ratio=<s/f>` (images/s, wall time).

    python benchmarks/score.py --data ../shared/data/ozturk --images 1024 --chunk-size 512 --weights none
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from common import setup_logging, tree_cpu_seconds  # benchmarks/ is the script folder, so on sys.path

log = logging.getLogger("benchmarks.score")
CLASSES = ("covid", "no_findings", "pneumonia")


def copy_images(data: Path, n: int, dest: Path) -> list[Path]:
    """n images spread over the class folders, copied so the input folder holds nothing else."""
    per_class = [sorted(p for p in (data / c).iterdir() if p.is_file()) for c in CLASSES]
    picked: list[Path] = []
    i = 0
    while len(picked) < n and any(i < len(files) for files in per_class):
        picked += [files[i] for files in per_class if i < len(files)]
        i += 1
    dest.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy2(p, dest / f"{p.parent.name}__{p.name}")) for p in picked[:n]]


def build_model(spark, train: list[Path], backbone: str, weights: str, out: Path):
    """featurizer + LogisticRegression (fitted on a few images) + IndexToString, saved as a PipelineModel."""
    from pyspark.ml import PipelineModel
    from pyspark.ml.classification import LogisticRegression
    from pyspark.ml.feature import IndexToString
    from pyspark.sql import functions as F

    from xray_spark.features.featurizer import DeepImageFeaturizer

    df = spark.read.format("binaryFile").load([str(p) for p in train])
    label = F.regexp_extract("path", r"/(covid|no_findings|pneumonia)__", 1)
    df = df.withColumn("label",
                       F.array_position(F.array(*[F.lit(c) for c in CLASSES]), label).cast("double") - 1)
    feat = DeepImageFeaturizer(inputCol="content", outputCol="features", errorCol="featurize_error",
                               modelName=backbone, weights=weights)
    feats = feat.transform(df).where("features IS NOT NULL").cache()
    head = PipelineModel(stages=[LogisticRegression(maxIter=20, regParam=0.1).fit(feats)])
    feats.unpersist()
    model = PipelineModel(stages=[feat, head,
                                  IndexToString(inputCol="prediction", outputCol="predicted_label",
                                                labels=list(CLASSES))])
    model.write().overwrite().save(str(out))
    return model


def featurizer_only(spark, model, folder: Path) -> float:
    """Seconds to featurize every file in `folder` with the model's own featurizer stage."""
    from xray_spark.models.loading import featurizer_class, split_pipeline

    pipe = split_pipeline(model, featurizer_class())
    t = time.perf_counter()
    df = spark.read.format("binaryFile").option("recursiveFileLookup", "true").load(str(folder))
    pipe.featurize_frame(df).drop("content").write.format("noop").mode("overwrite").save()
    return time.perf_counter() - t


def full_scoring(spark, cfg, model_dir: Path, folder: Path, out: Path, chunk_size: int) -> float:
    from xray_spark.scoring import resolve_model, score_folder

    shutil.rmtree(out, ignore_errors=True)
    ref = resolve_model(str(model_dir), cfg)
    t = time.perf_counter()
    summary = score_folder(spark, cfg, ref, input_dir=str(folder), output_dir=str(out), chunk_size=chunk_size,
                           min_age_seconds=0)
    dt = time.perf_counter() - t
    n = len(list(folder.iterdir()))
    # identical files (the Ozturk set has a few) are scored once: they count as skipped
    if summary.files_seen != n or summary.newly_scored + summary.quarantined + summary.skipped != n:
        raise SystemExit(f"scoring did not account for every image: {summary.lines()}")
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/ozturk",
                    help="folder with covid/, no_findings/, pneumonia/")
    ap.add_argument("--images", type=int, default=1024)
    ap.add_argument("--chunk-size", type=int, default=512)
    ap.add_argument("--backbone", default="ResNet50")
    ap.add_argument("--weights", default="none", help="none (seeded random init) is as fast as imagenet")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--master", default="local[2]")
    ap.add_argument("--verbose", action="store_true",
                    help="per-phase timings of the scoring runs (debug log)")
    args = ap.parse_args()
    setup_logging(("py4j", "mlflow", "PIL", "h5py", "absl", "xray_spark"))
    if args.verbose:
        logging.getLogger("xray_spark.scoring").setLevel(logging.DEBUG)

    from xray_spark.config import load_config
    from xray_spark.session import get_spark

    cfg = load_config(local=None)
    work = Path(tempfile.mkdtemp(prefix="xray-score-bench-"))
    try:
        spark = get_spark(cfg, master=args.master, conf={"spark.ui.enabled": "false"})
        folder = work / "in"
        files = copy_images(Path(args.data), args.images, folder)
        warm = work / "warm"
        copy_images(Path(args.data), 6, warm)
        model = build_model(spark, copy_images(Path(args.data), 9, work / "train"), args.backbone,
                            args.weights, work / "model")
        log.info("warm-up (loads the backbone in every Python worker)")
        featurizer_only(spark, model, warm)
        full_scoring(spark, cfg, work / "model", warm, work / "warm_out", args.chunk_size)
        f_runs, s_runs, f_cpu, s_cpu = [], [], [], []
        for r in range(args.repeats):
            c0 = tree_cpu_seconds()
            f_runs.append(featurizer_only(spark, model, folder))
            c1 = tree_cpu_seconds()
            s_runs.append(full_scoring(spark, cfg, work / "model", folder, work / "out", args.chunk_size))
            c2 = tree_cpu_seconds()
            if c0 is not None:
                f_cpu.append(c1 - c0)
                s_cpu.append(c2 - c1)
            log.info("repeat %d: featurizer %.1fs, scoring %.1fs", r + 1, f_runs[-1], s_runs[-1])
        n = len(files)
        f_ips, s_ips = n / min(f_runs), n / min(s_runs)
        print(f"images: {n}, backbone {args.backbone} (weights {args.weights}), "
              f"chunk size {args.chunk_size}, master {args.master}, {os.cpu_count()} CPUs "
              "(shared machine: timings are noisy)")
        print(f"{'variant':<20}{'best s':>10}{'images/s':>12}   all runs (s)")
        print(f"{'featurizer only':<20}{min(f_runs):>10.1f}{f_ips:>12.2f}   "
              f"{', '.join(f'{x:.1f}' for x in f_runs)}")
        print(f"{'full scoring':<20}{min(s_runs):>10.1f}{s_ips:>12.2f}   "
              f"{', '.join(f'{x:.1f}' for x in s_runs)}")
        if f_cpu:
            print("CPU seconds (this process tree, less sensitive to other load): "
                  f"featurizer {min(f_cpu):.1f}, scoring {min(s_cpu):.1f} -> "
                  f"cpu_ratio={min(f_cpu) / min(s_cpu):.3f}")
        print(f"ratio={s_ips / f_ips:.3f} (scoring images/s / featurizer images/s, wall time; "
              "target >= 0.85)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
