"""Serving without Spark: a trained pipeline's head as numpy arrays (export once with Spark, then load and
predict with numpy alone)."""

from __future__ import annotations

from xray_spark.serving.export import UnsupportedStageError, export_head
from xray_spark.serving.heads_numpy import HeadFormatError, SparkFreeHead

__all__ = ["HeadFormatError", "SparkFreeHead", "UnsupportedStageError", "export_head"]
