"""The model MLflow stores and scoring loads, assembled from fitted parts: decode -> featurize -> head ->
label decode (`full_pipeline`), and the metadata-only baseline's counterpart (`baseline_pipeline`).

One home for the stage order, so `train`, `finetune` and the serving bundle's export can never disagree on it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pyspark.ml import PipelineModel
from pyspark.ml.feature import IndexToString

from xray_spark.features.featurizer import DeepImageFeaturizer
from xray_spark.models.shift_stage import FileProperties, ShiftModel
from xray_spark.tasks import Task


def _decode_label(task: Task) -> IndexToString:
    return IndexToString(inputCol="prediction", outputCol="predicted_label", labels=list(task.labels))


def full_pipeline(backbone: str, weights: str, head_model: Any, task: Task,
                  weights_sha256: str | None = None, shift: ShiftModel | None = None,
                  int8: Mapping[str, str] | None = None) -> PipelineModel:
    """decode -> featurize -> head -> label decode: the one model MLflow stores and scoring loads.

    `weights_sha256` pins the featurizer to the tensors the head was trained on (features/pinning.py).
    With `shift`, file properties are read before the featurizer and `shift_score` / `in_distribution`
    added after it (models/shift_stage.py). `int8`: the featurizer's int8 Params from train's int8 gate
    (features/int8_params.py: its verdict, and the calibration sample when it passed)."""
    featurizer = DeepImageFeaturizer(inputCol="content", outputCol="features", modelName=backbone,
                                     weights=weights, weightsSha256=weights_sha256, **(int8 or {}))
    if shift is None:
        return PipelineModel(stages=[featurizer, head_model, _decode_label(task)])
    props = FileProperties(inputCol="content", outputCol=shift.getPropsCol())
    return PipelineModel(stages=[props, featurizer, shift, head_model, _decode_label(task)])


def baseline_pipeline(prep: PipelineModel, head_model: Any, task: Task) -> PipelineModel:
    """images-table metadata -> features -> head -> label decode: a baseline that can be applied to another
    source's images table."""
    return PipelineModel(stages=[*prep.stages, head_model, _decode_label(task)])
