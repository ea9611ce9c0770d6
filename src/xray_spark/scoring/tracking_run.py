"""A scoring run in MLflow: its counts and its drift as the metrics of one run.

Why: a scheduled run's summary lands in a log nobody reads, while the drift of run after run (the share of
images unlike the training images, the PSI of each file property and top feature component) is what shows
the day a new scanner or export pipeline arrived. So every `score` that scored or quarantined files logs one
run in the experiment `xray-spark-scoring` of the store the model came from, tagged with the model. An idle
run (nothing new: a 5-minute cron on a quiet folder) logs nothing, or the store would fill with empty runs.

Which store: the one `train` and the model lookup use (`--tracking-uri` > config `tracking_uri` >
MLFLOW_TRACKING_URI); for a model given as a folder with none of these, nothing is logged (a cron job must
not create ./mlruns where it happens to start). Logging is information, not part of the commit: the
predictions are already committed when it runs, so a store that fails here is a warning, never a failed run
that the next schedule would repeat.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

from xray_spark.tracking import finite_metrics, point_at, tracking_uri_for

if TYPE_CHECKING:
    from xray_spark.scoring.run import ScoreSummary

log = logging.getLogger(__name__)

EXPERIMENT = "xray-spark-scoring"


def score_metrics(summary: ScoreSummary) -> dict[str, float]:
    """The run's numbers for MLflow: the reconciled counts, throughput, and the drift metrics as
    `drift/<name>` (models/drift.py: flagged_share, psi_<property>, psi_component_<k>, z_<size>)."""
    out: dict[str, float] = {
        "files_seen": summary.files_seen, "newly_scored": summary.newly_scored,
        "quarantined": summary.quarantined, "skipped": summary.skipped, "too_recent": summary.too_recent,
        "retry_later": summary.retry_later, "chunks": summary.chunks, "seconds": summary.seconds,
    }
    if summary.drift is not None:
        out["drift/images"] = summary.drift_n
        out.update({f"drift/{k}": v for k, v in summary.drift.metrics.items()})
        out["drift/moved"] = len(summary.drift.moved)
    return finite_metrics({k: (math.nan if v is None else v) for k, v in out.items()})


def tracking_store(config_uri: str | None, model_kind: str) -> str | None:
    """The store this run logs to, or None: a store chosen by the user, else the one a registry/run model
    was looked up in (MLflow is pointed at it already), else none."""
    import mlflow  # lazy: a slow import that argument checks skip

    chosen = tracking_uri_for(None, config_uri, None)
    if chosen:
        return chosen
    return mlflow.get_tracking_uri() if model_kind in ("registry", "logged", "run") else None


def log_score_run(summary: ScoreSummary, config_uri: str | None, input_dir: str, output_dir: str
                  ) -> str | None:
    """Log one run for this scoring (see the module docstring); returns its run id, or None when nothing
    was logged (idle run, no store, or the store failed: one warning line)."""
    if summary.newly_scored + summary.quarantined == 0:
        return None
    store = tracking_store(config_uri, summary.model.kind)
    if store is None:
        log.info("score: no MLflow store chosen (--tracking-uri, config tracking_uri, MLFLOW_TRACKING_URI): "
                 "the run's counts and drift are not logged")
        return None
    import mlflow  # lazy: a slow import that argument checks skip

    ref = summary.model
    try:
        point_at(store)
        mlflow.set_experiment(EXPERIMENT)
        with mlflow.start_run(run_name=f"score {ref.name} v{ref.version}") as run:
            mlflow.set_tags({"model_name": ref.name, "model_version": ref.version, "model_uri": ref.uri,
                             "drift_moved": "; ".join(summary.drift.moved) if summary.drift else ""})
            mlflow.log_params({"input": input_dir, "output": output_dir})
            mlflow.log_metrics(score_metrics(summary))
            mlflow.log_text("\n".join(summary.lines()) + "\n", "score_summary.txt")
            return run.info.run_id
    except Exception as exc:  # the predictions are committed: a failing store must not fail the run
        log.warning("score: the run's counts and drift were not logged to MLflow at %s (%s: %s)", store,
                    type(exc).__name__, str(exc).strip()[:300])
        return None
