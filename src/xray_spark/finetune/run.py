"""`xray-spark finetune`: ingest-or-reuse, write the shards, run the barrier workers, then make the result a
model like any other and track it in MLflow.

The driver holds only small things: shard counts, the payload, each worker's result (history from the
chief, a confusion matrix of its test share from every worker), and the test fold's predictions (as `train`
collects its heads'). After training, the Keras model becomes the Spark PipelineModel of export.py; its
fine-tuned backbone weights are carried in the run exactly as `train` carries a backbone's (pinning.py), and
the test-fold metrics come from that exported model through the helpers `train` measures with
(`models.frames.predict_split`, `evaluation.metrics`: same grouped split, same bootstrap intervals), so they
describe the model that is registered.
The model is registered under the task's name without moving `champion` (competing for it is `train`'s
job), with a Spark-free serving bundle linked as for champions, so `serve --model models:/NAME/VERSION` works.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from xray_spark import paths
from xray_spark.config import Config
from xray_spark.data.images import image_contents, load_or_ingest
from xray_spark.errors import UserError
from xray_spark.evaluation.metrics import confusion, metrics_with_intervals
from xray_spark.evaluation.report_parts import plot_confusion
from xray_spark.features.backbones import get_backbone
from xray_spark.features.pinning import carry_weights
from xray_spark.features.weights import resolve_weights, ship_weights
from xray_spark.finetune.checkpoints import Checkpoints, write_json_atomic
from xray_spark.finetune.data import class_weights, steps_for, write_shards
from xray_spark.finetune.distributed import NotShared, run_barrier
from xray_spark.finetune.export import backbone_and_head, save_backbone_weights, softmax_head
from xray_spark.finetune.trainer import CHECKPOINTS, MODEL_FILE
from xray_spark.models.frames import labels_frame, predict_split, task_frame
from xray_spark.models.pipeline import full_pipeline
from xray_spark.models.serving_mlflow import log_serving_model
from xray_spark.tasks import Task, get_task
from xray_spark.tracking import (
    SERVING_TAG,
    configure,
    finite_metrics,
    flat_params,
    library_versions,
    link_model,
    model_pip_requirements,
    register_model,
    registered_name,
    spark_model_signature,
    tracking_uri_for,
)

log = logging.getLogger(__name__)

METRICS_FILE = "finetune_metrics.json"


@dataclass
class FinetuneSpec:
    data: str
    backbone: str
    task: str
    weights: str
    out_dir: str
    epochs: int | None = None  # None: config finetune.epochs
    workers: int | None = None  # None: config finetune.workers
    tracking_uri: str | None = None  # --tracking-uri (see tracking.tracking_uri_for for the precedence)


RANDOM_NOTE = "the backbone started from random weights (--weights none), not ImageNet"
INTERVAL_METRICS = ("accuracy", "macro_f1", "covid_recall")  # printed with their 95% intervals


@dataclass
class FinetuneResult:
    metrics: dict[str, Any]
    model_path: Path
    metrics_path: Path
    model_uri: str = ""  # models:/NAME/VERSION
    run_id: str = ""
    tracking_uri: str = ""
    predictions: dict[str, Any] | None = None  # exported model's test-fold arrays (frames.predict_split)

    def lines(self) -> list[str]:
        m = self.metrics
        out = [f"epoch {h['epoch']}: loss {h['loss']:.4f}, val loss {h['val_loss']:.4f}, "
               f"{h['images_per_second']:.1f} images/s" for h in m["history"]]
        test = m["test"]
        shown = [f"{k} {test[k]:.3f} [{test[k + '_ci_low']:.3f}, {test[k + '_ci_high']:.3f}]"
                 for k in INTERVAL_METRICS if f"{k}_ci_low" in test]
        out.append(f"test fold ({test['n']} images, 95% intervals): {'; '.join(shown)}")
        if m["weights_kind"] == "none":
            out.append(f"NOTE: {RANDOM_NOTE}")
        out += [f"model: {self.model_uri} (run {self.run_id}; not @champion: compete with train --heads "
                "finetune)", f"keras model: {self.model_path}", f"metrics: {self.metrics_path}",
                f"MLflow: {self.tracking_uri}"]
        return out


def run_key(plan_root: str, backbone: str, task: str, fingerprint: str, cfg: Config, workers: int) -> str:
    """What a checkpoint must match to be resumed: data shards, backbone, weights, task, workers and every
    fine-tune setting but `epochs` (a resume may ask for more): a rerun with another learning rate or
    augmentation must not continue a run whose metrics then claim one setting for all epochs."""
    settings = {k: v for k, v in asdict(cfg.finetune).items() if k not in ("epochs", "workers")}
    parts = [Path(plan_root).name, get_backbone(backbone).name, fingerprint, task, workers,
             json.dumps(settings, sort_keys=True, default=str)]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


def start_words(metrics: dict[str, Any]) -> str:
    """How the run's description says where the backbone started (plainly random for `--weights none`)."""
    if metrics["weights_kind"] == "none":
        return RANDOM_NOTE.removeprefix("the backbone started from ")
    return f"{metrics['weights_kind']} weights {metrics['weights_fingerprint'][:16]}"


