"""The int8 gate: a model uses int8 features only when they leave its decisions on held-out images unchanged.

Why a gate and not a tolerance on features: quantisation moves every feature a little, and whether that
matters depends on the head that reads them (a linear head can amplify a 1% move across a decision boundary,
a tree may not care). So `train` measures each image model on the same held-out images twice — the head's
predictions from fp32 features (the reference) and from int8 features — and records:
- `agreement`: the share of images whose predicted label is the same (goal: >= int8.min_agreement, 99.5%);
- `max_prob_diff`: the largest change of any class probability on any image (softmax of rawPrediction for
  heads without probabilities);
- `auc_fp32`, `auc_int8`, `auc_diff`: ROC-AUC (macro) from each, and the difference;
- the 95% bootstrap intervals (over groups, evaluation/metrics.py) of the AUC and of `train.select_metric`
  from each side, and whether they overlap.
The model passes when agreement >= min_agreement and both intervals overlap; its verdict is one line,
`passed: ...` or `refused: ...` (what failed first), or `not measured: ...` (why not).

Held-out images: the test split (never calibrated on: calibrate.py draws from the training split), at most
`int8.gate_images` of them in a fixed pseudo-random order; fewer than `int8.min_gate_images` and the gate
does not measure. The features of both precisions go through the feature cache (features/cache.py), keyed
by precision, so a rerun measures without featurizing again; the features are computed once per backbone and
shared by every head and task.

`gate_switch` (pure) decides whether a run measures at all (config `int8.gate`, int8_config.py); `prepare`
(Spark) makes one backbone's calibration sample and held-out features; `gate_model` applies one fitted head;
`judge` (numpy only) decides.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from xray_spark.evaluation.int8_config import Int8Config
from xray_spark.evaluation.metrics import Interval, bootstrap_intervals, compute_metrics
from xray_spark.features.cache import featurize_to_cache
from xray_spark.features.calibrate import draw_calibration, pick_keys
from xray_spark.features.calibration import Calibration
from xray_spark.features.quantize import GATE_NOT_MEASURED, GATE_PASSED, GATE_REFUSED, int8_support
from xray_spark.models.frames import FEATURES, LABEL, task_frame
from xray_spark.tasks import Task

log = logging.getLogger(__name__)

AUC = "roc_auc_macro"


@dataclass(frozen=True)
class GateVerdict:
    """One model's gate result: passed or not, the one line that says why, and the figures."""

    passed: bool
    line: str
    figures: dict[str, float] = field(default_factory=dict)

    @property
    def measured(self) -> bool:
        return bool(self.figures)


def not_measured(reason: str) -> GateVerdict:
    return GateVerdict(False, f"{GATE_NOT_MEASURED}: {reason}")


def gate_switch(mode: str, cpu_flags: Iterable[str], nncf: str | None) -> tuple[bool, str]:
    """(measure?, why) for config `int8.gate` on the driver's CPU, with nncf's version (None: missing)."""
    support = int8_support(cpu_flags)
    if mode == "off":
        return False, "int8.gate is off"
    if nncf is None:
        return False, "nncf is not installed"
    if mode == "on":
        return True, f"int8.gate on (CPU int8 support: {support})"
    if support == "none":
        return False, ("int8.gate auto and this CPU has no native int8 (AMX-INT8, AVX512-VNNI or AVX-VNNI); "
                       "set int8.gate: on to measure anyway")
    return True, f"int8.gate auto, CPU with native int8 ({support})"


# ------------------------------------------------------------------------------------------- the decision


def _overlap(a: Interval, b: Interval) -> bool:
    if any(math.isnan(v) for v in (a.low, a.high, b.low, b.high)):
        return True  # undefined on this sample (one class only): nothing to compare, nothing refused
    return a.low <= b.high and b.low <= a.high


def judge(y_true: np.ndarray, pred_ref: np.ndarray, proba_ref: np.ndarray, pred_int8: np.ndarray,
          proba_int8: np.ndarray, groups: np.ndarray, labels: list[str], *, positive: str = "covid",
          metric: str = "macro_f1", min_agreement: float = 0.995, resamples: int = 1000,
          seed: int = 0) -> GateVerdict:
    """The gate's decision on one model's held-out predictions from fp32 (`_ref`) and int8 features, rows
    aligned. Pure numpy: every rule is unit-tested."""
    n = len(y_true)
    same = int((np.asarray(pred_ref) == np.asarray(pred_int8)).sum())
    agreement = same / n if n else math.nan
    max_dp = float(np.abs(np.asarray(proba_int8) - np.asarray(proba_ref)).max()) if n else math.nan
    sides = {}
    for name, pred, proba in (("fp32", pred_ref, proba_ref), ("int8", pred_int8, proba_int8)):
        point = compute_metrics(y_true, pred, proba, labels, positive=positive)
        ci = bootstrap_intervals(y_true, pred, proba, labels, groups, metrics=(AUC, metric),
                                 n_resamples=resamples, seed=seed, positive=positive)
        sides[name] = (point, ci)
    (ref, ref_ci), (q, q_ci) = sides["fp32"], sides["int8"]
    figures = {"n": float(n), "agreement": agreement, "max_prob_diff": max_dp,
               "auc_fp32": ref[AUC], "auc_int8": q[AUC], "auc_diff": q[AUC] - ref[AUC],
               f"{metric}_fp32": ref[metric], f"{metric}_int8": q[metric]}
    for name, ci in (("fp32", ref_ci), ("int8", q_ci)):
        for m, key in ((AUC, "auc"), (metric, metric)):
            figures[f"{key}_{name}_low"], figures[f"{key}_{name}_high"] = ci[m].low, ci[m].high
    auc_overlap, metric_overlap = _overlap(ref_ci[AUC], q_ci[AUC]), _overlap(ref_ci[metric], q_ci[metric])
    figures["intervals_overlap"] = float(auc_overlap and metric_overlap)
    facts = (f"labels agree on {same}/{n} held-out images ({100 * agreement:.1f}%), max |dp| {max_dp:.3f}, "
             f"AUC {q[AUC]:.3f} int8 vs {ref[AUC]:.3f} fp32")
    problems = []
    if not agreement >= min_agreement:
        problems.append(f"agreement {100 * agreement:.1f}% < {100 * min_agreement:.1f}%")
    if not auc_overlap:
        problems.append(f"AUC intervals do not overlap ({_ci(q_ci[AUC])} int8, {_ci(ref_ci[AUC])} fp32)")
    if not metric_overlap:
        problems.append(f"{metric} intervals do not overlap ({_ci(q_ci[metric])} int8, "
                        f"{_ci(ref_ci[metric])} fp32)")
    if problems:
        return GateVerdict(False, f"{GATE_REFUSED}: {'; '.join(problems)} ({facts}); keeps bf16/fp32",
                           figures)
    return GateVerdict(True, f"{GATE_PASSED}: {facts}; 95% intervals overlap", figures)


