"""`xray-spark train`: every backbone x head x task on one persisted grouped split, tracked in MLflow.

Flow: ingest (or reuse its output) -> featurize once per backbone (feature cache) ->
the backbone's int8 gate (train/int8.py: calibration sample, held-out features at fp32 and int8) ->
`compare.fit_and_evaluate` for each task and head -> nested MLflow run with the full PipelineModel (decode ->
featurize -> head -> label decode) -> comparison table, report, plots -> `champion` alias per task. The
metadata-only baseline runs beside the image models on the same split.

This module is the only place in training that logs to MLflow, writes reports and registers champions; the
computing lives in compare.py, fit.py and evaluation/metrics.py. It prints nothing: the CLI shows the result.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from pyspark.sql import DataFrame, SparkSession

from xray_spark.config import Config
from xray_spark.data.images import fetch_selections, image_contents, load_or_ingest, ok_keys
from xray_spark.evaluation.leave_one_source_out import held_out_split, loso_plan
from xray_spark.evaluation.report_parts import plot_confusion, side_by_side_md
from xray_spark.features.cache import featurize_to_cache
from xray_spark.features.cache_precision import features_precision
from xray_spark.features.pinning import carry_weights
from xray_spark.features.weights import resolve_weights
from xray_spark.finetune.run import RANDOM_NOTE, export_finetuned, fit_finetune, log_history
from xray_spark.models.frames import labels_frame
from xray_spark.models.metadata_baseline import BASELINE_NAME, baseline_input, metadata_feature_model
from xray_spark.models.pipeline import baseline_pipeline, full_pipeline
from xray_spark.models.serving_mlflow import log_serving_model, serving_name
from xray_spark.models.shift import shift_metrics
from xray_spark.models.shift_stage import ShiftDetector
from xray_spark.tasks import Task, get_task
from xray_spark.tracking import (
    BASELINE_TAG,
    SERVING_TAG,
    configure,
    finite_metrics,
    flat_params,
    library_versions,
    link_model,
    model_pip_requirements,
    register_champion,
    registered_name,
    spark_model_signature,
    tracking_uri_for,
)
from xray_spark.train.calibration_report import (
    INTRO as CALIBRATION_INTRO,
)
from xray_spark.train.calibration_report import (
    TestPredictions,
    calibration_md,
    calibration_row,
    reliability_png,
)
from xray_spark.train.compare import (
    BASELINE,
    IMAGE,
    ComboResult,
    FeatureSet,
    champion_rows,
    fit_and_evaluate,
    measured,
    small_frame,
    task_frames,
)
from xray_spark.train.fit import FitResult
from xray_spark.train.heads import FINETUNE, head_title
from xray_spark.train.int8 import Int8Gates
from xray_spark.train.report import (
    append_section,
    baseline_comparison,
    baseline_matches,
    comparison_table,
    per_source_md,
    sources_md,
    write_comparison,
    write_report,
)

log = logging.getLogger(__name__)


@dataclass
class TrainSpec:
    data: str | list[str]  # one folder, or several `NAME=DIR` sources (see data/files.parse_data_args)
    out_dir: str
    backbones: list[str]
    heads: list[str]
    tasks: list[str]
    weights: str
    tracking_uri: str | None = None
    cache_dir: str | None = None
    baseline: bool = True
    loso: bool = False  # also leave-one-source-out with each task's champion (`--eval leave-one-source-out`)
    precision: str | None = None  # the features' one precision (fp32 | bf16); None: 'auto''s on the driver
    int8_gate: str | None = None  # auto | on | off (`--int8-gate`); None: config int8.gate

    def data_text(self) -> str:
        return self.data if isinstance(self.data, str) else ", ".join(self.data)


@dataclass
class TrainResult:
    comparison: pd.DataFrame
    champions: dict[str, dict[str, str]] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)
    parent_run_id: str = ""
    tracking_uri: str = ""
    seconds: dict[str, float] = field(default_factory=dict)
    ingest_dir: str = ""  # the ingest output the run used (IngestLayout root)


class _Tracker:
    """Logs each combination as a nested run of one parent; collects the rows, plots and model URIs."""

    def __init__(self, spec: TrainSpec, cfg: Config, summary: dict, parent_run_id: str, experiment_id: str,
                 int8: Int8Gates):
        self.spec, self.cfg, self.summary = spec, cfg, summary
        self.parent_run_id, self.experiment_id = parent_run_id, experiment_id
        self.plots = Path(spec.out_dir) / "plots"
        self.plots.mkdir(parents=True, exist_ok=True)
        self.rows: list[dict[str, Any]] = []
        self.confusion_pngs: dict[str, Path] = {}
        self.model_uris: dict[tuple[str, str, str], str] = {}
        # (task, head) -> (fitted baseline head, its metadata pipeline, run id): logged for champions only
        self.baselines: dict[tuple[str, str], tuple[Any, Any, str]] = {}
        # (task, backbone, head) -> (fitted image head, run id, its own weights or None): the champions'
        # serving bundles come from it
        self.heads: dict[tuple[str, str, str], tuple[Any, str, tuple[str, str, Path] | None]] = {}
        # (task, backbone, head) -> source -> metrics, when the test split holds 2+ sources
        self.per_source: dict[tuple[str, str, str], dict[str, dict[str, float]]] = {}
        # backbone -> (URI of the weights file this run carries, tensor sha256): what every model pins
        self.pins: dict[str, tuple[str, str]] = {}
        self.shifts: dict[str, Any] = {}  # backbone -> its training images' ShiftModel (serving bundles too)
        self.int8 = int8  # the run's int8 gate (train/int8.py): measures each image model as it is logged
        # (task, backbone, head) -> its test-split predictions, before and after calibration (image models)
        self.predictions: dict[tuple[str, str, str], TestPredictions] = {}
        self.lock = threading.Lock()

    def pin(self, res: ComboResult) -> tuple[str, str]:
        """(carried weights URI, tensor sha256) the result's model pins: its own (a fine-tune) or the
        run's shared backbone weights."""
        return res.own_weights[:2] if res.own_weights else self.pins[res.features.backbone]

    def log(self, res: ComboResult, run_id: str | None = None) -> None:
        """One nested run (or, with `run_id`, the nested run the caller opened for it). Safe from several
        threads: MLflow keeps the active run per thread and the child names its parent explicitly."""
        import mlflow  # lazy: a slow import that argument checks skip
        import mlflow.spark  # lazy: a slow import that argument checks skip

        fs, task = res.features, res.task
        with self.lock:  # matplotlib's font and text caches are not made for threads
            png = plot_confusion(res.confusion, list(task.labels),
                                 f"{task.description}\n{fs.backbone} + {head_title(res.head)}",
                                 self.plots / f"confusion_{task.name}_{fs.backbone}_{res.head}.png")
        run_ctx = (mlflow.start_run(run_id=run_id, nested=True) if run_id else
                   mlflow.start_run(run_name=res.name, parent_run_id=self.parent_run_id,
                                    experiment_id=self.experiment_id))
        with run_ctx as run:
            mlflow.set_tags({"kind": fs.kind, "task": task.name, "backbone": fs.backbone, "head": res.head})
            mlflow.log_params({
                "task": task.name, "labels": ",".join(task.labels), "backbone": fs.backbone, "head": res.head,
                "weights": self.spec.weights if fs.kind == IMAGE else "n/a",
                "weights_fingerprint": fs.fingerprint,
                **({"weights_sha256": self.pin(res)[1]} if fs.kind == IMAGE else {}),
                "split_hash": self.summary["split"]["hash"], "split_seed": self.cfg.split.seed,
                "dataset_manifest_hash": self.summary.get("manifest_hash", ""),
                "class_weights": self.cfg.train.class_weights, "n_train": res.n_train,
                "n_test": len(res.fit.y_true),
                **flat_params("head", res.params),
                **({"cv_best": json.dumps(res.fit.cv_best)} if res.fit.cv_best else {}),
            })
            mlflow.log_metrics(finite_metrics(res.metrics))
            if fs.shift is not None:
                mlflow.log_metrics(shift_metrics(fs.shift.getReference()))
            mlflow.log_metrics(finite_metrics({f"by_source/{s}/{k}": v for s, m in res.per_source.items()
                                               for k, v in m.items()}))
            mlflow.log_artifact(str(png), "plots")
            mlflow.log_text(pd.DataFrame(res.confusion, index=task.labels, columns=task.labels).to_csv(),
                            "confusion.csv")
            if fs.kind == IMAGE:
                weights_uri, sha = self.pin(res)
                int8 = self.int8.for_model(res)  # measured in this run: the featurizer's int8 Params
                info = mlflow.spark.log_model(
                    full_pipeline(fs.backbone, weights_uri, res.fit.model, task, sha, fs.shift, int8),
                    "model", signature=spark_model_signature(), pip_requirements=model_pip_requirements(),
                )
                self.model_uris[(task.name, fs.backbone, res.head)] = info.model_uri
        with self.lock:
            if res.per_source:
                self.per_source[(task.name, fs.backbone, res.head)] = res.per_source
            self.confusion_pngs[res.name] = png
            if fs.kind == BASELINE:
                self.baselines[(task.name, res.head)] = (res.fit.model, fs.prep, run.info.run_id)
            else:
                self.heads[(task.name, fs.backbone, res.head)] = (res.fit.model, run.info.run_id,
                                                                  res.own_weights)
                self.predictions[(task.name, fs.backbone, res.head)] = TestPredictions.of(task, res.fit)
                if fs.shift is not None:
                    self.shifts[fs.backbone] = fs.shift
            self.rows.append({**res.row(self.spec.weights), "run_id": run.info.run_id})

    def ordered_rows(self) -> list[dict[str, Any]]:
        """Rows in config order (task, backbone, head), whatever order the threads finished in."""
        order = {name: i for names in (self.spec.tasks, self.spec.backbones, self.spec.heads)
                 for i, name in enumerate(names)}
        return sorted(self.rows, key=lambda r: (order[r["task"]], r["kind"] != IMAGE,
                                                order.get(r["backbone"], 0), order.get(r["head"], 0)))