def log_history(metrics: dict[str, Any]) -> None:
    """Per-epoch loss, validation loss and accuracy, images/s into the active MLflow run (step = epoch)."""
    import mlflow  # lazy: a slow import that argument checks skip

    for h in metrics["history"]:
        mlflow.log_metrics(finite_metrics({"loss": h["loss"], "val_loss": h["val_loss"],
                                           "val_accuracy": h["val_accuracy"],
                                           "images_per_s": h["images_per_second"]}), step=h["epoch"])


def _check_cluster(spark, workers: int) -> None:
    """One clear line (exit 2) instead of a hang: Spark waits ~10 min for barrier slots it will never get.
    (Whether --out is shared by every executor is checked by the barrier tasks themselves: distributed.py.)"""
    master = spark.sparkContext.master
    slots = spark.sparkContext.defaultParallelism
    if workers > slots:
        raise UserError(f"--workers {workers} needs {workers} concurrent task slots; master {master} has "
                        f"{slots}: use --workers {slots} or a master with more cores")


def fit_finetune(spark, cfg: Config, images, summary: dict, task: Task, backbone: str, weights: str,
                 out_dir: str, workers: int | None = None, epochs: int | None = None) -> dict[str, Any]:
    """Train backbone + softmax head on the ingest output `images` with barrier workers; the Keras model lands
    in `out_dir`/model.keras. Returns the training facts (history, counts, settings): the part of a
    fine-tune that `finetune` and `train --heads finetune` share before each tracks the result its own way.
    Resumes from `out_dir`'s checkpoint when it belongs to the same run (run_key)."""
    bb = get_backbone(backbone)
    workers = workers or cfg.finetune.workers
    epochs = epochs or cfg.finetune.epochs
    _check_cluster(spark, workers)
    out = paths.local_path(out_dir)
    plan = write_shards(spark, images, summary, cfg, task, out_dir, workers)
    resolved = resolve_weights(bb.name, weights, spark=spark)
    key = run_key(plan.root, bb.name, task.name, resolved.fingerprint, cfg, workers)
    ckpt = Checkpoints(out / CHECKPOINTS, chief=False)
    state = ckpt.state()
    if state is not None and state.get("run_key") != key:
        raise UserError(f"--out {out_dir} holds checkpoints of another fine-tune (other data, backbone, "
                        "weights, task or settings); give a new --out to start over")
    if state is None:
        ckpt.discard_stale()
    batch = -(-cfg.finetune.batch_size // workers)
    payload = {
        "backbone": bb.name, "labels": list(task.labels), "data_root": plan.root, "out_dir": str(out),
        "finetune": asdict(cfg.finetune), "epochs": epochs, "per_worker_batch": batch, "run_key": key,
        "n_train": plan.n("train"), "steps": steps_for(plan.largest_shard("train"), batch),
        "val_steps": steps_for(plan.largest_shard("val"), batch),
        "class_weights": class_weights(plan.class_counts("train")),
        "weights_path": str(resolved.local_path), "weights_ship_name": ship_weights(spark, resolved),
    }
    log.info("fine-tuning %s (%s, weights %s) on %d train / %d validation images, %d workers x batch %d, "
             "%d steps per epoch", bb.name, task.name, resolved.kind, plan.n("train"), plan.n("val"), workers,
             batch, payload["steps"])
    try:
        results = run_barrier(spark, workers, payload)
    except NotShared as e:
        raise UserError(str(e)) from None
    keras_confusion = np.sum([r["test_confusion"] for r in results], axis=0)
    return {
        "backbone": bb.name, "task": task.name, "labels": list(task.labels), "weights": weights,
        "weights_kind": resolved.kind, "weights_fingerprint": resolved.fingerprint, "workers": workers,
        "epochs": epochs, "per_worker_batch": batch, "policy": results[0]["policy"],
        "finetune": asdict(cfg.finetune), "val_fold": plan.val_fold, "n_train": plan.n("train"),
        "n_val": plan.n("val"), "start_epoch": results[0]["start_epoch"],
        "initial_fixed_batch_loss": results[0]["initial_fixed_batch_loss"],
        "history": results[0]["history"], "keras_test_confusion": keras_confusion.tolist(),
        "split_hash": summary["split"]["hash"],
        # the epochs that made the model, across resumes (this process may have trained none of them)
        "train_seconds": sum(h["seconds"] for h in results[0]["history"]),
    }


def run_finetune(spark, cfg: Config, spec: FinetuneSpec) -> FinetuneResult:
    task = get_task(spec.task)
    workers = spec.workers or cfg.finetune.workers
    _check_cluster(spark, workers)  # before the ingest: a wrong master or --workers fails in a second
    out = paths.local_path(spec.out_dir)
    images, summary, _ = load_or_ingest(spark, spec.data, spec.out_dir, cfg)
    metrics = fit_finetune(spark, cfg, images, summary, task, spec.backbone, spec.weights, spec.out_dir,
                           workers, spec.epochs)
    result = _track(spark, cfg, spec, task, images, summary, metrics)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / METRICS_FILE, result.metrics)
    return result


