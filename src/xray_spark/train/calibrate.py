"""Calibrate a fitted head: a temperature from its out-of-fold predictions on the training side, never the
test split, added to the head as a TemperatureScalingModel stage (models/calibration_stage.py).

Out of fold: for each fold of the persisted grouped split on the training side, the head (same estimator,
same settings, the grid point cross-validation chose) is refitted on the other training folds and predicts
that fold. Every training image is then predicted once by a head that never saw it or its group, and the
temperature is fitted on those predictions. The test split is filtered out before anything else, so the
temperature cannot learn from it; the final head (fitted on every training fold) is the one that is saved.
Cost: one more fit per training fold (4 with the default 5 folds) per calibrated head.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pyspark.ml import PipelineModel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from xray_spark.config import Config
from xray_spark.models.calibration import CalibrationConfig
from xray_spark.models.calibration_stage import TemperatureScaling
from xray_spark.models.frames import LABEL
from xray_spark.models.heads_numpy import temperature_scale
from xray_spark.spark_io import union_all
from xray_spark.tasks import Task
from xray_spark.train.fit import FitResult
from xray_spark.train.heads import HeadSpec, build_head

log = logging.getLogger(__name__)

OOF_COLUMNS = ("path", "split", "fold", LABEL, "probability")  # what an out-of-fold prediction row holds


def calibration_settings(cfg: Config) -> CalibrationConfig:
    """The config's `calibration` section (registered by models/calibration.py)."""
    return cfg.section("calibration")


def calibratable(spec: HeadSpec, task: Task) -> bool:
    """Heads with a probability column: every head but LinearSVC and the one-vs-rest wrappers."""
    return spec.probabilistic and not (spec.binary_only and task.n_classes > 2)


def out_of_fold(spec: HeadSpec, params: dict[str, Any], frame: DataFrame, task: Task, n_features: int, *,
                weighted: bool = False, parallel: int = 1) -> DataFrame | None:
    """Each training row's prediction by the head refitted without its fold (OOF_COLUMNS); None with fewer
    than two training folds. Only `split = 'train'` rows are ever fitted on or predicted. `parallel` fits at
    once (threads sharing the session: small MLlib fits wait on job latency, as train/run.py explains)."""
    train = frame.where(F.col("split") == "train")
    folds = sorted(r[0] for r in train.select("fold").distinct().collect() if r[0] is not None)
    if len(folds) < 2:
        return None

    def predicted(fold: int) -> DataFrame:
        estimator, _ = build_head(spec, task.n_classes, n_features, params, weighted=weighted)
        model = estimator.fit(train.where(F.col("fold") != fold))
        return model.transform(train.where(F.col("fold") == fold)).select(*OOF_COLUMNS)

    with ThreadPoolExecutor(max(1, min(parallel, len(folds))), thread_name_prefix="calibrate") as pool:
        parts = list(pool.map(predicted, folds))
    return union_all(parts)  # the parts select the same columns in the same order


def calibrate(fit: FitResult, spec: HeadSpec, params: dict[str, Any], frame: DataFrame, task: Task,
              n_features: int, cfg: Config) -> FitResult:
    """`fit` with its head followed by a fitted temperature stage and its test-split probabilities rescaled
    by the same function the stage runs (the uncalibrated ones kept beside them); `fit` unchanged when the
    head has no probabilities, calibration is off, or there are too few out-of-fold rows."""
    settings = calibration_settings(cfg)
    if settings.method == "none" or not calibratable(spec, task):
        return fit
    t0 = time.time()
    chosen = {k: v for k, v in (fit.cv_best or {}).items() if not k.startswith("cv_")}
    oof = out_of_fold(spec, {**params, **chosen}, frame, task, n_features, weighted=cfg.train.class_weights,
                      parallel=cfg.train.parallel_fits)
    if oof is None:
        log.warning("%s: fewer than 2 training folds, the head is left uncalibrated", task.name)
        return fit
    oof = oof.cache()
    try:
        n = oof.count()
        if n < settings.min_rows:
            log.warning("%s: %d out-of-fold predictions (calibration.min_rows %d), the head is left "
                        "uncalibrated", task.name, n, settings.min_rows)
            return fit
        stage = TemperatureScaling(probabilityCol="probability", labelCol=LABEL).fit(oof)
    finally:
        oof.unpersist()
    temperature = float(stage.getTemperature())
    return dataclasses.replace(fit, model=PipelineModel(stages=[fit.model, stage]),
                               proba=temperature_scale(fit.proba, temperature), proba_uncalibrated=fit.proba,
                               calibration=stage.fit_summary, calibration_seconds=time.time() - t0)