@dataclass
class _Run:
    """What every step of one `train` run shares: the inputs, the ingested data, and what the steps collect
    (the tracker's rows and models, the seconds per step)."""

    spark: SparkSession
    cfg: Config
    spec: TrainSpec
    tasks: list[Task]
    images: DataFrame  # the ingest output's images table
    summary: dict  # its summary.json
    labels: DataFrame  # models.frames.labels_frame(images), cached for the run
    contents: DataFrame  # (sha256, content) of the ingested files
    keys: DataFrame  # the ok images' content hashes: what featurizing must cover
    cache_dir: str  # the feature cache
    precision: str  # the features' one precision, decided once on the driver (features/cache_precision.py)
    tracker: _Tracker
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def mllib_heads(self) -> list[str]:
        return [h for h in self.spec.heads if h != FINETUNE]


def _finetune(run: _Run, task: Task, backbone: str) -> None:
    """`--heads finetune`: train the backbone end to end on this task (xray_spark.finetune: barrier workers,
    the persisted split's train folds, one of them for early stopping), then log it as one more row of the
    comparison: the exported Spark model on the same test fold, measured by `compare.measured`, so it
    competes for `champion` with the frozen heads. Checkpoints live under --out/finetune/TASK-BACKBONE: a
    killed `train` resumes the fine-tune from its last epoch."""
    import mlflow  # lazy: a slow import that argument checks skip
    import mlflow.keras  # lazy: a slow import that argument checks skip

    spark, cfg, spec = run.spark, run.cfg, run.spec
    ft_out = str(Path(spec.out_dir) / "finetune" / f"{task.name}-{backbone}")
    m = fit_finetune(spark, cfg, run.images, run.summary, task, backbone, spec.weights, ft_out)
    with mlflow.start_run(run_name=f"{task.name}/{backbone}/{FINETUNE}", nested=True) as mlflow_run:
        mlflow.set_tags({"start_weights": m["weights_kind"],
                         **({"note": RANDOM_NOTE} if m["weights_kind"] == "none" else {})})
        log_history(m)
        ex = export_finetuned(spark, cfg, run.images, run.summary, task, backbone, ft_out)
        mlflow.keras.log_model(ex.keras_model, "keras_model", pip_requirements=model_pip_requirements())
    fit = FitResult(model=ex.head, fit_seconds=m["train_seconds"], **ex.predictions)
    features = FeatureSet(IMAGE, backbone, (), int(ex.head.numFeatures), m["weights_fingerprint"], 0.0)
    params = {**m["finetune"], "epochs": m["epochs"], "epochs_run": len(m["history"]),
              "workers": m["workers"], "per_worker_batch": m["per_worker_batch"],
              "precision_policy": m["policy"], "val_fold": m["val_fold"], "n_val": m["n_val"]}
    res = measured(features, FINETUNE, task, params, fit, m["n_train"], cfg,
                   own_weights=(ex.weights_uri, ex.weights_sha256, ex.weights_file))
    run.tracker.log(res, run_id=mlflow_run.info.run_id)


