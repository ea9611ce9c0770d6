"""External evaluation: a trained model's metrics on any labelled folder, measured the way `train` measures.

Why: a grouped internal test split still shares hospitals, scanners and file pipelines with the training
data. A folder from another source answers the question a reader asks next — does the model travel? The
folder goes through the same ingest (labels, validation, duplicate groups), the model's own Spark pipeline
makes the predictions (as `score` does), and evaluation/metrics.py computes the same metrics with the same 95%
group-bootstrap intervals.

`external_predictions` and `evaluation_arrays` compute; `evaluate_model` writes files and logs to MLflow.
Internal vs external side by side (`side_by_side_md`, also for leave-one-source-out) is in report_parts.py.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pyspark import StorageLevel
from pyspark.ml import PipelineModel
from pyspark.ml.functions import vector_to_array
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from xray_spark import paths
from xray_spark.config import IMAGES_PER_TASK, Config
from xray_spark.data.images import data_roots, image_contents, load_or_ingest
from xray_spark.errors import UserError, one_line
from xray_spark.evaluation.metrics import confusion, metrics_with_intervals
from xray_spark.evaluation.reliability import (
    calibration_line,
    calibration_section,
    calibration_summary,
    reliability_png,
)
from xray_spark.evaluation.report_parts import as_good_as, md_table, plot_confusion, with_ci
from xray_spark.models.loading import (
    ModelRef,
    ScoringPipeline,
    featurizer_class,
    load_pipeline,
    resolve_model,
    split_pipeline,
)
from xray_spark.models.metadata_baseline import INPUT_COLUMNS
from xray_spark.models.shift_report import shift_line, shift_md, shift_summary
from xray_spark.models.shift_stage import FLAG_COL, SHIFT_COL
from xray_spark.spark_io import balanced_partitions
from xray_spark.tasks import TASKS, Task
from xray_spark.tracking import BASELINE_TAG, configure, finite_metrics, linked_model, tracking_uri_for

log = logging.getLogger(__name__)

HEADLINE = ("covid_precision", "covid_recall", "covid_f1", "accuracy", "macro_f1", "roc_auc_macro")


@dataclass
class BaselineResult:
    """The metadata-only baseline of the model's training run, measured on the same images."""

    uri: str
    n: int
    metrics: dict[str, float]
    confusion: np.ndarray


@dataclass
class EvalResult:
    """What `evaluate_model` measured and wrote. `n` images were evaluated; `excluded` maps labels the model
    does not know to their image counts; `no_features` images could not be featurized."""

    model: ModelRef
    task: Task
    n: int
    metrics: dict[str, float]
    confusion: np.ndarray
    excluded: dict[str, int] = field(default_factory=dict)
    quarantined: int = 0  # ingest set these aside (not images, unreadable, no label)
    no_features: int = 0
    data_fingerprint: str = ""
    source: str = ""  # the evaluated folder's name (of the original folder when given an ingest output)
    run_id: str = ""
    tracking_uri: str = ""
    files: dict[str, Path] = field(default_factory=dict)
    baseline: BaselineResult | None = None
    baseline_note: str = ""  # why there is no baseline, when there is none
    shift: dict[str, float] | None = None  # models/shift_report.shift_summary; None: no shift stage
    calibration: dict[str, float] | None = None  # reliability.calibration_summary; None: no probabilities

    def lines(self) -> list[str]:
        """The summary the CLI prints: headline metrics with intervals, counts, where the files are."""
        out = [f"model: {self.model.name} version {self.model.version} ({self.model.uri}), "
               f"{self.task.description}", f"images evaluated: {self.n}"]
        for m in HEADLINE:
            v, lo, hi = (self.metrics.get(k, float("nan")) for k in (m, f"{m}_ci_low", f"{m}_ci_high"))
            if np.isfinite(v):
                ci = f" [{lo:.3f}, {hi:.3f}]" if np.isfinite(lo) and np.isfinite(hi) else ""
                out.append(f"{m}: {v:.3f}{ci}")
        if self.excluded:
            out.append("not evaluated (label unknown to the model): "
                       + ", ".join(f"{k} {v}" for k, v in sorted(self.excluded.items())))
        out.append(f"set aside: {self.quarantined} at ingest, {self.no_features} without features")
        if self.baseline is not None:
            verdict = as_good_as(self.metrics, self.baseline.metrics, "accuracy")
            out.append(f"metadata-only baseline ({self.baseline.uri}): accuracy "
                       f"{with_ci(self.baseline.metrics, 'accuracy')}"
                       + {True: " - as good as the model here", None: " (no interval to compare)",
                          False: ""}[verdict])
        else:
            out.append(f"metadata-only baseline: none ({self.baseline_note})")
        if self.shift is not None:
            out.append(shift_line(self.shift))
        if self.calibration is not None:
            out.append(calibration_line(self.calibration))
        out += [f"{name}: {path}" for name, path in self.files.items()]
        out.append(f"MLflow run {self.run_id} at {self.tracking_uri}")
        return out


