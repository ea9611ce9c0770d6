"""Batch scoring entry points (the work lives in xray_spark.scoring.*; this keeps `xray_spark.score` stable).

`xray-spark score --model URI --input DIR --output DIR` scores each image content once per model version:
incremental, exactly once, and safe to kill at any point (see scoring/store.py for why).
"""

from __future__ import annotations

from xray_spark.scoring.model import ModelRef, resolve_model
from xray_spark.scoring.run import ScoreSummary, score_command, score_folder

__all__ = ["ModelRef", "ScoreSummary", "resolve_model", "score_command", "score_folder"]
