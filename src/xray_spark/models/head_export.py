"""Export the head of a trained Spark pipeline as a SparkFreeHead: numpy arrays + JSON, no JVM to serve.

Why: the serving layer scores one image at a time; starting Spark for that is seconds and gigabytes. The
model `train` logs is [DeepImageFeaturizer, head PipelineModel (optional StandardScaler + classifier, GBT and
LinearSVC under OneVsRest for 3 classes), IndexToString]; everything after the featurizer is read here from
the fitted models' public API (coefficients, layers, weights) and, for trees, the JVM node objects. Only
`export_head` touches pyspark; loading and predicting live in `heads_numpy` (numpy only). A calibrated head's
TemperatureScalingModel (models/calibration_stage.py) becomes the SparkFreeHead's temperature.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from xray_spark.errors import UserError
from xray_spark.models.heads_numpy import (
    GBT,
    MLP,
    DecisionTree,
    LinearSVC,
    Logistic,
    OneVsRest,
    RandomForest,
    Scaler,
    SparkFreeHead,
)

FEATURIZER = "DeepImageFeaturizer"  # matched by class name: importing it here would import pyspark
SHIFT_STAGE = "ShiftModel"  # models/shift_stage.py, by name for the same reason
CALIBRATION_STAGE = "TemperatureScalingModel"  # models/calibration_stage.py, likewise


class UnsupportedStageError(UserError):
    """The pipeline holds a stage (or a setting of one) that has no Spark-free form."""


def export_head(pipeline_model: Any, labels: list[str] | None = None) -> SparkFreeHead:
    """The stages after the featurizer of `pipeline_model` (a PipelineModel as `train` logs it, or just its
    head) as a SparkFreeHead. `labels`: class names when the pipeline has no IndexToString."""
    import pyspark  # lazy: export is the only place that needs Spark (here: the version it records)

    scaler, classifier, calibration, decoder, info = _head_stages(pipeline_model)
    if decoder is not None:
        labels = list(decoder.getLabels())
    if labels is None:
        raise UserError("the pipeline has no IndexToString stage: pass the class names as `labels`")
    model = _CLASSIFIERS[type(classifier).__name__](classifier)
    if len(labels) != model.n_classes:
        raise UserError(f"{len(labels)} class names {labels} for a {model.n_classes}-class "
                        f"{type(classifier).__name__}")
    # OneVsRestModel has no numFeatures of its own: its binary models share one input
    n_features = int((classifier.models[0] if hasattr(classifier, "models") else classifier).numFeatures)
    numpy_scaler = None
    if scaler is not None:
        mean, std = scaler.mean.toArray(), scaler.std.toArray()
        if len(mean) != n_features:
            raise UserError(f"StandardScaler has {len(mean)} features, the classifier {n_features}")
        numpy_scaler = Scaler(mean if scaler.getWithMean() else None, std if scaler.getWithStd() else None)
    info.update(spark_version=pyspark.__version__, classifier=type(classifier).__name__)
    temperature = None if calibration is None else float(calibration.getOrDefault("temperature"))
    if temperature is not None and not model.probabilistic:
        raise UnsupportedStageError(f"{CALIBRATION_STAGE} ({calibration.uid}) after "
                                    f"{type(classifier).__name__}, which gives no probability to calibrate")
    return SparkFreeHead(model, labels, n_features, numpy_scaler, info, temperature)


def _head_stages(pipeline_model: Any) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
    """(scaler or None, classifier, temperature stage or None, IndexToString or None, info) after the
    featurizer; anything else, or a stage not reading what the one before it writes, is an
    UnsupportedStageError naming the stage."""
    from pyspark.ml.feature import IndexToString, StandardScalerModel  # lazy: only export needs Spark

    stages = flatten_stages(pipeline_model)
    info: dict[str, Any] = {"source_stages": [type(s).__name__ for s in stages]}
    start, features_col = 0, None
    for i, stage in enumerate(stages):
        if type(stage).__name__ == FEATURIZER:
            start, features_col = i + 1, stage.getOrDefault("outputCol")
            info["featurizer"] = _simple_params(stage)
    scaler = classifier = calibration = decoder = None
    for i, stage in enumerate(stages[start:], start):
        if type(stage).__name__ == SHIFT_STAGE and classifier is None:
            continue  # reads the features, adds its own columns: the bundle carries it apart
        if isinstance(stage, StandardScalerModel) and scaler is None and classifier is None:
            _check_input(stage, stage.getInputCol(), features_col)
            scaler, features_col = stage, stage.getOutputCol()
        elif classifier is None and type(stage).__name__ in _CLASSIFIERS:
            _check_input(stage, stage.getFeaturesCol(), features_col)
            classifier = stage
        elif (type(stage).__name__ == CALIBRATION_STAGE and classifier is not None and calibration is None
              and decoder is None):
            _check_input(stage, stage.getOrDefault("probabilityCol"), _probability_col(classifier))
            calibration = stage
        elif isinstance(stage, IndexToString) and classifier is not None and decoder is None:
            _check_input(stage, stage.getInputCol(), classifier.getPredictionCol())
            decoder = stage
        else:
            raise UnsupportedStageError(
                f"cannot export stage {i} {type(stage).__name__} ({stage.uid}): a Spark-free head is "
                f"[{FEATURIZER}] + [StandardScalerModel] + one of {', '.join(_CLASSIFIERS)} "
                f"+ [{CALIBRATION_STAGE}] + [IndexToString]")
    if classifier is None:
        raise UnsupportedStageError(f"no classifier stage to export (stages: {info['source_stages']})")
    return scaler, classifier, calibration, decoder, info


def _probability_col(classifier: Any) -> str | None:
    """The column a classifier writes its probabilities to (None: it has none, e.g. OneVsRest)."""
    return classifier.getOrDefault("probabilityCol") if classifier.hasParam("probabilityCol") else None


def flatten_stages(model: Any) -> list[Any]:
    """A PipelineModel's stages with nested PipelineModels (the head's own) expanded, in order."""
    from pyspark.ml import PipelineModel  # lazy: export is the only place that needs Spark

    if not isinstance(model, PipelineModel):
        return [model]
    return [s for stage in model.stages for s in flatten_stages(stage)]


def _check_input(stage: Any, reads: str, written: str | None) -> None:
    """A stage that does not read what the previous one wrote means a pipeline shape we do not know."""
    if written is not None and reads != written:
        raise UnsupportedStageError(f"stage {type(stage).__name__} ({stage.uid}) reads column {reads!r}, but "
                                    f"the stage before it writes {written!r}")


def _simple_params(stage: Any) -> dict[str, Any]:
    """A stage's set or default Params that JSON can hold (the featurizer's backbone, columns, ...)."""
    out = {}
    for param in stage.params:
        if stage.isDefined(param):
            value = stage.getOrDefault(param)
            if isinstance(value, (str, int, float, bool)):
                out[param.name] = value
    return out


def _no_thresholds(model: Any) -> None:
    """Per-class `thresholds` rescale probabilities before argmax; no head `train` builds sets them."""
    if model.hasParam("thresholds") and model.isSet("thresholds"):
        raise UnsupportedStageError(f"{type(model).__name__} ({model.uid}) has `thresholds` set; the "
                                    "Spark-free head supports the default argmax only")


def _logistic(model: Any) -> Logistic:
    coef, intercept = model.coefficientMatrix.toArray(), model.interceptVector.toArray()
    multinomial = coef.shape[0] > 1  # binomial models keep one row, multinomial one per class
    if multinomial:
        _no_thresholds(model)
    if model.numClasses != (coef.shape[0] if multinomial else 2):
        raise UnsupportedStageError(f"LogisticRegressionModel ({model.uid}): {model.numClasses} classes "
                                    f"but {coef.shape[0]} coefficient rows")
    return Logistic(coef, intercept, multinomial, model.getThreshold() if not multinomial else 0.5)


def _linear_svc(model: Any) -> LinearSVC:
    return LinearSVC(model.coefficients.toArray(), model.intercept, float(model.getThreshold()))


def _mlp(model: Any) -> MLP:
    _no_thresholds(model)
    return MLP(list(model.getLayers()), model.weights.toArray())


def _one_vs_rest(model: Any) -> OneVsRest:
    subs = []
    for sub in model.models:
        convert = _CLASSIFIERS.get(type(sub).__name__)
        if convert is None or type(sub).__name__ == "OneVsRestModel":
            raise UnsupportedStageError(f"OneVsRestModel ({model.uid}) wraps {type(sub).__name__}, which has "
                                        "no Spark-free form")
        subs.append(convert(sub))
    if any(s.n_classes != 2 for s in subs):
        raise UnsupportedStageError(f"OneVsRestModel ({model.uid}): a wrapped model is not binary")
    return OneVsRest(subs)


def _decision_tree(model: Any) -> DecisionTree:
    _no_thresholds(model)
    return DecisionTree(model.numClasses, *_tree_arrays([model], _class_counts))


def _random_forest(model: Any) -> RandomForest:
    _no_thresholds(model)
    return RandomForest(model.numClasses, *_tree_arrays(model.trees, _class_counts))


def _gbt(model: Any) -> GBT:
    _no_thresholds(model)
    if model.getLossType() != "logistic":
        raise UnsupportedStageError(f"GBTClassificationModel ({model.uid}) with loss {model.getLossType()!r}")
    arrays = _tree_arrays(model.trees, lambda leaf: [leaf.prediction()])
    return GBT(2, *arrays[:-1], np.asarray(model.treeWeights, float))


def _class_counts(leaf: Any) -> list[float]:
    stats = leaf.impurityStats().stats()
    return [stats[i] for i in range(len(stats))]  # by index: list() on a py4j array costs several times more


def _tree_arrays(trees: list[Any], leaf_value: Any) -> tuple[np.ndarray, ...]:
    """Walk each tree's JVM nodes (`rootNode`, `split`, children) into flat arrays: feature (-1 = leaf),
    threshold, left, right, value, roots, weights (ones)."""
    feature: list[int] = []
    threshold: list[float] = []
    left: list[int] = []
    right: list[int] = []
    value: list[list[float]] = []
    roots = []
    for tree in trees:
        roots.append(len(feature))
        pending = [tree._java_obj.rootNode()]  # breadth first; a node's index is its place in `pending`
        offset, i = len(feature), 0
        while i < len(pending):
            node = pending[i]
            if node.getClass().getSimpleName() == "InternalNode":
                split = node.split()
                if split.getClass().getSimpleName() != "ContinuousSplit":
                    raise UnsupportedStageError(f"{type(tree).__name__} ({tree.uid}) splits on a categorical "
                                                "feature; only continuous splits are supported")
                feature.append(int(split.featureIndex()))
                threshold.append(float(split.threshold()))
                left.append(offset + len(pending))
                right.append(offset + len(pending) + 1)
                pending += [node.leftChild(), node.rightChild()]
                value.append([])
            else:
                feature.append(-1)
                threshold.append(0.0)
                left.append(-1)
                right.append(-1)
                value.append([float(v) for v in leaf_value(node)])
            i += 1
    width = max(len(v) for v in value)
    values = np.array([v or [0.0] * width for v in value], dtype=float)
    return (np.array(feature), np.array(threshold), np.array(left), np.array(right), values,
            np.array(roots), np.ones(len(roots)))


_CLASSIFIERS: dict[str, Any] = {
    "LogisticRegressionModel": _logistic,
    "LinearSVCModel": _linear_svc,
    "DecisionTreeClassificationModel": _decision_tree,
    "RandomForestClassificationModel": _random_forest,
    "GBTClassificationModel": _gbt,
    "MultilayerPerceptronClassificationModel": _mlp,
    "OneVsRestModel": _one_vs_rest,
}

__all__ = ["FEATURIZER", "SparkFreeHead", "UnsupportedStageError", "export_head"]
