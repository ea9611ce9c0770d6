"""xray-spark: Spark-native chest X-ray classification.

`DeepImageFeaturizer` is the sparkdl-compatible entry point; importing it does not import TensorFlow
(the featurizer loads TensorFlow only when it first runs a model).
"""

from __future__ import annotations

from xray_spark.features.featurizer import DeepImageFeaturizer

__version__ = "0.1.0"
__all__ = ["DeepImageFeaturizer", "__version__"]
