"""Fit one head on one task's train split and evaluate it on the test split.

Why separate from the orchestration: the same function serves image features and the metadata baseline,
so both are trained and scored identically (paired comparison on the same persisted split).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from pyspark.ml.evaluation import MulticlassClassificationEvaluator
from pyspark.ml.tuning import CrossValidator, ParamGridBuilder
from pyspark.sql import functions as F

from xray_spark.errors import UserError
from xray_spark.models.calibration import TemperatureFit
from xray_spark.models.frames import LABEL, predict_split
from xray_spark.tasks import Task
from xray_spark.train.heads import HeadSpec, build_head

log = logging.getLogger(__name__)


@dataclass
class FitResult:
    model: Any  # fitted PipelineModel of the head: scaler + classifier [+ temperature, train/calibrate.py]
    y_true: np.ndarray
    y_pred: np.ndarray
    proba: np.ndarray  # what `model` gives; rows sum to 1 (non-probabilistic heads: softmax of raw scores)
    groups: np.ndarray
    paths: np.ndarray
    fit_seconds: float
    cv_best: dict[str, Any] | None = None
    sources: np.ndarray | None = None  # each test row's source, when the frame has one
    proba_uncalibrated: np.ndarray | None = None  # the head's own, when `model` ends in a temperature stage
    calibration: TemperatureFit | None = None  # that temperature, fitted out of fold on the training side
    calibration_seconds: float = 0.0  # the out-of-fold fits and the temperature's


def fit_head(
    spec: HeadSpec,
    params: dict[str, Any],
    frame,
    task: Task,
    n_features: int,
    *,
    weighted: bool = False,
    cv_grid: dict[str, list[Any]] | None = None,
    cv_metric: str = "f1",
    cv_parallelism: int = 1,
) -> FitResult:
    """Fit on split == train (optionally grouped k-fold CrossValidator on the persisted folds), predict
    test."""
    estimator, clf = build_head(spec, task.n_classes, n_features, params, weighted=weighted)
    train = frame.where(F.col("split") == "train")
    test = frame.where(F.col("split") == "test")
    cv_best = None
    t0 = time.time()
    if cv_grid:
        grid = ParamGridBuilder()
        for name, values in cv_grid.items():
            grid = grid.addGrid(clf.getParam(name), values)
        # foldCol = the persisted grouped folds: no patient or duplicate cluster straddles train/validation
        folds = sorted(r[0] for r in train.select("fold").distinct().collect())
        if len(folds) < 2:
            raise UserError(f"cross-validation needs at least 2 folds on the train side, found {len(folds)}")
        cv = CrossValidator(
            estimator=estimator,
            estimatorParamMaps=grid.build(),
            evaluator=MulticlassClassificationEvaluator(labelCol=LABEL, metricName=cv_metric),
            foldCol="cv_fold",
            numFolds=len(folds),
            parallelism=cv_parallelism,
        )
        remap = F.create_map(*[x for i, f in enumerate(folds) for x in (F.lit(int(f)), F.lit(i))])
        cv_model = cv.fit(train.withColumn("cv_fold", remap[F.col("fold")]))
        model = cv_model.bestModel
        best_i = int(np.argmax(cv_model.avgMetrics))
        cv_best = {p.name: v for p, v in cv_model.getEstimatorParamMaps()[best_i].items()}
        cv_best["cv_" + cv_metric] = float(cv_model.avgMetrics[best_i])
    else:
        model = estimator.fit(train)
    fit_seconds = time.time() - t0
    # OneVsRest (GBT, LinearSVC on 3 classes) emits no `probability`, whatever its base classifier does
    probabilistic = spec.probabilistic and not (spec.binary_only and task.n_classes > 2)
    return FitResult(model=model, **predict_split(model, test, probabilistic), fit_seconds=fit_seconds,
                     cv_best=cv_best)


