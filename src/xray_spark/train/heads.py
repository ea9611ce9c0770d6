"""Registry of MLlib classification heads: short name -> a fresh (unfitted) Spark ML estimator.

Why a registry: the CLI, config (`train.heads`, `train.head_params`, `train.param_grids`) and the comparison
table all speak in the same short names (lr, rf, dt, gbt, svc, mlp). Heads that need standardised inputs get
a StandardScaler in front; heads that are binary-only in MLlib (GBT, LinearSVC) are wrapped in OneVsRest for
the multiclass task.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pyspark.ml.classification as classification
from pyspark.ml import Pipeline
from pyspark.ml.classification import OneVsRest
from pyspark.ml.feature import StandardScaler
from pyspark.ml.param import Param

from xray_spark.errors import UserError
from xray_spark.models.frames import FEATURES, LABEL, WEIGHT


@dataclass(frozen=True)
class HeadSpec:
    name: str
    title: str
    estimator: str  # class name in pyspark.ml.classification
    scale: bool  # standardise features first (linear models, MLP)
    binary_only: bool  # MLlib implements it for two classes only -> OneVsRest for multiclass
    probabilistic: bool  # emits `probability` (else scores from rawPrediction); never under OneVsRest
    supports_weights: bool
    defaults: dict[str, Any]


HEADS: dict[str, HeadSpec] = {
    "lr": HeadSpec("lr", "LogisticRegression", "LogisticRegression", True, False, True, True,
                   {"maxIter": 200, "regParam": 0.01}),
    "rf": HeadSpec("rf", "RandomForest", "RandomForestClassifier", False, False, True, True,
                   {"numTrees": 100, "maxDepth": 8}),
    "dt": HeadSpec("dt", "DecisionTree", "DecisionTreeClassifier", False, False, True, True, {"maxDepth": 6}),
    "gbt": HeadSpec("gbt", "GBT", "GBTClassifier", False, True, True, True, {"maxIter": 30, "maxDepth": 4}),
    "svc": HeadSpec("svc", "LinearSVC", "LinearSVC", True, True, False, True,
                    {"maxIter": 100, "regParam": 0.01}),
    "mlp": HeadSpec("mlp", "MultilayerPerceptron", "MultilayerPerceptronClassifier", True, False, True, False,
                    {"maxIter": 200, "hidden": 64}),
}
# Not an MLlib head: the backbone trained end to end with a new softmax head (xray_spark.finetune), on the
# same split and measured the same way, so it competes for `champion` in the same table. Its settings: config
# section `finetune`.
FINETUNE = "finetune"
FINETUNE_TITLE = "Fine-tuned end to end"
_SEEDED = {"rf", "dt", "gbt", "mlp"}
_EXTRA = {"mlp": {"hidden"}}  # our own knobs, turned into MLlib Params in build_head


def get_head(name: str) -> HeadSpec:
    try:
        return HEADS[name]
    except KeyError:
        raise UserError(f"unknown head {name!r}; known: {', '.join(HEADS)}") from None


def head_names() -> list[str]:
    """Every name `--heads` accepts: the MLlib heads, then `finetune`."""
    return [*HEADS, FINETUNE]


def head_title(name: str) -> str:
    """The name tables and plots show for a head."""
    return FINETUNE_TITLE if name == FINETUNE else get_head(name).title


def estimator_class(spec: HeadSpec) -> type:
    return getattr(classification, spec.estimator)


def check_param_names(spec: HeadSpec, names: Iterable[str], key: str) -> None:
    """Fail before any Spark work when config names a Param the estimator lacks (a typo would otherwise
    surface as a TypeError in the middle of a long run)."""
    cls = estimator_class(spec)
    bad = [n for n in names
           if n not in _EXTRA.get(spec.name, ()) and not isinstance(getattr(cls, n, None), Param)]
    if bad:
        raise UserError(f"config {key}: {spec.estimator} has no parameter {', '.join(map(repr, bad))}")


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
        base = estimator_class(spec)(**p)
        clf = OneVsRest(classifier=base, **common, rawPredictionCol="rawPrediction")
        if use_weights:
            clf.setWeightCol(WEIGHT)
    else:
        clf = estimator_class(spec)(**p, **common)
        if use_weights:
            clf.setWeightCol(WEIGHT)
    if not spec.scale:
        return Pipeline(stages=[clf]), clf
    scaler = StandardScaler(inputCol=FEATURES, outputCol=features_col, withMean=True, withStd=True)
    return Pipeline(stages=[scaler, clf]), clf
