"""xray-spark: Spark-native chest X-ray classification.

sparkdl's API: `DeepImageFeaturizer`, `DeepImagePredictor` and `registerKerasImageUDF`; importing them does
not import TensorFlow (a model loads it when it first runs). They are resolved on first use (PEP 562
`__getattr__`), because importing the package must not import pyspark: `xray-spark serve` and the
Spark-free serving modules run without it.

Floors (DESIGN.md): each package imports only from the floors below it (tests/test_imports.py checks it).

    9  cli                     parse, call, print; nothing else prints
    8  demo  notebook_steps    the main job end to end; the steps notebooks/*.ipynb call
    7  scoring  serving        apply a trained model: batch (exactly once) / one image (HTTP)
    6  train                   fit and compare MLlib heads, register champions (`--heads finetune` calls 5)
    5  finetune                a backbone trained end to end over barrier tasks
    4  evaluation              metrics with intervals, report parts, leave-one-source-out, external
    3  models                  pipeline assembly, labelled frames, shift reference, Spark-free exports
    2  features                backbones, weights, engines, DeepImageFeaturizer, feature cache
    1  data                    listing, decode, ingest, copies, groups, split, sources, fetch
    0  core                    paths errors logs config tasks tracking session spark_io (root modules)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from xray_spark.features.featurizer import DeepImageFeaturizer
    from xray_spark.features.keras_image_file import KerasImageFileTransformer
    from xray_spark.features.keras_udf import registerKerasImageUDF
    from xray_spark.features.predictor import DeepImagePredictor
    from xray_spark.finetune.keras_image_file import KerasImageFileEstimator

__version__ = "0.1.0"
__all__ = ["DeepImageFeaturizer", "DeepImagePredictor", "KerasImageFileEstimator",
           "KerasImageFileTransformer", "__version__", "registerKerasImageUDF"]
_LAZY = {  # sparkdl's names -> the module defining each (each imports pyspark)
    "DeepImageFeaturizer": "xray_spark.features.featurizer",
    "DeepImagePredictor": "xray_spark.features.predictor",
    "registerKerasImageUDF": "xray_spark.features.keras_udf",
    "KerasImageFileTransformer": "xray_spark.features.keras_image_file",
    "KerasImageFileEstimator": "xray_spark.finetune.keras_image_file",
}


def __getattr__(name: str) -> Any:
    """sparkdl's names (`xray_spark.DeepImageFeaturizer`, ...) on first use (they import pyspark)."""
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'xray_spark' has no attribute {name!r}")
