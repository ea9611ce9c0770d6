"""`xray-spark demo`: the main job end to end on defaults.

fetch the Ozturk 2020 dataset (or take --data) -> ingest -> featurize with ResNet50 and InceptionV3 ->
train and compare every head for both tasks -> register champions -> score the test split with each champion
-> print where the report and the MLflow UI are.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from xray_spark.config import Config
from xray_spark.errors import UserError

log = logging.getLogger(__name__)

BANNER = "=" * 78


def _resolve_weights(requested: str | None, backbones: list[str]) -> str:
    """Default ImageNet; when the weights cannot be had (offline, nothing cached) fall back to `none`, loudly.

    An explicit --weights is never second-guessed: if it cannot be resolved the demo fails with that reason.
    """
    from xray_spark.features.weights import resolve_weights

    if requested:
        return requested
    try:
        for b in backbones:
            resolve_weights(b, "imagenet")
        return "imagenet"
    except UserError as exc:
        log.warning("%s", exc)
        print(f"{BANNER}\nImageNet weights are not available here ({exc}).\n"
              "The demo continues with RANDOM (seeded) weights: its numbers are NOT ImageNet-feature results.\n"
              f"Pass --weights PATH or run once with internet to get the real thing.\n{BANNER}")
        return "none"


def _data_folder(args: argparse.Namespace, out: Path) -> Path:
    if args.data:
        return Path(args.data)
    from xray_spark.data.fetch import fetch_dataset

    target = out / "data" / "ozturk2020"
    result = fetch_dataset("ozturk2020", target)
    if getattr(result, "failed", None):
        raise UserError(
            f"could not download {len(result.failed)} files of ozturk2020 into {target}; "
            "re-run to resume, or pass --data DIR with a local copy"
        )
    return target


def _test_split_folder(spark, ingest_dir: str, dest: str) -> int:
    """Copy the test-split images into a fresh folder: the 'new images' the champion scores.

    The demo's test split is a few hundred files: their paths come to the driver one partition at a time.
    """
    from xray_spark import paths
    from xray_spark.data.layout import IngestLayout
    from xray_spark.spark_io import HadoopFS

    fs = HadoopFS(spark)
    target = paths.qualify(spark, dest)
    fs.delete(target)
    fs.mkdirs(target)
    test = (spark.read.parquet(IngestLayout(ingest_dir).images).where("status = 'ok' AND split = 'test'")
            .select("path").orderBy("path"))
    n = 0
    for n, row in enumerate(test.toLocalIterator(), 1):
        fs.copy(row["path"], paths.join(target, f"{n - 1:05d}_{paths.file_name(row['path'])}"))
    return n


def run_demo(spark_factory, cfg: Config, args: argparse.Namespace) -> int:
    from xray_spark.features.backbones import backbone_names
    from xray_spark.score import score_command
    from xray_spark.train.compare import TrainSpec, run_training
    from xray_spark.train.heads import HEADS
    from xray_spark.train.options import check_train_config
    from xray_spark.train.tasks import TASKS, parse_list

    backbones = parse_list(args.backbones or "ResNet50,InceptionV3", backbone_names(), "backbone")
    heads = parse_list(args.heads or ",".join(HEADS), list(HEADS), "head")
    check_train_config(cfg)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = _data_folder(args, out)
    weights = _resolve_weights(args.weights, backbones)
    spark = spark_factory()
    spec = TrainSpec(data=str(data), out_dir=str(out), backbones=backbones, heads=heads, tasks=list(TASKS),
                     weights=weights, tracking_uri=args.tracking_uri)
    result = run_training(spark, cfg, spec)

    n_test = _test_split_folder(spark, result.ingest_dir, str(out / "score_input"))
    import mlflow

    cfg.tracking_uri = mlflow.get_tracking_uri()
    for task, champ in result.champions.items():
        print(f"\nscoring {n_test} test-split images with {champ['uri']} ({champ['backbone']} + {champ['head']})")
        score_command(lambda: spark, cfg, model=champ["uri"], input_dir=str(out / "score_input"),
                      output_dir=str(out / "predictions" / task))
    print(f"\n{BANNER}\nreport:      {result.files['report.md']}\ncomparison:  {result.files['comparison.csv']}")
    print(f"predictions: {out / 'predictions'}")
    print(f"MLflow UI:   mlflow ui --backend-store-uri {result.tracking_uri}   (then open http://127.0.0.1:5000)")
    if weights == "none":
        print("NOTE: features came from randomly initialised backbones (no ImageNet weights on this machine).")
    print(BANNER)
    return 0
