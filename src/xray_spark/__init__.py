"""xray-spark: Spark-native chest X-ray classification.

`DeepImageFeaturizer` is the sparkdl-compatible entry point; importing it does not import TensorFlow
(the featurizer loads TensorFlow only when it first runs a model). It is resolved on first use (PEP 562
`__getattr__`), because importing the package must not import pyspark: `xray-spark serve` and the
Spark-free serving modules run without it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from xray_spark.features.featurizer import DeepImageFeaturizer

__version__ = "0.1.0"
__all__ = ["DeepImageFeaturizer", "__version__"]


def __getattr__(name: str) -> Any:
    """`xray_spark.DeepImageFeaturizer` on first use (it imports pyspark)."""
    if name == "DeepImageFeaturizer":
        return importlib.import_module("xray_spark.features.featurizer").DeepImageFeaturizer
    raise AttributeError(f"module 'xray_spark' has no attribute {name!r}")