@dataclass
class Exported:
    """A trained fine-tune as the models every command accepts, measured on the test fold."""

    keras_model: Any
    weights_file: Path  # the fine-tuned backbone's .weights.h5 (the serving bundle copies it)
    weights_uri: str  # its copy carried in the active MLflow run (runs:/...)
    weights_sha256: str
    head: Any  # the softmax head as an MLlib LogisticRegressionModel
    pipeline: Any  # models.pipeline.full_pipeline: decode -> fine-tuned featurizer -> head -> label
    predictions: dict[str, Any]  # models.frames.predict_split arrays on the test fold
    seconds: float  # exporting and predicting


def export_finetuned(spark, cfg: Config, images, summary: dict, task: Task, backbone: str,
                     out_dir: str) -> Exported:
    """`out_dir`/model.keras -> the Spark PipelineModel of export.py, its weights carried in the active MLflow
    run, and its predictions on the persisted split's test fold through `train`'s own `predict_split`, so the
    metrics describe the model that is logged and registered."""
    import keras  # lazy: loads TensorFlow; the driver needs it only to split the saved model

    t0 = time.time()
    out = paths.local_path(out_dir)
    bb = get_backbone(backbone)
    model = keras.saving.load_model(str(out / MODEL_FILE), compile=False)
    backbone_model, kernel, bias = backbone_and_head(model)
    weights_file = save_backbone_weights(backbone_model, out / "export" / f"{bb.name}-finetuned.weights.h5")
    weights_uri, sha = carry_weights(spark, bb.name, str(weights_file))
    head = softmax_head(spark, kernel, bias, task)
    pipeline = full_pipeline(bb.name, weights_uri, head, task, sha)
    pred = predict_split(pipeline, _test_fold(spark, cfg, images, summary, task), probabilistic=True)
    return Exported(model, weights_file, weights_uri, sha, head, pipeline, pred, time.time() - t0)