def task_of(labels: list[str]) -> Task:
    """The model's classes (its IndexToString order) -> the task it was trained for; COVID is positive."""
    for task in TASKS.values():
        if tuple(labels) == task.labels:
            return task
    if "covid" not in labels:
        raise UserError(f"the model's classes {labels} include no 'covid': not an xray-spark model")
    return Task("custom", tuple(labels), description=" vs ".join(labels))


def external_predictions(spark: SparkSession, pipe: ScoringPipeline, images: DataFrame,
                         contents: DataFrame) -> pd.DataFrame:
    """(sha256, label, group_id, predicted_label, proba array or None, features_ok) per ok image whose label
    the model knows: a few numbers per image. Each distinct content is featurized once (persisted for the two
    branches, as scoring does); content bytes never reach the driver."""
    ok = (images.where("status = 'ok'").where(F.col("label").isin(list(pipe.labels)))
          .select("sha256", "label", "group_id"))
    n_contents = ok.select("sha256").distinct().count()
    todo = (contents.join(ok.select("sha256").distinct(), "sha256", "left_semi").dropDuplicates(["sha256"])
            .select("sha256", F.col("content").alias(pipe.input_col))
            .repartition(balanced_partitions(n_contents, spark.sparkContext.defaultParallelism,
                                             IMAGES_PER_TASK)))
    feats = pipe.featurize_frame(todo).drop(pipe.input_col).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        scored = pipe.score_frame(feats.where(F.col(pipe.features_col).isNotNull()))
        proba = (vector_to_array(F.col(pipe.probability_col), "float64")
                 if pipe.probability_col and pipe.probability_col in scored.columns
                 else F.lit(None).cast("array<double>"))
        shift = pipe.shift_columns(scored)[:2]  # shift_score, in_distribution
        predicted = scored.select("sha256", F.col(pipe.label_col).cast("string").alias("predicted_label"),
                                  proba.alias("proba"), F.lit(True).alias("features_ok"), *shift)
        failed = feats.where(F.col(pipe.features_col).isNull()).select(
            "sha256", F.lit(None).cast("string").alias("predicted_label"),
            F.lit(None).cast("array<double>").alias("proba"), F.lit(False).alias("features_ok"),
            *pipe.shift_columns(nulls=True)[:2])
        return ok.join(predicted.unionByName(failed), "sha256", "left").toPandas()
    finally:
        feats.unpersist()


def baseline_predictions(model: PipelineModel, images: DataFrame, labels: list[str]) -> pd.DataFrame:
    """The same rows as `external_predictions`, predicted by a metadata-only baseline
    (models/metadata_baseline.py) from the images table's own columns; no image is decoded."""
    ok = (images.where("status = 'ok'").where(F.col("label").isin(labels))
          .select("sha256", "label", "group_id", *INPUT_COLUMNS))
    scored = model.transform(ok)
    proba = (vector_to_array(F.col("probability"), "float64") if "probability" in scored.columns
             else F.lit(None).cast("array<double>"))
    return scored.select("sha256", "label", "group_id", F.col("predicted_label").cast("string"),
                         proba.alias("proba"), F.lit(True).alias("features_ok")).toPandas()


def evaluation_arrays(pdf: pd.DataFrame, labels: list[str]) -> tuple[np.ndarray, np.ndarray,
                                                                     np.ndarray | None, np.ndarray]:
    """Predicted rows -> (y_true, y_pred, proba or None, groups) for metrics.metrics_with_intervals."""
    done = pdf[pdf["features_ok"].fillna(False).astype(bool)]
    proba = None
    if len(done) and done["proba"].notna().all():
        proba = np.vstack([np.asarray(p, dtype=float) for p in done["proba"]])
        if proba.shape[1] != len(labels):
            raise ValueError(f"probability vectors have {proba.shape[1]} entries for {len(labels)} classes")
    return (done["label"].to_numpy(), done["predicted_label"].to_numpy(), proba,
            done["group_id"].astype(str).to_numpy())


