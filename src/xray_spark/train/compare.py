"""`xray-spark train`: every backbone x head x task on one persisted grouped split, tracked in MLflow.

Flow: ingest (or reuse its output) -> featurize once per backbone (feature cache) -> for each task and head:
fit on train, evaluate on test with group-bootstrap intervals -> nested MLflow run with the full PipelineModel
(decode -> featurize -> head -> label decode) -> comparison table, report, plots -> `champion` alias per task.
The metadata-only baseline runs beside the image models on the same split.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from xray_spark.config import Config
from xray_spark.data.images import image_contents, load_or_ingest, ok_keys
from xray_spark.train.baseline import BASELINE_NAME, metadata_features
from xray_spark.train.fit import FitResult, fit_head, task_frame
from xray_spark.train.heads import get_head, head_params
from xray_spark.train.tasks import Task, get_task

log = logging.getLogger(__name__)


@dataclass
class TrainSpec:
    data: str
    out_dir: str
    backbones: list[str]
    heads: list[str]
    tasks: list[str]
    weights: str
    tracking_uri: str | None = None
    cache_dir: str | None = None
    baseline: bool = True


@dataclass
class TrainResult:
    comparison: pd.DataFrame
    champions: dict[str, dict[str, str]] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)
    parent_run_id: str = ""
    tracking_uri: str = ""
    seconds: dict[str, float] = field(default_factory=dict)
    ingest_dir: str = ""  # the ingest output the run used (IngestLayout root)


def _labels_frame(images):
    """The ok images' labels and split (a Spark DataFrame over the images table; nothing is collected)."""
    from pyspark.sql import functions as F

    return images.where("status = 'ok'").select("path", "sha256", "label", "split", F.col("fold").cast("int"),
                                                 "group_id")


def full_pipeline(backbone: str, weights: str, head_model, task: Task):
    """decode -> featurize -> head -> label decode: the one model MLflow stores and scoring loads."""
    from pyspark.ml import PipelineModel
    from pyspark.ml.feature import IndexToString

    from xray_spark.features.featurizer import DeepImageFeaturizer

    featurizer = DeepImageFeaturizer(inputCol="content", outputCol="features", modelName=backbone, weights=weights)
    decode_label = IndexToString(inputCol="prediction", outputCol="predicted_label", labels=list(task.labels))
    return PipelineModel(stages=[featurizer, head_model, decode_label])


def _signature():
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("binary", "content")]), outputs=Schema([ColSpec("double", "prediction")])
    )


def _pip_requirements() -> list[str]:
    from importlib.metadata import version

    return [f"xray-spark=={version('xray-spark')}", f"pyspark=={version('pyspark')}", f"keras=={version('keras')}"]


def _evaluate(fit: FitResult, task: Task, n_resamples: int, seed: int) -> dict[str, float]:
    from xray_spark.train.evaluate import evaluate

    return evaluate(
        fit.y_true, fit.y_pred, fit.proba, list(task.labels), fit.groups, n_resamples=n_resamples, seed=seed,
        positive=task.positive,
    )