def _params(spec: FinetuneSpec, cfg: Config, summary: dict, m: dict[str, Any]) -> dict[str, Any]:
    return {
        "task": m["task"], "labels": ",".join(m["labels"]), "backbone": m["backbone"], "head": "finetune",
        "weights": m["weights_kind"] if m["weights_kind"] == "file" else spec.weights,  # never a path
        "weights_fingerprint": m["weights_fingerprint"], "epochs": spec.epochs or cfg.finetune.epochs,
        "workers": m["workers"], "per_worker_batch": m["per_worker_batch"], "precision_policy": m["policy"],
        "val_fold": m["val_fold"], "n_train": m["n_train"], "n_val": m["n_val"],
        "split_hash": summary["split"]["hash"], "split_seed": cfg.split.seed,
        "dataset_manifest_hash": summary.get("manifest_hash", ""),
        **flat_params("finetune", m["finetune"]), **library_versions(),
    }


def _test_fold(spark, cfg: Config, images, summary: dict, task: Task):
    """The test side of the persisted split with its bytes: the rows `train` evaluates its heads on."""
    contents = image_contents(spark, summary, cfg).dropDuplicates(["sha256"])
    frame = labels_frame(images).where("split = 'test'").join(contents, "sha256")
    return task_frame(frame, task, weighted=False)


def _track(spark, cfg: Config, spec: FinetuneSpec, task: Task, images, summary: dict,
           metrics: dict[str, Any]) -> FinetuneResult:
    """One MLflow run: params, per-epoch metrics, the exported model's test metrics with intervals, the
    confusion plot, the Spark and Keras models, and a registered version (no alias moves)."""
    import mlflow  # lazy: a slow import that argument checks skip
    import mlflow.keras  # lazy: a slow import that argument checks skip
    import mlflow.spark  # lazy: a slow import that argument checks skip

    out = paths.local_path(spec.out_dir)
    bb, tc = get_backbone(metrics["backbone"]), cfg.train
    configure(tracking_uri_for(spec.tracking_uri, cfg.tracking_uri, out), out)
    random_start = metrics["weights_kind"] == "none"
    description = (f"{bb.name} fine-tuned end to end + softmax head ({task.description}); started from "
                   + start_words(metrics))
    with mlflow.start_run(run_name=f"finetune {bb.name} {task.name}", description=description) as run:
        mlflow.set_tags({"kind": "finetune", "task": task.name, "backbone": bb.name, "head": "finetune",
                         "start_weights": metrics["weights_kind"],
                         **({"note": RANDOM_NOTE} if random_start else {})})
        mlflow.log_params(_params(spec, cfg, summary, metrics))
        log_history(metrics)
        ex = export_finetuned(spark, cfg, images, summary, task, bb.name, spec.out_dir)
        pred = ex.predictions
        test = metrics_with_intervals(pred["y_true"], pred["y_pred"], pred["proba"], list(task.labels),
                                      pred["groups"], n_resamples=tc.bootstrap_resamples, seed=tc.seed,
                                      positive=task.positive)
        cm = confusion(pred["y_true"], pred["y_pred"], task.n_classes)
        mlflow.log_metrics(finite_metrics(test))
        png = plot_confusion(cm, list(task.labels), f"{task.description}\n{bb.name} fine-tuned",
                             out / "plots" / f"confusion_{task.name}_{bb.name}_finetune.png")
        mlflow.log_artifact(str(png), "plots")
        info = mlflow.spark.log_model(ex.pipeline, "model", signature=spark_model_signature(),
                                      pip_requirements=model_pip_requirements())
        keras_info = mlflow.keras.log_model(ex.keras_model, "keras_model",
                                            pip_requirements=model_pip_requirements())
        name = registered_name(tc.registered_model_prefix, task.name)
        version = register_model(info.model_uri, name, description)
        # `serve --model models:/NAME/VERSION` serves the bundle its SERVING_TAG names, as for champions
        serving_uri = log_serving_model(ex.pipeline, ex.weights_file, {
            "task": task.name, "model_name": name, "model_version": version,
            "model_uri": f"models:/{name}/{version}"})
        link_model(name, version, SERVING_TAG, serving_uri)
    metrics.update(weights_sha256=ex.weights_sha256, run_id=run.info.run_id,
                   model_uri=f"models:/{name}/{version}", keras_model_uri=keras_info.model_uri,
                   test={**finite_metrics(test), "n": int(cm.sum()), "confusion": cm.tolist()})
    return FinetuneResult(metrics, out / MODEL_FILE, out / METRICS_FILE, metrics["model_uri"],
                          run.info.run_id, mlflow.get_tracking_uri(), pred)