def fingerprint(pdf: pd.DataFrame) -> str:
    """What was evaluated, as one hash: the sorted (content sha256, label) pairs (no paths: they can carry
    identity and differ between copies of one dataset)."""
    pairs = sorted(f"{s}:{lab}" for s, lab in zip(pdf["sha256"], pdf["label"], strict=True))
    return hashlib.sha256("\n".join(pairs).encode()).hexdigest()


def _report(result: EvalResult, png: Path) -> str:
    labels = list(result.task.labels)
    lines = [f"# External evaluation: {result.model.name} version {result.model.version}", "",
             f"Model `{result.model.uri}` ({result.task.description}) on `{result.source}`: "
             f"{result.n} images (data fingerprint `{result.data_fingerprint[:16]}`).", ""]
    lines += ["| metric | value | 95% interval (bootstrap over groups) |", "|---|---|---|"]
    for m in HEADLINE:
        v = result.metrics.get(m, float("nan"))
        lo, hi = result.metrics.get(f"{m}_ci_low"), result.metrics.get(f"{m}_ci_high")
        ci = f"{lo:.3f} – {hi:.3f}" if lo is not None and np.isfinite(lo) and np.isfinite(hi) else "n/a"
        lines.append(f"| {m} | {v:.3f} | {ci} |" if np.isfinite(v) else f"| {m} | n/a | {ci} |")
    lines += ["", "Confusion matrix (rows: true, columns: predicted):", "",
              "| | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|"]
    lines += [f"| {lab} | " + " | ".join(str(int(c)) for c in row) + " |"
              for lab, row in zip(labels, result.confusion, strict=True)]
    absent = [lab for lab, row in zip(labels, result.confusion, strict=True) if row.sum() == 0]
    lines += ["", f"![confusion]({png.name})", ""]
    if absent:
        lines.append(f"- No images of {', '.join(absent)} in this folder: metrics of those classes are n/a.")
    if result.excluded:
        lines.append("- Not evaluated, labels the model does not know: "
                     + ", ".join(f"{k} {v}" for k, v in sorted(result.excluded.items())) + ".")
    if result.quarantined or result.no_features:
        lines.append(f"- Set aside: {result.quarantined} at ingest (see ingest/), {result.no_features} "
                     "that the featurizer could not read.")
    return "\n".join(lines + ["", *_baseline_md(result), *shift_md(result.shift),
                              *calibration_section(result.calibration, "reliability.png")]) + "\n"


def _baseline_md(result: EvalResult) -> list[str]:
    """The model beside its training run's metadata-only baseline on the same images."""
    lines = ["## Metadata-only baseline of the same training run", ""]
    b = result.baseline
    if b is None:
        return [*lines, f"Not evaluated: {result.baseline_note}.", ""]
    lines += [f"The same head trained on file metadata alone (width, height, format, mode, bit depth, size; "
              f"`{b.uri}`), on the same {b.n} images.", "",
              md_table(("metric", "model", "metadata-only baseline"),
                       [[m, with_ci(result.metrics, m), with_ci(b.metrics, m)] for m in HEADLINE]), ""]
    verdict = as_good_as(result.metrics, b.metrics, "accuracy")
    if verdict is None:
        lines.append("No accuracy interval for the model: only the point estimates above can be compared.")
    elif verdict:
        lines.append("**The baseline, which never sees a pixel, reaches the model's 95% accuracy interval "
                     "here: on this data the model may be reading file properties, not lungs.**")
    else:
        lines.append("The baseline's accuracy lies below the model's 95% interval.")
    return [*lines, ""]


