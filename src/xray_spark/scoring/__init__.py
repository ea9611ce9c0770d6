"""Scheduled batch scoring: incremental, exactly once per (model version, image content).

- `model`  resolve a model URI (before Spark starts) and split the loaded PipelineModel around the featurizer;
- `store`  the output folder: it is also the ledger of what was scored; atomic one-file-per-chunk commits;
- `plan`   which files of the input folder still need scoring (by content sha256);
- `run`    the chunk loop, the run summary and the CLI entry `score_command`.
"""

from xray_spark.scoring.model import ModelRef, resolve_model
from xray_spark.scoring.run import ScoreSummary, score_command, score_folder

__all__ = ["ModelRef", "ScoreSummary", "resolve_model", "score_command", "score_folder"]
