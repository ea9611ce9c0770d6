"""`DeepImagePredictor`: sparkdl's ImageNet classifier stage, on the featurizer's machinery.

Why: sparkdl users call `DeepImagePredictor(inputCol=..., outputCol=..., modelName=..., decodePredictions=...,
topK=...)` to tag images with ImageNet classes. This stage runs the backbone's Keras ImageNet classifier
(`include_top=True`, registered as "<Backbone>-top" in backbones.py) through the same predict_batch_udf,
engines (keras | openvino), weights resolution (`imagenet`: Keras' classifier file, verified with the MD5
Keras publishes; `none:seed=N`; a file) and pinning (`weightsSha256`) as DeepImageFeaturizer.

Output, as sparkdl's: the 1000 probabilities as an MLlib DenseVector; with `decodePredictions`, an array of
`topK` structs (class: WordNet id, description: class name, probability: float), most likely first, named
offline from the index this package ships (imagenet.py). Differences, on purpose: `colorMode` defaults to
'RGB' (ImageNet classes describe colour photographs; sparkdl fed RGB), sparkdl's predictor resized with
PIL's default filter while this one resizes as `scaleHint` says (default area averaging, as sparkdl's
featurizer); an undecodable image gives a null prediction and its reason in `errorCol`; the stage
persists in a Pipeline.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pyspark import keyword_only
from pyspark.ml.param import TypeConverters
from pyspark.ml.util import DefaultParamsReadable
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, FloatType, StringType, StructField, StructType

from xray_spark.errors import UserError
from xray_spark.features.backbones import Backbone, classifier
from xray_spark.features.featurizer import _NamedImageStage
from xray_spark.features.imagenet import decode_top_k
from xray_spark.features.params import ParamSpec
from xray_spark.ml_io import ParamsWritable

DECODED = ArrayType(StructType([
    StructField("class", StringType(), False), StructField("description", StringType(), False),
    StructField("probability", FloatType(), False),
]))


class DeepImagePredictor(_NamedImageStage, DefaultParamsReadable, ParamsWritable):
    """Image bytes or image structs -> ImageNet class probabilities, or the topK decoded classes.

    >>> DeepImagePredictor(inputCol="image", outputCol="predicted", modelName="InceptionV3",
    ...                    decodePredictions=True, topK=3, weights="none")
    """

    PARAMS = (
        ParamSpec("decodePredictions", "if true, output the topK (class, description, probability) structs "
                  "instead of the probability vector", TypeConverters.toBoolean, False),
        ParamSpec("topK", "how many classes decodePredictions keeps, most likely first",
                  TypeConverters.toInt, 5),
    )
    DEFAULTS = {"inputCol": "content", "outputCol": "predictions", "colorMode": "RGB"}

    @keyword_only
    def __init__(self, **params: Any) -> None:
        """Any of the Params by keyword (see `explainParams()`); the others keep their defaults."""
        super().__init__()
        self.setParams(**self._input_kwargs)

    @keyword_only
    def setParams(self, **params: Any) -> DeepImagePredictor:
        return self._set_params(self._input_kwargs)

    def _backbone(self) -> Backbone:
        return classifier(self.getModelName())

    def _validate(self) -> None:
        super()._validate()
        if self.getTopK() < 1:
            raise UserError(f"topK must be >= 1, got {self.getTopK()}")

    def _output(self, result: Any) -> Any:
        if not self.getDecodePredictions():
            return super()._output(result)
        return _decode_udf(self.getTopK())(result)


def _decode_udf(k: int) -> Any:
    def decode(probabilities: list[float] | None) -> list[tuple[str, str, float]] | None:
        return None if probabilities is None else decode_top_k(np.asarray(probabilities), k)

    return F.udf(decode, DECODED)
