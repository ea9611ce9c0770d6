"""Registry of MLlib classification heads: short name -> a fresh (unfitted) Spark ML estimator.

Why a registry: the CLI, config (`train.heads`, `train.head_params`, `train.param_grids`) and the comparison
table all speak in the same short names (lr, rf, dt, gbt, svc, mlp). Heads that need standardised inputs get
a StandardScaler in front; heads that are binary-only in MLlib (GBT, LinearSVC) are wrapped in OneVsRest for
the multiclass task.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from xray_spark.errors import UserError

FEATURES = "features"
LABEL = "label_index"
WEIGHT = "class_weight"


@dataclass(frozen=True)
class HeadSpec:
    name: str
    title: str
    scale: bool  # standardise features first (linear models, MLP)
    binary_only: bool  # MLlib implements it for two classes only -> OneVsRest for multiclass
    probabilistic: bool  # emits calibrated-ish `probability` (else scores from rawPrediction)
    supports_weights: bool
    defaults: dict[str, Any]
    build: Callable[..., Any]


def _lr(**p):
    from pyspark.ml.classification import LogisticRegression

    return LogisticRegression(**p)


def _rf(**p):
    from pyspark.ml.classification import RandomForestClassifier

    return RandomForestClassifier(**p)


def _dt(**p):
    from pyspark.ml.classification import DecisionTreeClassifier

    return DecisionTreeClassifier(**p)


def _gbt(**p):
    from pyspark.ml.classification import GBTClassifier

    return GBTClassifier(**p)


def _svc(**p):
    from pyspark.ml.classification import LinearSVC

    return LinearSVC(**p)


def _mlp(**p):
    from pyspark.ml.classification import MultilayerPerceptronClassifier

    return MultilayerPerceptronClassifier(**p)


HEADS: dict[str, HeadSpec] = {
    "lr": HeadSpec("lr", "LogisticRegression", True, False, True, True, {"maxIter": 200, "regParam": 0.01}, _lr),
    "rf": HeadSpec("rf", "RandomForest", False, False, True, True, {"numTrees": 100, "maxDepth": 8}, _rf),
    "dt": HeadSpec("dt", "DecisionTree", False, False, True, True, {"maxDepth": 6}, _dt),
    "gbt": HeadSpec("gbt", "GBT", False, True, True, True, {"maxIter": 30, "maxDepth": 4}, _gbt),
    "svc": HeadSpec("svc", "LinearSVC", True, True, False, True, {"maxIter": 100, "regParam": 0.01}, _svc),
    "mlp": HeadSpec("mlp", "MultilayerPerceptron", True, False, True, False, {"maxIter": 200, "hidden": 64}, _mlp),
}
_SEEDED = {"rf", "dt", "gbt", "mlp"}


def get_head(name: str) -> HeadSpec:
    try:
        return HEADS[name]
    except KeyError:
        raise UserError(f"unknown head {name!r}; known: {', '.join(HEADS)}") from None


def head_params(spec: HeadSpec, overrides: dict[str, Any] | None, seed: int) -> dict[str, Any]:
    """Defaults <- config overrides; the values that end up in MLflow params."""
    params = dict(spec.defaults)
    params.update(overrides or {})
    if spec.name in _SEEDED:
        params.setdefault("seed", seed)
    return params


def build_head(
    spec: HeadSpec, n_classes: int, n_features: int, params: dict[str, Any], *, weighted: bool = False
):
    """(estimator, classifier): an unfitted Pipeline reading `features`/`label_index` and writing
    prediction/probability/rawPrediction, and the classifier stage inside it (for CrossValidator grids).
    """
    from pyspark.ml import Pipeline
    from pyspark.ml.classification import OneVsRest
    from pyspark.ml.feature import StandardScaler

    p = dict(params)
    features_col = "scaled_features" if spec.scale else FEATURES
    if spec.name == "mlp":
        hidden = int(p.pop("hidden", 64))
        p["layers"] = [n_features, hidden, n_classes]
    if spec.name == "mlp" or spec.binary_only:
        p.pop("weightCol", None)
    common = {"featuresCol": features_col, "labelCol": LABEL, "predictionCol": "prediction"}
    use_weights = weighted and spec.supports_weights
    if spec.binary_only and n_classes > 2:
        base = spec.build(**p)
        clf = OneVsRest(classifier=base, **common, rawPredictionCol="rawPrediction")
        if use_weights:
            clf.setWeightCol(WEIGHT)
    else:
        clf = spec.build(**p, **common)
        if use_weights:
            clf.setWeightCol(WEIGHT)
    if not spec.scale:
        return Pipeline(stages=[clf]), clf
    scaler = StandardScaler(inputCol=FEATURES, outputCol=features_col, withMean=True, withStd=True)
    return Pipeline(stages=[scaler, clf]), clf