def _run_combinations(features: FeatureSet, heads: list[str], cfg: Config,
                      log_one: Callable[[ComboResult], None]):
    """Fit, evaluate and log every head x task of one feature set, `train.parallel_fits` at a time.

    Why threads: on small data MLlib fits are chains of tiny Spark jobs (LogisticRegression: ~100 LBFGS
    iterations, each a job of a few ms of work) and saving a PipelineModel is a handful more, so one
    combination at a time leaves the cores waiting on job latency. Results do not depend on the order.
    """
    jobs = [(head, tf) for tf in features.tasks for head in heads]
    workers = max(1, min(cfg.train.parallel_fits, len(jobs)))
    pool = ThreadPoolExecutor(workers, thread_name_prefix="train")
    try:
        futures = [pool.submit(lambda h=head, t=tf: log_one(fit_and_evaluate(features, h, t, cfg)))
                   for head, tf in jobs]
        for f in futures:
            f.result()  # the first failure stops the command, as it would serially ...
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # ... without starting the combinations still queued


def _image_features(spark: SparkSession, labels: DataFrame, feats: DataFrame, tasks: list[Task], cfg: Config,
                    backbone: str, fingerprint: str, seconds: float) -> tuple[FeatureSet, DataFrame]:
    """The features of one backbone, per task, and the shift reference of its training images (one per
    backbone: every head and task trained on these features shares it)."""
    frame = small_frame(spark, labels.join(feats.where("features IS NOT NULL"), "sha256"))
    n_features = len(frame.select("features").first()[0])
    shift = ShiftDetector(components=cfg.shift.components, quantile=cfg.shift.quantile).fit(
        frame.where("split = 'train'")).with_internal_scores(frame.where("split = 'test'"))
    return (FeatureSet(IMAGE, backbone, task_frames(frame, tasks, cfg), n_features, fingerprint, seconds,
                       shift=shift), frame)