class _Runner:
    """Holds what every combination shares: config, MLflow parent run, output folders, result rows."""

    def __init__(self, spark, cfg: Config, spec: TrainSpec, summary: dict):
        self.spark, self.cfg, self.spec, self.summary = spark, cfg, spec, summary
        self.out = Path(spec.out_dir)
        self.plots = self.out / "plots"
        self.plots.mkdir(parents=True, exist_ok=True)
        self.rows: list[dict[str, Any]] = []
        self.confusion_pngs: dict[str, Path] = {}
        self.model_uris: dict[tuple[str, str, str], str] = {}
        self.parent_run_id = ""
        self.experiment_id = ""
        self.lock = threading.Lock()

    def ordered_rows(self) -> list[dict[str, Any]]:
        """Rows in config order (task, backbone, head), whatever order the threads finished in."""
        order = {name: i for names in (self.spec.tasks, self.spec.backbones, self.spec.heads)
                 for i, name in enumerate(names)}
        return sorted(self.rows, key=lambda r: (order[r["task"]], r["kind"] != "image", order.get(r["backbone"], 0),
                                                order[r["head"]]))

    def combos(self, kind: str, backbone: str, frames: dict[str, tuple[Task, Any, int]], n_features: int, *,
               fingerprint: str, featurize_seconds: float, log_model: bool) -> None:
        """Every head x task for one feature set, `train.parallel_fits` at a time.

        Why threads: on small data MLlib fits are chains of tiny Spark jobs (LogisticRegression: ~100 LBFGS
        iterations, each a job of a few ms of work) and saving a PipelineModel is a handful more, so one
        combination at a time leaves the cores waiting on job latency. Results do not depend on the order.
        """
        from concurrent.futures import ThreadPoolExecutor

        jobs = [(head, task, frame, n_train) for task, frame, n_train in frames.values() for head in self.spec.heads]
        workers = max(1, min(self.cfg.train.parallel_fits, len(jobs)))
        pool = ThreadPoolExecutor(workers, thread_name_prefix="train")
        try:
            futures = [pool.submit(self.combo, kind, backbone, head, task, frame, n_features, fingerprint=fingerprint,
                                   featurize_seconds=featurize_seconds, log_model=log_model, n_train=n_train)
                       for head, task, frame, n_train in jobs]
            for f in futures:
                f.result()  # the first failure stops the command, as it would serially ...
        finally:
            pool.shutdown(wait=True, cancel_futures=True)  # ... without starting the combinations still queued

    def combo(self, kind: str, backbone: str, head: str, task: Task, frame, n_features: int, *, fingerprint: str,
              featurize_seconds: float, log_model: bool, n_train: int) -> None:
        """One nested run. Safe to call from several threads at once: MLflow keeps the active run per
        thread, the child names its parent explicitly, and Spark runs concurrent jobs side by side."""
        import mlflow

        from xray_spark.report import plot_confusion
        from xray_spark.tracking import finite_metrics, flat_params
        from xray_spark.train.evaluate import confusion

        tc = self.cfg.train
        hs = get_head(head)
        params = head_params(hs, tc.head_params.get(head), tc.seed)
        grid = tc.param_grids.get(head) if tc.cross_validate else None
        name = f"{task.name}/{backbone}/{head}"
        log.info("train %s (%s)", name, kind)
        with mlflow.start_run(run_name=name, parent_run_id=self.parent_run_id,
                              experiment_id=self.experiment_id) as run:
            fit = fit_head(hs, params, frame, task, n_features, weighted=tc.class_weights, cv_grid=grid,
                           cv_metric=tc.cv_metric)
            metrics = _evaluate(fit, task, tc.bootstrap_resamples, tc.seed)
            metrics.update(fit_seconds=fit.fit_seconds, featurize_seconds=featurize_seconds)
            cm = confusion(fit.y_true, fit.y_pred, task.n_classes)
            with self.lock:  # matplotlib's font and text caches are not made for threads
                png = plot_confusion(cm, list(task.labels), f"{task.description}\n{backbone} + {hs.title}",
                                     self.plots / f"confusion_{task.name}_{backbone}_{head}.png")
            self.confusion_pngs[name] = png
            mlflow.set_tags({"kind": kind, "task": task.name, "backbone": backbone, "head": head})
            mlflow.log_params({
                "task": task.name, "labels": ",".join(task.labels), "backbone": backbone, "head": head,
                "weights": self.spec.weights if kind == "image" else "n/a", "weights_fingerprint": fingerprint,
                "split_hash": self.summary["split"]["hash"], "split_seed": self.cfg.split.seed,
                "dataset_manifest_hash": self.summary.get("manifest_hash", ""), "class_weights": tc.class_weights,
                "n_train": n_train, "n_test": len(fit.y_true),
                **flat_params("head", params), **({"cv_best": json.dumps(fit.cv_best)} if fit.cv_best else {}),
            })
            mlflow.log_metrics(finite_metrics(metrics))
            mlflow.log_artifact(str(png), "plots")
            mlflow.log_text(pd.DataFrame(cm, index=task.labels, columns=task.labels).to_csv(), "confusion.csv")
            if log_model:
                import mlflow.spark

                info = mlflow.spark.log_model(
                    full_pipeline(backbone, self.spec.weights, fit.model, task), "model",
                    signature=_signature(), pip_requirements=_pip_requirements(),
                )
                self.model_uris[(task.name, backbone, head)] = info.model_uri
        self.rows.append({
            "task": task.name, "backbone": backbone, "head": head, "head_title": hs.title, "kind": kind,
            "weights": self.spec.weights if kind == "image" else "n/a", "run_id": run.info.run_id,
            "confusion": cm.tolist(), **metrics,
        })


