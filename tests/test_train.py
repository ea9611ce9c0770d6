"""`train` end to end on real images: MLflow runs, comparison table, champions that load and predict."""

from __future__ import annotations

import shutil
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from conftest import copy_subset
from xray_spark.train.tasks import TASKS

IMAGE_RUNS = 1 * 2 * 2  # backbones x heads x tasks
REQUIRED_METRICS = [
    "accuracy", "covid_precision", "covid_recall", "covid_f1", "macro_f1", "roc_auc_macro", "brier", "ece",
    "accuracy_ci_low", "accuracy_ci_high", "covid_recall_ci_low", "covid_recall_ci_high", "macro_f1_ci_low",
    "macro_f1_ci_high", "fit_seconds", "featurize_seconds",
]


def _runs(trained) -> pd.DataFrame:
    mlflow.set_tracking_uri(trained.tracking_uri)
    return mlflow.search_runs(experiment_names=["xray-spark"])


def test_nested_runs_with_metrics_params_and_artifacts(trained) -> None:
    runs = _runs(trained)
    children = runs[runs["tags.mlflow.parentRunId"] == trained.parent_run_id]
    image = children[children["tags.kind"] == "image"]
    baseline = children[children["tags.kind"] == "metadata-baseline"]
    assert len(image) == IMAGE_RUNS and len(baseline) == 2 * 2
    for m in REQUIRED_METRICS:
        assert image[f"metrics.{m}"].notna().all(), m
    for p in ["backbone", "head", "task", "weights_fingerprint", "split_hash", "dataset_manifest_hash", "split_seed"]:
        assert image[f"params.{p}"].notna().all(), p
    assert (image["params.weights_fingerprint"].str.startswith("none:")).all()
    client = mlflow.MlflowClient()
    arts = {a.path for a in client.list_artifacts(image.iloc[0]["run_id"])}
    assert {"plots", "confusion.csv"} <= arts
    parent_arts = {a.path for a in client.list_artifacts(trained.parent_run_id, "comparison")}
    assert {"comparison/comparison.csv", "comparison/report.md", "comparison/comparison.png"} <= parent_arts


def test_comparison_table_has_intervals_and_baseline(trained) -> None:
    table = pd.read_csv(trained.files["comparison.csv"])
    assert len(table) == IMAGE_RUNS + 4
    assert {"accuracy_ci_low", "accuracy_ci_high", "covid_recall_ci_low", "macro_f1_ci_high"} <= set(table.columns)
    assert (table["accuracy_ci_low"] <= table["accuracy"]).all() and (table["accuracy"] <= table["accuracy_ci_high"]).all()
    assert set(table["kind"]) == {"image", "metadata-baseline"}
    report = Path(trained.files["report.md"]).read_text()
    assert "metadata" in report.lower() and "Precision (COVID)" in report


def test_champions_registered_load_and_predict_new_images(trained, spark, ozturk_dir: Path, tmp_path: Path) -> None:
    import mlflow.spark
    from pyspark.sql import functions as F

    new = copy_subset(ozturk_dir, tmp_path / "new", per_class=2, offset=100)  # not in the training subset
    shutil.copy(next((new / "covid").iterdir()), tmp_path / "spare.bin")
    mlflow.set_tracking_uri(trained.tracking_uri)
    mlflow.set_registry_uri(trained.tracking_uri)
    client = mlflow.MlflowClient()
    for task in ("binary", "multiclass"):
        mv = client.get_model_version_by_alias(f"xray-spark-{task}", "champion")
        assert str(mv.version) == trained.champions[task]["version"] == "1"  # a fresh store: nothing before
        model = mlflow.spark.load_model(f"models:/xray-spark-{task}@champion")
        df = spark.read.format("binaryFile").option("recursiveFileLookup", "true").load(str(new))
        pred = model.transform(df).select("path", "predicted_label", "probability").toPandas()
        assert len(pred) == 6
        assert set(pred["predicted_label"]) <= set(TASKS[task].labels)
        assert pred["probability"].map(lambda v: abs(sum(v.toArray()) - 1) < 1e-6).all()
        assert df.where(F.col("length") > 0).count() == 6


@pytest.mark.parametrize("flag, value", [("--heads", "lr,xgboost"), ("--backbones", "ResNet51"), ("--tasks", "ternary")])
def test_unknown_names_exit_2(small_data: Path, tmp_path: Path, flag: str, value: str) -> None:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "xray_spark", "train", "--data", str(small_data), "--out",
                           str(tmp_path / "o"), "--weights", "none", flag, value], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert value.split(",")[-1] in proc.stderr
