"""Compare heads on one feature set: fit every head x task on the persisted split, evaluate on its test side.

Pure compute, as Kedro separates nodes from pipelines: Spark frames and config in, results out. Nothing here
logs to MLflow, writes a file or prints; `train/run.py` does that with what these functions return, so the
same functions serve image features, the metadata baseline and anything that wants rows without side effects.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pyspark.ml import PipelineModel
from pyspark.sql import DataFrame, SparkSession

from xray_spark.config import Config
from xray_spark.evaluation.metrics import compute_metrics, confusion, metrics_with_intervals
from xray_spark.models.frames import task_frame
from xray_spark.models.shift_stage import ShiftModel
from xray_spark.tasks import Task
from xray_spark.train.calibrate import calibrate
from xray_spark.train.fit import FitResult, fit_head
from xray_spark.train.heads import get_head, head_params, head_title

IMAGE, BASELINE = "image", "metadata-baseline"  # the two kinds of rows in a comparison


@dataclass(frozen=True)
class TaskFrame:
    """One task's rows of a feature set (cached by the caller), and how many of them train."""

    task: Task
    frame: DataFrame
    n_train: int


@dataclass(frozen=True)
class FeatureSet:
    """What every head x task combination on one set of features shares."""

    kind: str  # IMAGE or BASELINE
    backbone: str  # backbone name, or the baseline's name
    tasks: tuple[TaskFrame, ...]
    n_features: int
    fingerprint: str  # the weights fingerprint ("n/a" for the baseline)
    featurize_seconds: float
    prep: PipelineModel | None = None  # the baseline's fitted metadata -> features pipeline
    shift: ShiftModel | None = None  # the training images' shift reference (image features only)


@dataclass
class ComboResult:
    """One fitted and evaluated head on one task: the row of the comparison, plus what train/run.py stores."""

    features: FeatureSet
    head: str
    task: Task
    params: dict[str, Any]
    fit: FitResult
    metrics: dict[str, float]
    confusion: np.ndarray
    n_train: int
    per_source: dict[str, dict[str, float]] = field(default_factory=dict)  # only with 2+ test sources
    # a model with a backbone of its own (a fine-tune): (carried runs:/ URI, tensor sha256, local file) of
    # its weights; None: the run's shared backbone weights
    own_weights: tuple[str, str, Path] | None = None

    @property
    def name(self) -> str:
        return f"{self.task.name}/{self.features.backbone}/{self.head}"

    def row(self, weights: str) -> dict[str, Any]:
        """The comparison-table row (without the MLflow run id, which only train/run.py knows)."""
        fs = self.features
        return {"task": self.task.name, "backbone": fs.backbone, "head": self.head,
                "head_title": head_title(self.head), "kind": fs.kind,
                "weights": weights if fs.kind == IMAGE else "n/a", "confusion": self.confusion.tolist(),
                **self.metrics}


def small_frame(spark: SparkSession, sdf: DataFrame, key: str = "sha256") -> DataFrame:
    """Cache a training table in as many partitions as there are task slots, rows in a fixed order.

    Why: the join leaves spark.sql.shuffle.partitions partitions, and every LBFGS iteration or tree level
    then pays for that many tasks on a table of ~1000 rows. Hash partitioning by content hash plus a sort
    keeps the row order, and so seeded models such as RandomForest, the same from run to run.
    """
    n = max(1, spark.sparkContext.defaultParallelism)
    return sdf.repartition(n, key).sortWithinPartitions(key).cache()


def task_frames(frame: DataFrame, tasks: list[Task], cfg: Config) -> tuple[TaskFrame, ...]:
    """Per task: its classes' rows with the label index and (optionally) class weights, cached."""
    out = []
    for task in tasks:
        tframe = task_frame(frame, task, weighted=cfg.train.class_weights).cache()
        out.append(TaskFrame(task, tframe, tframe.where("split = 'train'").count()))
    return tuple(out)