def run_training(spark, cfg: Config, spec: TrainSpec) -> TrainResult:
    """The whole `train` command; see the module docstring."""
    import mlflow

    from xray_spark.features.cache import featurize_to_cache
    from xray_spark.report import comparison_table, format_reference_table, write_comparison, write_report
    from xray_spark.tracking import configure, library_versions

    t_start = time.time()
    out = Path(spec.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tasks = [get_task(t) for t in spec.tasks]
    images, summary, layout = load_or_ingest(spark, spec.data, str(out), cfg)
    labels_sdf = _labels_frame(images).cache()
    tracking_uri = spec.tracking_uri or cfg.tracking_uri
    configure(tracking_uri, out)
    cache_dir = spec.cache_dir or cfg.cache_dir or str(out / "features")
    seconds: dict[str, float] = {}

    with mlflow.start_run(run_name=f"train {','.join(spec.backbones)} x {','.join(spec.heads)}") as parent:
        mlflow.log_params({
            "backbones": ",".join(spec.backbones), "heads": ",".join(spec.heads), "tasks": ",".join(spec.tasks),
            "weights": spec.weights, "split_hash": summary["split"]["hash"], "split_seed": cfg.split.seed,
            "dataset_manifest_hash": summary.get("manifest_hash", ""), "data": str(spec.data),
            **library_versions(),
        })
        runner = _Runner(spark, cfg, spec, summary)
        runner.parent_run_id, runner.experiment_id = parent.info.run_id, parent.info.experiment_id
        contents, keys = image_contents(spark, summary, cfg), ok_keys(images)
        for backbone in spec.backbones:
            t0 = time.time()
            feats = featurize_to_cache(spark, contents, backbone, spec.weights, cache_dir, keys=keys)
            feats = feats.select("sha256", "features", "featurize_error", "weights_fingerprint").cache()
            fingerprint = feats.select("weights_fingerprint").first()[0]
            failed = feats.where("features IS NULL").count()
            seconds[f"featurize_{backbone}"] = time.time() - t0
            if failed:
                log.warning("%s: %d images could not be featurized; they are left out of training", backbone, failed)
            frame = _small_frame(spark, labels_sdf.join(feats.where("features IS NOT NULL"), "sha256"))
            n_features = len(frame.select("features").first()[0])
            t1 = time.time()
            frames = _task_frames(frame, tasks, cfg)
            runner.combos("image", backbone, frames, n_features, fingerprint=fingerprint,
                          featurize_seconds=seconds[f"featurize_{backbone}"], log_model=True)
            for _, tframe, _ in frames.values():
                tframe.unpersist()
            seconds[f"heads_{backbone}"] = time.time() - t1
            frame.unpersist()
            feats.unpersist()
        if spec.baseline:
            t1 = time.time()
            meta = _small_frame(spark, metadata_features(_baseline_input(images)), "path")
            n_meta = len(meta.select("features").first()[0])
            frames = _task_frames(meta, tasks, cfg)
            runner.combos("metadata-baseline", BASELINE_NAME, frames, n_meta, fingerprint="n/a",
                          featurize_seconds=0.0, log_model=False)
            for _, tframe, _ in frames.values():
                tframe.unpersist()
            meta.unpersist()
            seconds["baseline"] = time.time() - t1

        table = comparison_table(runner.ordered_rows())
        files = {p.name: p for p in write_comparison(table, out)}
        context = _report_context(spec, summary, cfg, tracking_uri or f"sqlite:///{out.resolve()}/mlflow.db")
        files["report.md"] = write_report(table, out, context=context, confusion_pngs=runner.confusion_pngs,
                                          metric=cfg.train.select_metric)
        for p in files.values():
            mlflow.log_artifact(str(p), "comparison")
        champions = _register_champions(runner, tasks, cfg)
        mlflow.set_tags({f"champion.{t}": json.dumps(c) for t, c in champions.items()})
        seconds["total"] = time.time() - t_start
        mlflow.log_metrics({f"seconds_{k}": v for k, v in seconds.items()})
        for task in tasks:
            print(f"\n{task.description} (test split, 95% intervals)")
            print(format_reference_table(table, task.name))
    labels_sdf.unpersist()
    return TrainResult(comparison=table, champions=champions, files=files, parent_run_id=parent.info.run_id,
                       tracking_uri=mlflow.get_tracking_uri(), seconds=seconds, ingest_dir=layout.root)


def _small_frame(spark, sdf, key: str = "sha256"):
    """Cache a training table in as many partitions as there are task slots, rows in a fixed order.

    Why: the join leaves spark.sql.shuffle.partitions partitions, and every LBFGS iteration or tree level
    then pays for that many tasks on a table of ~1000 rows. Hash partitioning by content hash plus a sort
    keeps the row order, and so seeded models such as RandomForest, the same from run to run.
    """
    n = max(1, spark.sparkContext.defaultParallelism)
    return sdf.repartition(n, key).sortWithinPartitions(key).cache()


def _task_frames(frame, tasks: list[Task], cfg: Config) -> dict[str, tuple[Task, Any, int]]:
    """task name -> (task, cached rows of its classes with label index and weights, number of train rows)."""
    out = {}
    for task in tasks:
        tframe = task_frame(frame, task, weighted=cfg.train.class_weights).cache()
        out[task.name] = (task, tframe, tframe.where("split = 'train'").count())
    return out


def _baseline_input(images):
    """The ok images' metadata (what the shortcut baseline may use), as a Spark DataFrame."""
    from pyspark.sql import functions as F

    return images.where("status = 'ok'").select(
        "path", "label", "split", F.col("fold").cast("int"), "group_id",
        *[F.col(c).cast("double") for c in ("width", "height", "bit_depth", "file_size")], "format", "mode")


def _register_champions(runner: _Runner, tasks: list[Task], cfg: Config) -> dict[str, dict[str, str]]:
    """Best image model per task by the configured metric (ties: accuracy) -> registry alias `champion`."""
    from xray_spark.tracking import register_champion, registered_name

    metric = cfg.train.select_metric
    out: dict[str, dict[str, str]] = {}
    rows = pd.DataFrame([r for r in runner.ordered_rows() if r["kind"] == "image"])
    if rows.empty:
        return out
    for task in tasks:
        cand = rows[rows["task"] == task.name]
        if cand.empty or metric not in cand:
            continue
        best = cand.sort_values([metric, "accuracy"], ascending=False).iloc[0]
        uri = runner.model_uris[(task.name, best["backbone"], best["head"])]
        name = registered_name(cfg.train.registered_model_prefix, task.name)
        desc = f"{best['backbone']} + {best['head_title']}; {metric}={best[metric]:.3f}; weights={runner.spec.weights}"
        version = register_champion(uri, name, desc)
        out[task.name] = {"name": name, "version": version, "uri": f"models:/{name}@champion",
                          "backbone": str(best["backbone"]), "head": str(best["head"]), metric: f"{best[metric]:.4f}"}
    return out


def _report_context(spec: TrainSpec, summary: dict, cfg: Config, tracking_uri: str) -> dict[str, str]:
    weights_note = {
        "none": "random initialisation (seeded): NOT ImageNet features; numbers measure what random features plus"
        " the dataset's cues can do",
        "imagenet": "ImageNet weights (Keras applications)",
    }.get(spec.weights, f"weights file {spec.weights}")
    return {
        "dataset": f"{spec.data} ({summary['ok']} ok images of {summary['files_read']} read; per class "
        + ", ".join(f"{k} {v}" for k, v in summary["per_class_ok"].items()) + ")",
        "split": f"grouped (patient + confirmed near-duplicates), stratified, seed {cfg.split.seed}, "
        f"{cfg.split.folds} folds, test = fold {cfg.split.test_fold}; hash {summary['split']['hash'][:12]}; "
        f"train {summary['split']['train']}, test {summary['split']['test']}",
        "weights": weights_note,
        "intervals": f"95% percentile bootstrap over test groups, {cfg.train.bootstrap_resamples} resamples; Wilson for COVID recall",
        "tracking": tracking_uri,
        "not measured here": "ImageNet-weight results need the weights files, which cannot be downloaded on an"
        " offline machine; GPU speed was not measured.",
    }
