"""`evaluate`: a trained champion on another source's labelled folder (figure1), measured as `train` measures,
and in agreement with what `score` predicts for the same images. Real Spark, MLflow and the shared `trained`
run (ResNet50 random init)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import mlflow.spark
import numpy as np
import pandas as pd
import pytest
from pyspark.sql import functions as F

from conftest import isolate_mlflow, manifest_subset
from xray_spark.config import load_config
from xray_spark.evaluation.external import evaluate_model
from xray_spark.evaluation.reliability import calibration_line
from xray_spark.scoring import score_command

FIGURE1_COUNTS = {"covid": 10, "no_findings": 3, "pneumonia": 2}  # of figure1's 35, 3 and 2


@pytest.fixture(scope="module")
def figure1(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """figure1's No-findings and pneumonia images and its first 10 COVID ones, with their manifest rows:
    full-size originals, whose decode and features are what evaluating them costs (40 took ~30 s)."""
    folder = data_root / "figure1"
    if not (folder / "manifest.csv").is_file():
        pytest.fail(f"{folder}/manifest.csv missing: the shared data README promises figure1/")
    subset = tmp_path_factory.mktemp("figure1") / "figure1"
    manifest_subset(folder, subset, FIGURE1_COUNTS)
    return subset


def test_evaluate_counts_equal_what_score_predicts(spark, trained, figure1, tmp_path, monkeypatch, capsys,
                                                   evidence):
    isolate_mlflow(monkeypatch)
    champion = trained.champions["multiclass"]
    cfg = load_config(local=None)
    result = evaluate_model(spark, cfg, model=champion["uri"], data=str(figure1), out=str(tmp_path / "eval"),
                            tracking_uri=trained.tracking_uri)
    doc = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    counts = np.array(doc["confusion"]["counts"])
    assert doc["labels"] == ["covid", "no_findings", "pneumonia"] == doc["confusion"]["labels"]
    assert doc["n"] == result.n == counts.sum() == 15 and doc["excluded_labels"] == {}
    assert doc["accuracy"] == pytest.approx(np.trace(counts) / counts.sum())
    assert counts.sum(axis=1).tolist() == list(FIGURE1_COUNTS.values())  # every image evaluated
    assert doc["model"]["version"] == champion["version"]
    metrics = doc["metrics"]
    assert 0 <= metrics["accuracy_ci_low"] <= doc["accuracy"] <= metrics["accuracy_ci_high"] <= 1
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "95% interval" in report and "confusion.png" in report
    assert (tmp_path / "eval" / "confusion.png").stat().st_size > 1000
    # figure1's originals (~1000 px, mostly JPEG) are unlike the downscaled 320 px training copies
    shift = doc["shift"]
    assert shift == {k: (v if np.isfinite(v) else None) for k, v in result.shift.items()}
    assert shift["shift_n"] == result.n
    assert shift["shift_flagged"] >= 0.9 and shift["shift_auroc_vs_internal_test"] >= 0.9
    assert shift["shift_flagged_internal_test"] < shift["shift_flagged"]  # 7 test images, 29 training here
    assert "## Unlike the training images?" in report
    # the champion's calibration on this folder: its temperature from training, ECE with and without it
    calibration = doc["calibration"]
    assert calibration["temperature"] == pytest.approx(
        trained.comparison.query("task == 'multiclass' and kind == 'image' and head == @champion['head']")
        ["temperature"].iloc[0])
    assert calibration["ece"] == pytest.approx(metrics["ece"]) and 0 <= calibration["ece_uncalibrated"] <= 1
    assert "## Calibration on this folder" in report and "](reliability.png)" in report
    assert (tmp_path / "eval" / "reliability.png").stat().st_size > 1000
    assert any(line.startswith("calibration: ECE ") for line in result.lines())

    run = mlflow.MlflowClient(tracking_uri=trained.tracking_uri).get_run(result.run_id)
    assert run.data.tags["kind"] == "evaluation"
    assert (run.data.tags["model_name"], run.data.tags["model_version"]) == (champion["name"],
                                                                              champion["version"])
    assert run.data.tags["data_fingerprint"] == doc["data_fingerprint"]
    assert run.data.metrics["accuracy"] == pytest.approx(doc["accuracy"])
    assert run.data.metrics["ece_uncalibrated"] == pytest.approx(calibration["ece_uncalibrated"])

    # the same model and images through `score`: the same predictions, so the same confusion counts
    cfg.tracking_uri = trained.tracking_uri
    summary = score_command(lambda: spark, cfg, model=champion["uri"], input_dir=str(figure1),
                            output_dir=str(tmp_path / "scored"), min_age_seconds=0)
    lines = summary.lines()  # the run-level drift: what moved, named in one warning line
    flagged_line = next(line for line in lines if line.startswith("unlike the training images: "))
    assert f" of {summary.drift_n} (" in flagged_line and summary.drift.flagged_share >= 0.9
    warning = next(line for line in lines if line.startswith("shift warning: "))
    assert "typical short side" in warning and "in training" in warning, warning
    assert summary.drift.metrics["psi_format"] > 0.25  # figure1 is mostly JPEG
    assert summary.drift.metrics["psi_component_1"] >= 0  # and the top feature components' distances
    distances = next(line for line in lines if line.startswith("distance to the training images: PSI "))
    assert "; feature components #1 " in distances and "; robust z of the typical short side" in distances
    # ... and the same numbers in the run score logged beside the model (scoring/tracking_run.py)
    logged = mlflow.MlflowClient(tracking_uri=trained.tracking_uri).get_run(summary.mlflow_run_id)
    assert logged.data.metrics["drift/psi_format"] == pytest.approx(summary.drift.metrics["psi_format"])
    assert logged.data.metrics["drift/flagged_share"] == pytest.approx(summary.drift.flagged_share)
    assert logged.data.tags["drift_moved"] == "; ".join(summary.drift.moved)
    assert f"mlflow run: {summary.mlflow_run_id} (experiment xray-spark-scoring)" in lines
    evidence(f"figure1 subset: {calibration_line(result.calibration)}")
    for line in lines:  # the shift lines of score's summary
        if line.startswith(("unlike the training images", "distance to the training", "shift warning")):
            evidence(f"figure1 subset, score: {line}")
    scored = spark.read.parquet(str(tmp_path / "scored")).toPandas()
    ok = scored[scored["status"] == "ok"]
    assert 1 - ok["in_distribution"].mean() == pytest.approx(shift["shift_flagged"], abs=0.03)
    assert ok["shift_score"].notna().all()
    images = spark.read.parquet(str(tmp_path / "eval" / "ingest" / "images")).toPandas()
    images = images[images["status"] == "ok"].merge(scored[["sha256", "predicted_label"]], on="sha256")
    labels = doc["labels"]
    from_score = pd.crosstab(pd.Categorical(images["label"], labels),
                             pd.Categorical(images["predicted_label"], labels), dropna=False)
    assert from_score.to_numpy().tolist() == counts.tolist()
    assert capsys.readouterr().out == ""  # only cli.py prints

    # the training run's metadata-only baseline, beside the model on the same images
    base = doc["baseline"]
    base_counts = np.array(base["confusion"]["counts"])
    assert base["n"] == doc["n"] and base_counts.sum(axis=1).tolist() == list(FIGURE1_COUNTS.values())
    assert base["accuracy"] == pytest.approx(np.trace(base["confusion"]["counts"]) / base["n"])
    assert run.data.metrics["baseline/accuracy"] == pytest.approx(base["accuracy"])
    assert "## Metadata-only baseline of the same training run" in report
    client = mlflow.MlflowClient(tracking_uri=trained.tracking_uri, registry_uri=trained.tracking_uri)
    link = client.get_model_version(champion["name"], champion["version"]).tags["baseline_model_uri"]
    assert base["model_uri"] == link == champion["baseline_uri"]
    # it is the model `train` measured: on the training test split it reproduces the baseline row's accuracy
    mlflow.set_tracking_uri(trained.tracking_uri)
    model = mlflow.spark.load_model(link)
    test_split = (spark.read.parquet(f"{trained.ingest_dir}/images")
                  .where("status = 'ok' AND split = 'test'").where(F.col("label").isin(labels)))
    pred = model.transform(test_split).select("label", "predicted_label").toPandas()
    table = trained.comparison
    row = table[(table["task"] == "multiclass") & (table["kind"] == "metadata-baseline")
                & (table["head"] == champion["head"])].iloc[0]
    assert len(pred) == row["n_test"]
    assert (pred["label"] == pred["predicted_label"]).mean() == pytest.approx(row["accuracy"])


@pytest.mark.e2e
def test_cli_evaluate_with_classes_missing_and_labels_the_model_does_not_know(
        spark, trained, figure1, tmp_path, monkeypatch, capsys):
    """The binary champion on figure1's COVID and pneumonia images only: no No-findings image at all
    (metrics for the classes present, no crash), and pneumonia is not a class of the binary model. The
    whole command through the CLI's `main` on the shared session (what the console script calls; the exit
    codes of a separate process are checked by the test below)."""
    from xray_spark.cli import main

    isolate_mlflow(monkeypatch)
    data = tmp_path / "data"
    for label in ("covid", "pneumonia"):
        shutil.copytree(figure1 / label, data / label)
    out = tmp_path / "eval"
    code = main(["evaluate", "--model", trained.champions["binary"]["uri"], "--data", str(data), "--out",
                 str(out), "--tracking-uri", trained.tracking_uri])
    proc = capsys.readouterr()
    assert code == 0, proc.err[-3000:]
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["labels"] == ["no_findings", "covid"] and doc["n"] == 10
    assert doc["excluded_labels"] == {"pneumonia": 2}
    assert doc["confusion"]["counts"][0] == [0, 0]  # no No-findings images
    assert doc["metrics"]["covid_recall"] is not None
    assert "images evaluated: 10" in proc.out
    assert "not evaluated (label unknown to the model): pneumonia 2" in proc.out
    assert f"metadata-only baseline ({doc['baseline']['model_uri']}): accuracy" in proc.out
    assert "No images of no_findings" in (out / "report.md").read_text()


@pytest.mark.e2e
def test_cli_evaluate_unknown_model_is_exit_2_before_spark(trained, figure1, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "xray_spark", "evaluate", "--model", "models:/nope@champion",
                           "--data", str(figure1), "--out", str(tmp_path / "eval"),
                           "--tracking-uri", trained.tracking_uri],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and "nope" in proc.stderr
    assert not (tmp_path / "eval").exists()
    remote_out = subprocess.run([sys.executable, "-m", "xray_spark", "evaluate", "--model",
                                 "models:/x@champion", "--data", str(figure1), "--out", "dbfs:/reports/eval"],
                                capture_output=True, text=True, timeout=300)
    assert remote_out.returncode == 2 and "--out dbfs:/reports/eval" in remote_out.stderr
    assert len(remote_out.stderr.strip().splitlines()) == 1