def _baseline_features(spark: SparkSession, images: DataFrame, tasks: list[Task], cfg: Config
                       ) -> tuple[FeatureSet, DataFrame]:
    rows = baseline_input(images)
    prep = metadata_feature_model(rows)
    frame = small_frame(spark, prep.transform(rows), "path")
    n_features = len(frame.select("features").first()[0])
    return (FeatureSet(BASELINE, BASELINE_NAME, task_frames(frame, tasks, cfg), n_features, "n/a", 0.0, prep),
            frame)


def _release(features: FeatureSet, frame: DataFrame) -> None:
    for tf in features.tasks:
        tf.frame.unpersist()
    frame.unpersist()


def run_training(spark: SparkSession, cfg: Config, spec: TrainSpec) -> TrainResult:
    """The whole `train` command, step by step (see the module docstring): every backbone's heads, the
    baseline, the comparison report, the champions, the per-source sections and leave-one-source-out."""
    import mlflow  # lazy: a slow import that argument checks skip

    t_start = time.time()
    out = Path(spec.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tasks = [get_task(t) for t in spec.tasks]
    images, summary, layout = load_or_ingest(spark, spec.data, str(out), cfg)
    labels = labels_frame(images).cache()
    configure(tracking_uri_for(spec.tracking_uri, cfg.tracking_uri, out), out)
    tracking_uri = mlflow.get_tracking_uri()
    precision = features_precision(spec.precision)  # one for the whole run
    cache_dir = spec.cache_dir or cfg.cache_dir or str(out / "features")
    with mlflow.start_run(run_name=f"train {','.join(spec.backbones)} x {','.join(spec.heads)}") as parent:
        mlflow.log_params({**_run_params(spec, cfg, summary), "features_precision": precision})
        run = _Run(spark, cfg, spec, tasks, images, summary, labels, image_contents(spark, summary, cfg),
                   ok_keys(images), cache_dir, precision,
                   _Tracker(spec, cfg, summary, parent.info.run_id, parent.info.experiment_id,
                            Int8Gates(cfg, spec.weights, cache_dir, spec.int8_gate)))
        for backbone in spec.backbones:
            _train_backbone(run, backbone)
        if spec.baseline:
            _train_baseline(run)
        rows, table, files = _write_comparison(run, tracking_uri)
        champions = _publish_champions(run, rows, table, files["report.md"])
        _report_sources(run, files["report.md"], champions)
        _report_calibration(run, files["report.md"], champions)
        if spec.loso:
            _leave_one_source_out(run, champions, table, files["report.md"])
        mlflow.log_artifact(str(files["report.md"]), "comparison")  # again, with the sections added since
        run.seconds["total"] = time.time() - t_start
        mlflow.log_metrics({f"seconds_{k}": v for k, v in run.seconds.items()})
    labels.unpersist()
    return TrainResult(comparison=table, champions=champions, files=files, parent_run_id=parent.info.run_id,
                       tracking_uri=tracking_uri, seconds=run.seconds, ingest_dir=layout.root)


def _run_params(spec: TrainSpec, cfg: Config, summary: dict) -> dict[str, Any]:
    """The parent run's params: what was asked, on which split of which data, with which libraries."""
    return {
        "backbones": ",".join(spec.backbones), "heads": ",".join(spec.heads),
        "tasks": ",".join(spec.tasks),
        "weights": spec.weights, "split_hash": summary["split"]["hash"], "split_seed": cfg.split.seed,
        "dataset_manifest_hash": summary.get("manifest_hash", ""), "data": spec.data_text(),
        **library_versions(),
    }


def _featurize(run: _Run, backbone: str) -> tuple[DataFrame, str, int]:
    """One backbone's features of every ok image, from the feature cache (computed once, then reused) and
    cached in memory for the heads: (features, weights fingerprint, images that could not be featurized)."""
    feats = featurize_to_cache(run.spark, run.contents, backbone, run.spec.weights, run.cache_dir,
                               keys=run.keys, precision=run.precision)
    feats = feats.select("sha256", "features", "featurize_error", "weights_fingerprint").cache()
    fingerprint = feats.select("weights_fingerprint").first()[0]
    return feats, fingerprint, feats.where("features IS NULL").count()


def _prepare_int8_gate(run: _Run, backbone: str) -> None:
    """The int8 gate's part that is per backbone (train/int8.py): its calibration sample from the training
    split and the held-out images' features at fp32 and int8, shared by every head and task; each model is
    measured on them as it is logged (`_Tracker.log`). Nothing to do where the gate is not measured."""
    t0 = time.time()
    run.tracker.int8.prepare(run.spark, backbone, run.labels, run.contents)
    if run.tracker.int8.measure:
        run.seconds[f"int8_gate_{backbone}"] = time.time() - t0


def _train_backbone(run: _Run, backbone: str) -> None:
    """Every head asked for on one backbone: the fine-tunes, then its features, its int8 gate and the MLlib
    heads on its features."""
    if FINETUNE in run.spec.heads:
        t0 = time.time()
        for task in run.tasks:
            _finetune(run, task, backbone)
        run.seconds[f"finetune_{backbone}"] = time.time() - t0
    if not run.mllib_heads:
        return
    t0 = time.time()
    feats, fingerprint, failed = _featurize(run, backbone)
    run.seconds[f"featurize_{backbone}"] = time.time() - t0
    if failed:
        log.warning("%s: %d images could not be featurized; they are left out of training", backbone, failed)
    run.tracker.pins[backbone] = carry_weights(run.spark, backbone, run.spec.weights, fingerprint)
    _prepare_int8_gate(run, backbone)
    features, frame = _image_features(run.spark, run.labels, feats, run.tasks, run.cfg, backbone, fingerprint,
                                      run.seconds[f"featurize_{backbone}"])
    t1 = time.time()
    _run_combinations(features, run.mllib_heads, run.cfg, run.tracker.log)
    run.seconds[f"heads_{backbone}"] = time.time() - t1
    _release(features, frame)
    run.tracker.int8.release(backbone)
    feats.unpersist()


def _train_baseline(run: _Run) -> None:
    """The metadata-only baseline beside the image models: the MLlib heads asked for (a fine-tune of
    metadata is no model), `lr` when only `finetune` was asked, so the fine-tune still has its baseline."""
    t1 = time.time()
    features, frame = _baseline_features(run.spark, run.images, run.tasks, run.cfg)
    _run_combinations(features, run.mllib_heads or ["lr"], run.cfg, run.tracker.log)
    _release(features, frame)
    run.seconds["baseline"] = time.time() - t1


def _write_comparison(run: _Run, tracking_uri: str
                      ) -> tuple[list[dict[str, Any]], pd.DataFrame, dict[str, Path]]:
    """The comparison table (CSV, Markdown, HTML, plot) and report.md under --out, logged to the parent run:
    (rows, table, files by name)."""
    import mlflow  # lazy: a slow import that argument checks skip

    out = Path(run.spec.out_dir)
    rows = run.tracker.ordered_rows()
    table = comparison_table(rows)
    files = {p.name: p for p in write_comparison(table, out)}
    context = _report_context(run.spec, run.summary, run.cfg, tracking_uri)
    files["report.md"] = write_report(table, out, context=context, confusion_pngs=run.tracker.confusion_pngs,
                                      metric=run.cfg.train.select_metric)
    for p in files.values():
        mlflow.log_artifact(str(p), "comparison")
    return rows, table, files


def _publish_champions(run: _Run, rows: list[dict[str, Any]], table: pd.DataFrame, report: Path
                       ) -> dict[str, dict[str, str]]:
    """Register each task's champion, link its baseline and its serving bundle, record its int8 verdict
    (its registered version, report.md, the champion's entry), tag the parent run."""
    import mlflow  # lazy: a slow import that argument checks skip

    champions = _register_champions(run.tracker, rows, run.spec, run.cfg)
    _log_champion_baselines(run.tracker, champions)
    _log_champion_serving(run.spark, run.tracker, champions, run.spec, table, run.cfg.train.select_metric)
    run.tracker.int8.finish(champions, report)
    mlflow.set_tags({f"champion.{t}": json.dumps(c) for t, c in champions.items()})
    return champions


def _report_sources(run: _Run, report: Path, champions: dict[str, dict[str, str]]) -> None:
    """With 2+ sources: what each brought and what was left out (report.md and the parent run), and each
    champion's test-split metrics per source."""
    import mlflow  # lazy: a slow import that argument checks skip

    tracker, summary = run.tracker, run.summary
    by_source = [per_source_md(f"{get_task(t).description}: {c['backbone']} + {c['head']}",
                               tracker.per_source[(t, c["backbone"], c["head"])])
                 for t, c in champions.items() if (t, c["backbone"], c["head"]) in tracker.per_source]
    per_source = summary.get("per_source", {})
    if len(per_source) > 1:
        selections = fetch_selections(run.spark, summary)
        append_section(report, "Sources", _SOURCES_INTRO, [sources_md(
            per_source, selections, int(summary["duplicates"].get("n_cross_source_pairs", 0)))])
        mlflow.log_metrics({f"source/{name}/{k}": float(v) for name, c in per_source.items()
                            for k, v in c.items()})
        mlflow.log_dict(selections, "comparison/sources_left_out.json")
    if by_source:
        append_section(report, "Per source (internal test split)",
                       "Each champion's test-split metrics broken down by the source of the images.",
                       by_source)


def _report_calibration(run: _Run, report: Path, champions: dict[str, dict[str, str]]) -> None:
    """Each champion's reliability diagram on the internal test split (its run's plots/, and report.md's
    calibration section with ECE and Brier before and after the temperature)."""
    import mlflow  # lazy: a slow import that argument checks skip

    tracker = run.tracker
    rows, links = [], {}
    for task, champ in champions.items():
        key = (task, champ["backbone"], champ["head"])
        preds = tracker.predictions[key]
        name = f"{get_task(task).description}: {champ['backbone']} + {head_title(champ['head'])}"
        png = reliability_png(preds, f"{name}\ninternal test split (n={len(preds.y_true)})",
                              tracker.plots / f"reliability_{task}_{champ['backbone']}_{champ['head']}.png")
        with mlflow.start_run(run_id=tracker.heads[key][1], nested=True):
            mlflow.log_artifact(str(png), "plots")
        mlflow.log_artifact(str(png), "comparison/plots")  # where report.md's link points in the parent run
        rows.append(calibration_row(name, preds))
        links[name] = f"plots/{png.name}"
    append_section(report, "Calibration (champions)", CALIBRATION_INTRO, [calibration_md(rows, links)])


_SOURCES_INTRO = ("The folders merged into this dataset (`--data NAME=DIR`), what each brought, and what "
                  "was left out before training.")


_LOSO_INTRO = ("Each task's champion (backbone + head) trained on every other source and tested on the "
               "held-out one, beside its internal grouped test split. Training images that share a group "
               "with a held-out image are left out. A gap is flagged when the 95% intervals do not overlap.")


def _leave_one_source_out(run: _Run, champions: dict[str, dict[str, str]], table: pd.DataFrame,
                          report: Path) -> None:
    """`--eval leave-one-source-out`: each champion refitted per held-out source; a report.md section."""

    t1 = time.time()
    sections = [_held_out_blocks(run, get_task(task), champ, table) for task, champ in champions.items()]
    append_section(report, "Leave-one-source-out", _LOSO_INTRO, sections)
    run.seconds["leave_one_source_out"] = time.time() - t1


def _held_out_blocks(run: _Run, task: Task, champ: dict[str, str], table: pd.DataFrame) -> str:
    """The champion's backbone + head refitted once per eligible held-out source; a markdown block."""
    import mlflow  # lazy: a slow import that argument checks skip

    backbone, head = champ["backbone"], champ["head"]
    if head == FINETUNE:
        return (f"{task.description}: the champion is a fine-tune; refitting it once per held-out source is "
                "not built (hours per source on CPU). Not held out.\n")
    internal = table[(table["task"] == task.name) & (table["kind"] == IMAGE) & (table["backbone"] == backbone)
                     & (table["head"] == head)].iloc[0].to_dict()
    feats = featurize_to_cache(run.spark, run.contents, backbone, run.spec.weights, run.cache_dir,
                               keys=run.keys, precision=run.precision)  # cached
    feats = feats.select("sha256", "features").cache()
    blocks, skipped = [], []
    for source, why_not in loso_plan(run.labels, task).items():
        if why_not:
            skipped.append(f"{source} ({why_not})")
            continue
        split = held_out_split(run.labels, source)
        features, frame = _image_features(run.spark, split, feats, [task], run.cfg, backbone, "", 0.0)
        # uncalibrated: the temperature changes no class, and these rows compare accuracy, recall and F1
        res = fit_and_evaluate(features, head, features.tasks[0], run.cfg, calibrated=False)
        _release(features, frame)
        with mlflow.start_run(run_name=f"loso {task.name}/{source}", parent_run_id=run.tracker.parent_run_id,
                              experiment_id=run.tracker.experiment_id, nested=True):
            mlflow.set_tags({"kind": "leave-one-source-out", "task": task.name, "held_out": source,
                             "backbone": backbone, "head": head})
            mlflow.log_metrics(finite_metrics(res.metrics))
        blocks.append(side_by_side_md(f"{task.description}: {backbone} + {head}, held out {source}", internal,
                                      res.metrics, f"held-out {source}", int(internal.get("n_test", 0)),
                                      len(res.fit.y_true)))
    feats.unpersist()
    if skipped:
        blocks.append(f"{task.description}: not held out: {'; '.join(skipped)}.\n")
    return "\n".join(blocks)


def _register_champions(tracker: _Tracker, rows: list[dict[str, Any]], spec: TrainSpec, cfg: Config
                        ) -> dict[str, dict[str, str]]:
    """Best image model per task by the configured metric (ties: accuracy) -> registry alias `champion`."""
    metric = cfg.train.select_metric
    out: dict[str, dict[str, str]] = {}
    for task, best in champion_rows(rows, spec.tasks, metric).items():
        uri = tracker.model_uris[(task, best["backbone"], best["head"])]
        name = registered_name(cfg.train.registered_model_prefix, task)
        desc = (f"{best['backbone']} + {best['head_title']}; {metric}={best[metric]:.3f}; "
                f"weights={spec.weights}")
        version = register_champion(uri, name, desc)
        out[task] = {"name": name, "version": version, "uri": f"models:/{name}@champion",
                     "backbone": str(best["backbone"]), "head": str(best["head"]),
                     metric: f"{best[metric]:.4f}"}
    return out


def _log_champion_baselines(tracker: _Tracker, champions: dict[str, dict[str, str]]) -> None:
    """Log the metadata-only baseline with each champion's head as a Spark model in its own run, and link it
    from the champion's model version, so `evaluate` can put it beside the champion on other data."""
    import mlflow  # lazy: a slow import that argument checks skip
    import mlflow.spark  # lazy: a slow import that argument checks skip

    for task, champ in champions.items():
        found = tracker.baselines.get((task, champ["head"]))
        if found is None:  # a fine-tuned champion: the baseline of the first MLlib head fitted on metadata
            found = next((v for (t, _), v in tracker.baselines.items() if t == task), None)
        if found is None:  # --no-baseline
            continue
        head_model, prep, run_id = found
        with mlflow.start_run(run_id=run_id, nested=True):
            info = mlflow.spark.log_model(baseline_pipeline(prep, head_model, get_task(task)), "model",
                                          pip_requirements=model_pip_requirements())
        link_model(champ["name"], champ["version"], BASELINE_TAG, info.model_uri)
        champ["baseline_uri"] = info.model_uri


def _log_champion_serving(spark: SparkSession, tracker: _Tracker, champions: dict[str, dict[str, str]],
                          spec: TrainSpec, table: pd.DataFrame, metric: str) -> None:
    """Each champion's Spark-free serving bundle (models/serving_mlflow.py) in the champion's own run,
    registered as `<name>-serving@champion` and linked from the Spark model version."""
    import mlflow  # lazy: a slow import that argument checks skip

    for task, champ in champions.items():
        head_model, run_id, own = tracker.heads[(task, champ["backbone"], champ["head"])]
        shift = None
        if own:  # a fine-tune: its own backbone weights
            weights_uri, sha, weights = own
        else:
            weights = resolve_weights(champ["backbone"], spec.weights, spark=spark).local_path
            weights_uri, sha = tracker.pins[champ["backbone"]]
            shift = tracker.shifts.get(champ["backbone"])
        as_good = baseline_matches(table, task, metric)
        meta = {"task": task, "model_name": champ["name"], "model_version": champ["version"],
                "model_uri": champ["uri"], "baseline_as_good": as_good,
                "baseline_sentence": baseline_comparison(table, task, metric) if as_good else None}
        int8 = tracker.int8.params(task, champ["backbone"], champ["head"])
        calibration = tracker.int8.calibration_path(task, champ["backbone"], champ["head"])
        pipeline = full_pipeline(champ["backbone"], weights_uri, head_model, get_task(task), sha, shift, int8)
        with mlflow.start_run(run_id=run_id, nested=True):
            uri = log_serving_model(pipeline, weights, meta, calibration)
        link_model(champ["name"], champ["version"], SERVING_TAG, uri)
        twin = serving_name(champ["name"])
        register_champion(uri, twin, f"Spark-free serving bundle of {champ['name']} v{champ['version']}")
        champ["serving_uri"] = f"models:/{twin}@champion"


def _report_context(spec: TrainSpec, summary: dict, cfg: Config, tracking_uri: str) -> dict[str, str]:
    """The facts report.md states about this run (dataset, split, weights, intervals, what it could
    not show)."""
    weights_note = {
        "none": "random initialisation (seeded): NOT ImageNet features; numbers measure what random "
        "features plus the dataset's cues can do",
        "imagenet": "ImageNet weights (Keras applications)",
    }.get(spec.weights, f"weights file {spec.weights}")
    context = {
        "dataset": f"{spec.data_text()} ({summary['ok']} ok images of {summary['files_read']} read; "
        "per class " + ", ".join(f"{k} {v}" for k, v in summary["per_class_ok"].items()) + ")",
        "split": f"grouped (patient + confirmed near-duplicates), stratified, seed {cfg.split.seed}, "
        f"{cfg.split.folds} folds, test = fold {cfg.split.test_fold}; hash {summary['split']['hash'][:12]}; "
        f"train {summary['split']['train']}, test {summary['split']['test']}",
        "weights": weights_note,
        "intervals": f"95% percentile bootstrap over test groups, {cfg.train.bootstrap_resamples} resamples; "
        "Wilson for COVID recall",
        "tracking": tracking_uri,
    }
    if FINETUNE in spec.heads:
        ft = cfg.finetune
        context["fine-tune"] = (
            f"backbone + new softmax head trained end to end from the weights above ({ft.optimizer}, "
            f"learning rate {ft.learning_rate:g}, up to {ft.epochs} epochs, global batch {ft.batch_size}, "
            f"{ft.workers} barrier workers, unfreeze {ft.unfreeze}, augmentation "
            f"{'on' if ft.augment else 'off'}); early stopping on one train fold held out of fitting; test "
            "fold untouched")
    if spec.weights == "none":
        context["not measured here"] = ("what ImageNet features would score: this run used random weights "
                                        "(pass --weights imagenet or a weights file)")
    return context
