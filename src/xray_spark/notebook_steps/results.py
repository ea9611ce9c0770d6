"""Helpers behind notebooks/03_results.ipynb: runs, champions and confusion matrices read back from MLflow."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from xray_spark.config import load_config
from xray_spark.notebook_steps.common import _figure
from xray_spark.tracking import CHAMPION, EXPERIMENT, registered_name

_METRICS = ("accuracy", "accuracy_ci_low", "accuracy_ci_high", "macro_f1", "macro_f1_ci_low",
            "macro_f1_ci_high", "covid_recall", "roc_auc_macro", "n_test")


def runs_table(tracking_uri: str, experiment: str | None = None) -> pd.DataFrame:
    """Every trained combination in the experiment (nested runs tagged with `kind`), best first per task."""
    import mlflow  # lazy: mlflow is only needed when reading runs

    name = experiment or EXPERIMENT
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(name)
    if exp is None:
        raise ValueError(f"no MLflow experiment {name!r} at {tracking_uri}")
    runs = client.search_runs([exp.experiment_id], filter_string="tags.kind != ''", max_results=5000)
    rows: list[dict[str, Any]] = []
    for run in runs:
        tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
        rows.append({
            "task": tags.get("task"), "kind": tags.get("kind"), "backbone": tags.get("backbone"),
            "head": tags.get("head"), "weights": params.get("weights"),
            **{m: metrics.get(m, np.nan) for m in _METRICS},
            "run_id": run.info.run_id, "started": pd.to_datetime(run.info.start_time, unit="ms"),
        })
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    return (table.sort_values(["task", "macro_f1", "accuracy"], ascending=[True, False, False])
            .reset_index(drop=True))


def champions(tracking_uri: str, tasks: Sequence[str] = ("binary", "multiclass"),
              config: str | None = None) -> pd.DataFrame:
    """Per task: the registered model, the version its `champion` alias points at, and that version's run."""
    import mlflow  # lazy: mlflow is only needed when reading the registry

    prefix = load_config(config).train.registered_model_prefix
    client = mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    rows = []
    for task in tasks:
        name = registered_name(prefix, task)
        try:
            mv = client.get_model_version_by_alias(name, CHAMPION)
        except mlflow.exceptions.MlflowException as exc:
            rows.append({"task": task, "model": name, "version": None, "run_id": None,
                         "description": f"no champion: {str(exc).splitlines()[0]}"})
            continue
        rows.append({"task": task, "model": name, "version": mv.version, "run_id": mv.run_id,
                     "description": mv.description})
    return pd.DataFrame(rows)


def confusion_figure(tracking_uri: str, run_id: str, dest: str | Path) -> Figure:
    """Download the run's confusion-matrix PNG artifact (plots/*.png) into `dest` and show it."""
    import mlflow  # lazy: mlflow is only needed when reading run artifacts

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    pngs = [a.path for a in client.list_artifacts(run_id, "plots") if a.path.endswith(".png")]
    if not pngs:
        raise ValueError(f"run {run_id} has no PNG under plots/")
    local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=pngs[0], dst_path=str(dest),
                                                tracking_uri=tracking_uri)
    img = mpimg.imread(local)
    fig = _figure(figsize=(img.shape[1] / 100, img.shape[0] / 100))
    ax = fig.subplots()
    ax.imshow(img)
    ax.set_axis_off()
    return fig
