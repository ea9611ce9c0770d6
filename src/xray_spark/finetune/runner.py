"""`xray-spark finetune`: ingest-or-reuse, write the shards, run the barrier workers, write the metrics.

The driver holds only small things: shard counts, the payload, and each worker's result (history from the
chief, a confusion matrix of its test share from every worker).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from xray_spark import paths
from xray_spark.config import Config
from xray_spark.data.images import load_or_ingest
from xray_spark.errors import UserError
from xray_spark.features.backbones import get_backbone
from xray_spark.features.weights import resolve_weights, ship_weights
from xray_spark.finetune.checkpoints import Checkpoints, write_json_atomic
from xray_spark.finetune.data import class_weights, steps_for, write_shards
from xray_spark.finetune.distributed import run_barrier
from xray_spark.finetune.trainer import CHECKPOINTS, MODEL_FILE
from xray_spark.train.tasks import get_task

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


@dataclass
class FinetuneResult:
    metrics: dict[str, Any]
    model_path: Path
    metrics_path: Path

    def lines(self) -> list[str]:
        m = self.metrics
        out = [f"epoch {h['epoch']}: loss {h['loss']:.4f}, val loss {h['val_loss']:.4f}, "
               f"{h['images_per_second']:.1f} images/s" for h in m["history"]]
        test = m["test"]
        out.append(f"test fold: accuracy {test['accuracy']:.3f} on {test['n']} images")
        if m["weights_kind"] == "none":
            out.append("NOTE: the backbone started from random weights (--weights none), not ImageNet")
        out += [f"model: {self.model_path}", f"metrics: {self.metrics_path}"]
        return out


def run_key(plan_root: str, spec: FinetuneSpec, fingerprint: str, cfg: Config, workers: int) -> str:
    """What a checkpoint must match to be resumed: data shards, backbone, weights, task, and the settings
    that shape the variables or the steps."""
    parts = [Path(plan_root).name, get_backbone(spec.backbone).name, fingerprint, spec.task, workers,
             str(cfg.finetune.unfreeze), cfg.finetune.optimizer, cfg.finetune.batch_size]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


def run_finetune(spark, cfg: Config, spec: FinetuneSpec) -> FinetuneResult:
    task = get_task(spec.task)
    bb = get_backbone(spec.backbone)
    workers = spec.workers or cfg.finetune.workers
    epochs = spec.epochs or cfg.finetune.epochs
    out = paths.local_path(spec.out_dir)
    images, summary, _ = load_or_ingest(spark, spec.data, spec.out_dir, cfg)
    plan = write_shards(spark, images, summary, cfg, task, spec.out_dir, workers)
    resolved = resolve_weights(bb.name, spec.weights, spark=spark)
    key = run_key(plan.root, spec, resolved.fingerprint, cfg, workers)
    state = Checkpoints(out / CHECKPOINTS, chief=False).state()
    if state is not None and state.get("run_key") != key:
        raise UserError(f"--out {spec.out_dir} holds checkpoints of another fine-tune (other data, backbone, "
                        "weights, task or settings); give a new --out to start over")
    batch = -(-cfg.finetune.batch_size // workers)
    payload = {
        "backbone": bb.name, "labels": list(task.labels), "data_root": plan.root, "out_dir": str(out),
        "finetune": asdict(cfg.finetune), "epochs": epochs, "per_worker_batch": batch, "run_key": key,
        "steps": steps_for(plan.largest_shard("train"), batch),
        "val_steps": steps_for(plan.largest_shard("val"), batch),
        "class_weights": class_weights(plan.class_counts("train")),
        "weights_path": str(resolved.local_path), "weights_ship_name": ship_weights(spark, resolved),
    }
    log.info("fine-tuning %s (%s, weights %s) on %d train / %d validation images, %d workers x batch %d, "
             "%d steps per epoch", bb.name, task.name, resolved.kind, plan.n("train"), plan.n("val"), workers,
             batch, payload["steps"])
    results = run_barrier(spark, workers, payload)
    confusion = np.sum([r["test_confusion"] for r in results], axis=0)
    n_test = int(confusion.sum())
    metrics = {
        "backbone": bb.name, "task": task.name, "labels": list(task.labels), "weights": spec.weights,
        "weights_kind": resolved.kind, "weights_fingerprint": resolved.fingerprint, "workers": workers,
        "per_worker_batch": batch, "policy": results[0]["policy"], "finetune": asdict(cfg.finetune),
        "val_fold": plan.val_fold, "n_train": plan.n("train"), "n_val": plan.n("val"),
        "start_epoch": results[0]["start_epoch"],
        "initial_fixed_batch_loss": results[0]["initial_fixed_batch_loss"],
        "history": results[0]["history"],
        "test": {"n": n_test, "accuracy": float(np.trace(confusion) / n_test) if n_test else float("nan"),
                 "confusion": confusion.tolist()},
    }
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / METRICS_FILE, metrics)
    return FinetuneResult(metrics, out / MODEL_FILE, out / METRICS_FILE)
