"""The fine-tuned Keras model as the Spark PipelineModel that `score`, `evaluate` and `serve` already accept.

Why this shape and not a new transformer: the fine-tuned network is exactly the featurizer's backbone
(`Backbone.build(weights=None)`: include_top=False, avg pooling, fed `Backbone.preprocess`ed images decoded
by `decode_for_model`) followed by one Dense softmax layer, and softmax(W x + b) is a multinomial logistic
regression. So the model is [DeepImageFeaturizer(weights = the fine-tuned backbone's file, pinned by its
tensor digest), LogisticRegressionModel, IndexToString] (`models.pipeline.full_pipeline`), and every path that
loads, scores, serves or exports a frozen-feature head takes it unchanged.

The LogisticRegressionModel is built through py4j: its Scala constructor is `private[spark]`, which is public
in bytecode. Writing MLlib's on-disk format by hand would also work but ties us to its metadata layout; the
constructor is the same call MLlib's own reader makes. Both need a classic (non-Connect) Spark session, as
barrier-mode fine-tuning does anyway.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from xray_spark.tasks import Task

if TYPE_CHECKING:
    import keras
    from pyspark.sql import SparkSession


def backbone_and_head(model: keras.Model) -> tuple[keras.Model, np.ndarray, np.ndarray]:
    """(the backbone sub-model, head kernel (features x classes), head bias) of a `trainer.build_model`
    model."""
    import keras  # lazy: loads TensorFlow, needed only where a Keras model is handled

    bases = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    if len(bases) != 1:
        raise ValueError(f"expected one backbone sub-model in {model.name}, found {len(bases)}")
    kernel, bias = model.get_layer("head").get_weights()
    return bases[0], np.asarray(kernel, dtype=np.float64), np.asarray(bias, dtype=np.float64)


def save_backbone_weights(backbone: keras.Model, path: Path) -> Path:
    """The fine-tuned backbone's weights alone, as a `.weights.h5` that `Backbone.build` + `load_weights`
    (the featurizer's engines, pinning) read like any other weights file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    backbone.save_weights(str(path))
    return path


def head_coefficients(kernel: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    """(coefficient rows, intercepts, multinomial) of the logistic regression equal to softmax(x K + b).

    Two classes: MLlib's binomial model computes sigmoid(w.x + c) for class 1, and a 2-way softmax gives
    class 1 exp(z1) / (exp(z0) + exp(z1)) = sigmoid(z1 - z0), so w = K[:, 1] - K[:, 0], c = b1 - b0 (and
    the binomial form is what MLlib, the serving export and `train`'s binary heads use).
    """
    if kernel.shape[1] == 2:
        return (kernel[:, 1] - kernel[:, 0])[None, :], np.array([bias[1] - bias[0]]), False
    return kernel.T.copy(), bias.copy(), True


def softmax_head(spark: SparkSession, kernel: np.ndarray, bias: np.ndarray, task: Task) -> Any:
    """The Dense softmax head as a pyspark LogisticRegressionModel reading `features` (see the module
    docstring for why py4j)."""
    from pyspark.ml.common import _py2java  # lazy: pyspark only on the driver
    from pyspark.ml.linalg import DenseMatrix, DenseVector  # lazy: pyspark only on the driver
    from pyspark.ml.wrapper import JavaParams  # lazy: pyspark only on the driver

    if kernel.shape[1] != task.n_classes:
        raise ValueError(f"head has {kernel.shape[1]} outputs, task {task.name} {task.n_classes} classes")
    coef, intercept, multinomial = head_coefficients(kernel, bias)
    sc = spark.sparkContext
    # row-major (isTransposed): MLlib requires it of binomial models
    matrix = DenseMatrix(coef.shape[0], coef.shape[1], coef.ravel().tolist(), True)
    jvm = sc._jvm.org.apache.spark.ml.classification.LogisticRegressionModel(
        f"LogisticRegressionModel_finetuned_{task.name}", _py2java(sc, matrix),
        _py2java(sc, DenseVector(intercept)), task.n_classes, multinomial)
    return JavaParams._from_java(jvm)