def evaluate_model(spark: SparkSession, cfg: Config, *, model: str, data: str, out: str,
                   tracking_uri: str | None = None, ref: ModelRef | None = None) -> EvalResult:
    """`xray-spark evaluate`: ingest `data` under OUT/ingest, predict with `model`, write metrics.json,
    report.md and confusion.png to `out`, and log an evaluation run to MLflow (tagged with the model's name
    and version and the data's fingerprint)."""
    t0 = time.time()
    out_dir = Path(out)
    uri = tracking_uri_for(tracking_uri, cfg.tracking_uri, out_dir)
    if ref is None:
        cfg.tracking_uri = uri
        ref = resolve_model(model, cfg)
    pipe = split_pipeline(load_pipeline(spark, ref), featurizer_class(), ref.uri)
    task = task_of(list(pipe.labels))
    images, summary, _ = load_or_ingest(spark, data, str(out_dir), cfg)
    counts = {(r["status"], r["label"]): r["count"]
              for r in images.groupBy("status", "label").count().collect()}
    excluded = {str(lab): n for (status, lab), n in counts.items()
                if status == "ok" and lab not in task.labels}
    quarantined = sum(n for (status, _), n in counts.items() if status != "ok")
    pdf = external_predictions(spark, pipe, images, image_contents(spark, summary, cfg))
    if pdf.empty:
        raise UserError(f"--data {data}: no images with a label the model knows ({', '.join(task.labels)})")
    n, metrics, cm = _measure(pdf, task, cfg)
    result = EvalResult(ref, task, n, metrics, cm,
                        excluded=excluded, quarantined=quarantined,
                        no_features=int((~pdf["features_ok"].fillna(False).astype(bool)).sum()),
                        data_fingerprint=fingerprint(pdf),
                        source=", ".join(paths.file_name(r) for r in data_roots(summary)))
    result.shift = _shift(pipe, pdf)
    result.calibration = _calibration(pipe, pdf, task)
    featurized = set(pdf.loc[pdf["features_ok"].fillna(False).astype(bool), "sha256"])
    result.baseline, result.baseline_note = _baseline(spark, cfg, ref, images, task, featurized)
    _write_and_log(result, out_dir, uri, _reliability_png(result, pdf, pipe.temperature, out_dir))
    log.info("evaluated %s version %s on %d images in %.1fs", ref.name, ref.version, result.n,
             time.time() - t0)
    return result


def _shift(pipe: ScoringPipeline, pdf: pd.DataFrame) -> dict[str, float] | None:
    """The shift check's figures on the featurized rows (None for a model without a ShiftModel)."""
    if pipe.shift is None:
        return None
    done = pdf[pdf["features_ok"].fillna(False).astype(bool)]
    flags = [None if pd.isna(f) else bool(f) for f in done[FLAG_COL]]
    scores = [None if pd.isna(v) else float(v) for v in done[SHIFT_COL]]
    return shift_summary(scores, flags, list(done["label"] == done["predicted_label"]),
                         pipe.shift.getReference())


def _probabilities(pdf: pd.DataFrame, task: Task) -> tuple[np.ndarray, np.ndarray] | None:
    """(class indices, probability rows) of the featurized rows; None for a head without probabilities."""
    labels = list(task.labels)
    y_true, _, proba, _ = evaluation_arrays(pdf, labels)
    if proba is None or not len(y_true):
        return None
    codes = {lab: i for i, lab in enumerate(labels)}
    return np.array([codes[v] for v in y_true]), proba


def _calibration(pipe: ScoringPipeline, pdf: pd.DataFrame, task: Task) -> dict[str, float] | None:
    """ECE on the featurized rows, with and without the model's temperature (None: no probabilities)."""
    found = _probabilities(pdf, task)
    return None if found is None else calibration_summary(*found, pipe.temperature)


def _reliability_png(result: EvalResult, pdf: pd.DataFrame, temperature: float | None, out_dir: Path
                     ) -> Path | None:
    """reliability.png: the model's probabilities on this folder (and the head's own, when calibrated)."""
    found = _probabilities(pdf, result.task)
    title = f"{result.model.name} v{result.model.version} on {result.source} (n={result.n})"
    return None if found is None else reliability_png(*found, temperature, title, out_dir / "reliability.png")


def _measure(pdf: pd.DataFrame, task: Task, cfg: Config) -> tuple[int, dict[str, float], np.ndarray]:
    """Predicted rows -> (n, metrics with group-bootstrap intervals, confusion counts), measured as `train`
    measures."""
    labels = list(task.labels)
    y_true, y_pred, proba, groups = evaluation_arrays(pdf, labels)
    metrics = metrics_with_intervals(y_true, y_pred, proba, labels, groups,
                                     n_resamples=cfg.train.bootstrap_resamples, seed=cfg.train.seed,
                                     positive=task.positive)
    codes = {lab: i for i, lab in enumerate(labels)}
    cm = confusion(np.array([codes[v] for v in y_true]), np.array([codes[v] for v in y_pred]), len(labels))
    return len(y_true), metrics, cm