def _ci(ci: Interval) -> str:
    return f"[{ci.low:.3f}, {ci.high:.3f}]"


# ------------------------------------------------------------------------------------------------ Spark


@dataclass
class Int8Check:
    """One backbone's gate inputs: its calibration sample and held-out rows (labels + features) at fp32 and
    int8, cached; or why there are none (`skip`)."""

    skip: str | None = None
    calibration: Calibration | None = None
    reference: DataFrame | None = None
    quantised: DataFrame | None = None
    n: int = 0

    def release(self) -> None:
        for frame in (self.reference, self.quantised):
            if frame is not None:
                frame.unpersist()


def prepare(spark: SparkSession, settings: Int8Config, labels: DataFrame, contents: DataFrame, backbone: str,
            weights: str, cache_dir: str, calibration: Calibration | None = None) -> Int8Check:
    """Held-out rows of `labels` (an images table's labelled rows: sha256, split, path, label, group_id) with
    their fp32 and int8 features; `calibration` defaults to a sample drawn from the training split."""
    held_out = pick_keys(labels, settings.gate_images, settings.seed, split="test").cache()
    n = held_out.count()
    if n < settings.min_gate_images:
        held_out.unpersist()
        return Int8Check(skip=f"{n} held-out images, fewer than int8.min_gate_images "
                              f"({settings.min_gate_images})")
    if calibration is None:
        calibration = draw_calibration(labels, contents, backbone, settings.calibration_images, settings.seed)
    frames = []
    for precision in ("fp32", "int8"):
        feats = featurize_to_cache(spark, contents, backbone, weights, cache_dir, keys=held_out,
                                   precision=precision, calibration=calibration, progress=False)
        rows = labels.join(held_out, "sha256", "left_semi").join(
            feats.where(F.col(FEATURES).isNotNull()).select("sha256", FEATURES), "sha256")
        frames.append(rows.select("path", "sha256", "label", "group_id", FEATURES).cache())
    held_out.unpersist()
    log.info("int8 gate for %s: %d held-out images, calibration %s (%d images)", backbone, n,
             calibration.digest[:16], calibration.n)
    return Int8Check(None, calibration, frames[0], frames[1], n)


def gate_model(check: Int8Check, head_model: Any, task: Task, settings: Int8Config, *,
               metric: str = "macro_f1", resamples: int = 1000) -> GateVerdict:
    """One fitted head (the MLlib PipelineModel `train` fits: scaler + classifier) measured on `check`."""
    if check.skip:
        return not_measured(check.skip)
    ref = _predictions(head_model, task_frame(check.reference, task, weighted=False))
    q = _predictions(head_model, task_frame(check.quantised, task, weighted=False))
    if list(ref["path"]) != list(q["path"]):  # a row featurized at one precision only: compare the others
        common = sorted(set(ref["path"]) & set(q["path"]))
        ref, q = (_subset(side, common) for side in (ref, q))
    if not len(ref["path"]):
        return not_measured(f"no held-out image of task {task.name}")
    return judge(ref["y"], ref["pred"], ref["proba"], q["pred"], q["proba"], ref["groups"], list(task.labels),
                 positive=task.positive, metric=metric, min_agreement=settings.min_agreement,
                 resamples=resamples, seed=settings.seed)


def _predictions(model: Any, frame: DataFrame) -> dict[str, np.ndarray]:
    out = model.transform(frame)
    score = "probability" if "probability" in out.columns else "rawPrediction"
    pdf = out.select("path", "group_id", LABEL, "prediction", score).toPandas().sort_values("path")
    scores = np.stack([np.asarray(v.toArray(), dtype=float) for v in pdf[score]]) if len(pdf) else \
        np.zeros((0, 2))
    if score == "rawPrediction" and len(pdf):
        scores = np.exp(scores - scores.max(axis=1, keepdims=True))
        scores /= scores.sum(axis=1, keepdims=True)
    return {"path": pdf["path"].to_numpy(), "groups": pdf["group_id"].astype(str).to_numpy(),
            "y": pdf[LABEL].to_numpy(dtype=int), "pred": pdf["prediction"].to_numpy(dtype=int),
            "proba": scores}


def _subset(side: dict[str, np.ndarray], paths: list[str]) -> dict[str, np.ndarray]:
    keep = np.isin(side["path"], paths)
    return {k: v[keep] for k, v in side.items()}
