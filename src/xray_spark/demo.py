"""`xray-spark demo`: the main job end to end, on the `train:` defaults of the configuration.

fetch the Ozturk 2020 dataset (or take --data) -> ingest -> featurize with the configured backbones ->
train and compare the configured heads for the configured tasks -> register champions -> score the test
split with each champion -> with --external DIR, evaluate each champion on that other source and put internal
vs external side by side in report.md. Returns what happened; the CLI prints it.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from pyspark.sql import SparkSession

from xray_spark import paths
from xray_spark.config import Config
from xray_spark.data.fetch import fetch_dataset
from xray_spark.data.layout import IngestLayout
from xray_spark.errors import UserError
from xray_spark.evaluation.external import EvalResult, evaluate_model
from xray_spark.evaluation.report_parts import side_by_side_md
from xray_spark.features.weights import resolve_weights
from xray_spark.scoring.run import ScoreSummary, score_command
from xray_spark.spark_io import HadoopFS
from xray_spark.train.compare import IMAGE
from xray_spark.train.options import resolve_train_options
from xray_spark.train.report import append_section
from xray_spark.train.run import TrainResult, run_training

log = logging.getLogger(__name__)


@dataclass
class DemoResult:
    train: TrainResult
    weights: str
    # why ImageNet weights could not be had, when the demo fell back to random ones
    weights_fallback: str | None
    n_test: int
    predictions: Path
    scores: dict[str, ScoreSummary] = field(default_factory=dict)
    external: dict[str, EvalResult] = field(default_factory=dict)  # task -> the champion on --external
    external_rows: dict[str, dict] = field(default_factory=dict)  # task -> the champion's internal row


def _weights_or_fallback(requested: str | None, default: str, backbones: list[str]) -> tuple[str, str | None]:
    """(weights, reason for falling back): when the configured default is ImageNet and its weights cannot
    be had (offline, nothing cached), fall back to `none` and say why.

    An explicit --weights is never second-guessed: if it cannot be resolved the demo fails with that reason.
    """
    if requested or default != "imagenet":
        return requested or default, None
    try:
        for b in backbones:
            resolve_weights(b, "imagenet")
        return "imagenet", None
    except UserError as exc:
        log.warning("ImageNet weights are not available (%s): continuing with random (seeded) weights", exc)
        return "none", str(exc)


def _data_folder(args: argparse.Namespace, out: Path) -> Path:
    if args.data:
        return Path(args.data)
    target = out / "data" / "ozturk2020"
    result = fetch_dataset("ozturk2020", target)
    if result.failed:
        raise UserError(
            f"could not download {len(result.failed)} files of ozturk2020 into {target}; "
            "re-run to resume, or pass --data DIR with a local copy"
        )
    return target


def _test_split_folder(spark: SparkSession, ingest_dir: str, dest: str) -> int:
    """Copy the test-split images into a fresh folder: the 'new images' the champion scores.

    The demo's test split is a few hundred files: their paths come to the driver one partition at a time.
    """
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


def run_demo(spark_factory, cfg: Config, args: argparse.Namespace) -> DemoResult:
    """Train on the configured defaults (CLI flags win), then score the test split with each champion."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = _data_folder(args, out)
    options = argparse.Namespace(data=str(data), out=str(out), backbones=args.backbones, heads=args.heads,
                                 tasks=None, weights=args.weights, tracking_uri=args.tracking_uri)
    spec = resolve_train_options(options, cfg)
    spec.weights, fallback = _weights_or_fallback(args.weights, cfg.train.weights, spec.backbones)
    spark = spark_factory()
    result = run_training(spark, cfg, spec)

    score_input = out / "score_input"
    n_test = _test_split_folder(spark, result.ingest_dir, str(score_input))
    cfg.tracking_uri = result.tracking_uri
    demo = DemoResult(result, spec.weights, fallback, n_test, out / "predictions")
    for task, champ in result.champions.items():
        log.info("scoring %d test-split images with %s (%s + %s)", n_test, champ["uri"], champ["backbone"],
                 champ["head"])
        demo.scores[task] = score_command(lambda: spark, cfg, model=champ["uri"], input_dir=str(score_input),
                                          output_dir=str(demo.predictions / task), min_age_seconds=0)
    if getattr(args, "external", None):
        _evaluate_external(spark, cfg, demo, args.external, out)
    return demo


def _champion_row(comparison: pd.DataFrame, task: str, champ: dict[str, str]) -> dict:
    rows = comparison[(comparison["task"] == task) & (comparison["kind"] == IMAGE)
                      & (comparison["backbone"] == champ["backbone"]) & (comparison["head"] == champ["head"])]
    return rows.iloc[0].to_dict()


def _evaluate_external(spark: SparkSession, cfg: Config, demo: DemoResult, external: str, out: Path) -> None:
    """Each champion on the external folder (ingested once), then internal vs external in report.md."""
    data = external
    sections = []
    for task, champ in demo.train.champions.items():
        log.info("evaluating the %s champion on %s", task, external)
        result = evaluate_model(spark, cfg, model=champ["uri"], data=data, out=str(out / "external" / task),
                                tracking_uri=demo.train.tracking_uri)
        data = str(out / "external" / task / "ingest")  # the next champion reuses this ingest
        internal = _champion_row(demo.train.comparison, task, champ)
        demo.external[task], demo.external_rows[task] = result, internal
        sections.append(side_by_side_md(
            f"{result.task.description}: {champ['backbone']} + {champ['head']} (version {champ['version']})",
            internal, result.metrics, result.source, int(internal.get("n_test", 0)), result.n,
            baseline=result.baseline))
    source = next(iter(demo.external.values())).source
    intro = ("The internal numbers come from the grouped test split of the training data; the external ones "
             f"from a source the models never saw (`{source}`, `external/<task>/report.md`), beside the "
             "training run's metadata-only baseline (same head, file metadata alone) on the same images. "
             "A gap is flagged when the model's internal and external 95% intervals do not overlap.")
    append_section(Path(demo.train.files["report.md"]), f"Internal vs external: the champions on {source}",
                   intro, sections)