def _baseline(spark: SparkSession, cfg: Config, ref: ModelRef, images: DataFrame, task: Task,
              featurized: set[str]) -> tuple[BaselineResult | None, str]:
    """The metadata-only baseline `train` linked to this model version, on the images the model was measured
    on (`featurized` content hashes); or why none. A baseline that cannot be used costs the evaluation nothing
    but this note."""
    if ref.kind != "registry":
        return None, "only a registered model version links its training run's baseline"
    try:
        uri = linked_model(ref.name, ref.version, BASELINE_TAG)
        if not uri:
            return None, (f"{ref.name} version {ref.version} links no baseline (trained with --no-baseline, "
                          "or by an older xray-spark)")
        model = load_pipeline(spark, resolve_model(uri, cfg))
        pdf = baseline_predictions(model, images, list(task.labels))
    except Exception as exc:  # the model's own metrics stand; say why the baseline is missing
        log.warning("the linked baseline could not be evaluated: %s", one_line(exc))
        return None, f"the linked baseline could not be evaluated: {one_line(exc)}"
    n, metrics, cm = _measure(pdf[pdf["sha256"].isin(featurized)], task, cfg)
    return BaselineResult(uri, n, metrics, cm), ""




def _write_and_log(result: EvalResult, out_dir: Path, uri: str | None, reliability: Path | None) -> None:
    import mlflow  # lazy: a slow import that argument checks skip

    out_dir.mkdir(parents=True, exist_ok=True)
    labels = list(result.task.labels)
    png = plot_confusion(result.confusion, labels, f"{result.model.name} v{result.model.version} on "
                         f"{result.source}", out_dir / "confusion.png")
    doc: dict[str, Any] = {
        "model": {"name": result.model.name, "version": result.model.version, "uri": result.model.uri},
        "task": result.task.name, "labels": labels, "n": result.n,
        "accuracy": result.metrics.get("accuracy"),
        "confusion": {"labels": labels, "counts": result.confusion.tolist()},
        "metrics": {k: (v if np.isfinite(v) else None) for k, v in result.metrics.items()},
        "excluded_labels": result.excluded, "quarantined": result.quarantined,
        "no_features": result.no_features, "data_fingerprint": result.data_fingerprint,
        "source": result.source,
        "baseline": None if result.baseline is None else {
            "model_uri": result.baseline.uri, "n": result.baseline.n,
            "accuracy": result.baseline.metrics.get("accuracy"),
            "confusion": {"labels": labels, "counts": result.baseline.confusion.tolist()},
            "metrics": {k: (v if np.isfinite(v) else None) for k, v in result.baseline.metrics.items()}},
        "baseline_note": result.baseline_note or None,
        "shift": None if result.shift is None else {k: (v if np.isfinite(v) else None)
                                                   for k, v in result.shift.items()},
        "calibration": None if result.calibration is None else {
            k: (v if np.isfinite(v) else None) for k, v in result.calibration.items()},
    }
    (out_dir / "metrics.json").write_text(json.dumps(doc, indent=2, default=float))
    (out_dir / "report.md").write_text(_report(result, png))
    result.files = {"metrics.json": out_dir / "metrics.json", "report.md": out_dir / "report.md",
                    "confusion.png": png, **({"reliability.png": reliability} if reliability else {})}
    configure(uri, out_dir)
    with mlflow.start_run(run_name=f"evaluate {result.model.name} v{result.model.version}") as run:
        mlflow.set_tags({"kind": "evaluation", "model_name": result.model.name,
                         "model_version": result.model.version, "model_uri": result.model.uri,
                         "data_fingerprint": result.data_fingerprint, "task": result.task.name,
                         "source": result.source})
        mlflow.log_params({"n": result.n, "labels": ",".join(labels),
                           "excluded": json.dumps(result.excluded)})
        mlflow.log_metrics(finite_metrics({**result.metrics, **(result.shift or {}),
                                           **(result.calibration or {})}))
        if result.baseline is not None:
            mlflow.set_tag(BASELINE_TAG, result.baseline.uri)
            mlflow.log_metrics(finite_metrics({f"baseline/{k}": v
                                               for k, v in result.baseline.metrics.items()}))
        for path in result.files.values():
            mlflow.log_artifact(str(path))
    result.run_id, result.tracking_uri = run.info.run_id, mlflow.get_tracking_uri()