def fit_and_evaluate(features: FeatureSet, head: str, tf: TaskFrame, cfg: Config, *,
                     calibrated: bool = True) -> ComboResult:
    """Fit `head` on the train side of `tf`, predict its test side, metrics with group-bootstrap intervals.
    Image heads are calibrated (config `calibration`, train/calibrate.py) unless `calibrated` is False;
    the metadata baseline never is (only its accuracy is compared).

    Safe to call from several threads at once (Spark runs concurrent jobs side by side).
    """
    tc = cfg.train
    spec = get_head(head)
    params = head_params(spec, tc.head_params.get(head), tc.seed)
    grid = tc.param_grids.get(head) if tc.cross_validate else None
    task = tf.task
    fit = fit_head(spec, params, tf.frame, task, features.n_features, weighted=tc.class_weights, cv_grid=grid,
                   cv_metric=tc.cv_metric)
    if calibrated and features.kind == IMAGE:
        fit = calibrate(fit, spec, params, tf.frame, task, features.n_features, cfg)
    return measured(features, head, task, params, fit, tf.n_train, cfg)


def measured(features: FeatureSet, head: str, task: Task, params: dict[str, Any], fit: FitResult,
             n_train: int, cfg: Config, own_weights: tuple[str, str, Path] | None = None) -> ComboResult:
    """A fitted model's test-side predictions -> its comparison result: metrics with group-bootstrap
    intervals, confusion matrix, per-source metrics. One home for how every row is measured (MLlib heads,
    the baseline, fine-tunes)."""
    tc = cfg.train
    metrics = metrics_with_intervals(fit.y_true, fit.y_pred, fit.proba, list(task.labels), fit.groups,
                                     n_resamples=tc.bootstrap_resamples, seed=tc.seed, positive=task.positive)
    metrics.update(fit_seconds=fit.fit_seconds, featurize_seconds=features.featurize_seconds,
                   **calibration_metrics(fit, task))
    return ComboResult(features, head, task, params, fit, metrics,
                       confusion(fit.y_true, fit.y_pred, task.n_classes), n_train,
                       per_source_metrics(fit, task, cfg), own_weights)


def calibration_metrics(fit: FitResult, task: Task) -> dict[str, float]:
    """ECE and Brier of the head's own probabilities on the test split beside the calibrated ones (which
    `ece` and `brier` measure), the temperature and how many out-of-fold rows it was fitted on; NaN for a
    head left uncalibrated."""
    if fit.calibration is None or fit.proba_uncalibrated is None:
        return dict.fromkeys(("ece_uncalibrated", "brier_uncalibrated", "temperature", "calibration_n",
                              "calibration_seconds"), math.nan)
    before = compute_metrics(fit.y_true, fit.y_pred, fit.proba_uncalibrated, list(task.labels),
                             positive=task.positive)
    return {"ece_uncalibrated": before["ece"], "brier_uncalibrated": before["brier"],
            "temperature": fit.calibration.temperature, "calibration_n": float(fit.calibration.n),
            "calibration_seconds": fit.calibration_seconds}


def per_source_metrics(fit: FitResult, task: Task, cfg: Config) -> dict[str, dict[str, float]]:
    """The test side's metrics per source (with intervals), when it holds more than one source."""
    if fit.sources is None or len(set(fit.sources)) < 2:
        return {}
    tc = cfg.train
    out = {}
    for source in sorted(set(fit.sources)):
        m = fit.sources == source
        out[source] = metrics_with_intervals(fit.y_true[m], fit.y_pred[m], fit.proba[m], list(task.labels),
                                             fit.groups[m], n_resamples=tc.bootstrap_resamples, seed=tc.seed,
                                             positive=task.positive)
    return out


def champion_rows(rows: list[dict[str, Any]], tasks: list[str], metric: str) -> dict[str, dict[str, Any]]:
    """Best image row per task by `metric` (ties: accuracy, then the earlier row); tasks without one are
    left out."""
    out: dict[str, dict[str, Any]] = {}
    for task in tasks:
        cand = [r for r in rows if r["kind"] == IMAGE and r["task"] == task and metric in r]
        if cand:
            out[task] = max(cand, key=lambda r: (_orderable(r[metric]), _orderable(r["accuracy"])))
    return out


def _orderable(value: Any) -> float:
    """NaN (e.g. an undefined ROC-AUC) ranks below every number instead of breaking the comparison."""
    return float(value) if value is not None and math.isfinite(float(value)) else -math.inf


