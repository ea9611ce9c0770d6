"""xray-spark: Spark-native chest X-ray classification.

`DeepImageFeaturizer` is imported lazily so that `import xray_spark` stays cheap (no TensorFlow import)
for jobs that only ingest or score metadata.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["DeepImageFeaturizer", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "DeepImageFeaturizer":
        from xray_spark.features.featurizer import DeepImageFeaturizer

        return DeepImageFeaturizer
    raise AttributeError(name)
