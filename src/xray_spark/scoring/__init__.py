"""Scheduled batch scoring: incremental, exactly once per (model version, image content).

- `store`  the output folder: it is also the ledger of what was scored; atomic one-file-per-chunk commits;
- `plan`   which files of the input folder still need scoring (by content sha256);
- `lease`  one scoring run per (output, model) at a time;
- `run`    the chunk loop, the run summary and the CLI entry `score_command`.

Which model scores (resolving its URI, loading it, splitting it around the featurizer) is models/loading.py,
shared with `xray-spark evaluate`; `ModelRef` and `resolve_model` are exported here too.

Floor 7 of DESIGN.md's floors (beside `serving`): may import the core, `data`, `features` and `models`.
"""

from xray_spark.models.loading import ModelRef, resolve_model
from xray_spark.scoring.run import ScoreSummary, score_command, score_folder

__all__ = ["ModelRef", "ScoreSummary", "resolve_model", "score_command", "score_folder"]
