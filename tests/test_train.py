"""`train` end to end on real images: MLflow runs, comparison table, champions that load and predict."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd
import pytest

from conftest import copy_subset, isolate_mlflow
from xray_spark.tasks import TASKS

IMAGE_RUNS = 1 * 2 * 2  # backbones x heads x tasks
REQUIRED_METRICS = [
    "accuracy", "covid_precision", "covid_recall", "covid_f1", "macro_f1", "roc_auc_macro", "brier", "ece",
    "accuracy_ci_low", "accuracy_ci_high", "covid_recall_ci_low", "covid_recall_ci_high", "macro_f1_ci_low",
    "macro_f1_ci_high", "fit_seconds", "featurize_seconds",
]


def _runs(trained, monkeypatch) -> pd.DataFrame:
    isolate_mlflow(monkeypatch)  # set_tracking_uri exports MLFLOW_TRACKING_URI: undone after the test
    mlflow.set_tracking_uri(trained.tracking_uri)
    return mlflow.search_runs(experiment_names=["xray-spark"])


def test_nested_runs_with_metrics_params_and_artifacts(trained, monkeypatch) -> None:
    runs = _runs(trained, monkeypatch)
    children = runs[runs["tags.mlflow.parentRunId"] == trained.parent_run_id]
    image = children[children["tags.kind"] == "image"]
    baseline = children[children["tags.kind"] == "metadata-baseline"]
    assert len(image) == IMAGE_RUNS and len(baseline) == 2 * 2
    for m in REQUIRED_METRICS:
        assert image[f"metrics.{m}"].notna().all(), m
    for p in ["backbone", "head", "task", "weights_fingerprint", "split_hash", "dataset_manifest_hash",
              "split_seed"]:
        assert image[f"params.{p}"].notna().all(), p
    assert (image["params.weights_fingerprint"].str.startswith("none:")).all()
    client = mlflow.MlflowClient()
    arts = {a.path for a in client.list_artifacts(image.iloc[0]["run_id"])}
    assert {"plots", "confusion.csv"} <= arts
    parent_arts = {a.path for a in client.list_artifacts(trained.parent_run_id, "comparison")}
    assert {"comparison/comparison.csv", "comparison/report.md", "comparison/comparison.png"} <= parent_arts
    # the run's copy of report.md is the finished one, with the sections added after the table (int8, ...)
    logged = Path(mlflow.artifacts.download_artifacts(run_id=trained.parent_run_id,
                                                      artifact_path="comparison/report.md"))
    assert logged.read_text() == Path(trained.files["report.md"]).read_text()


def test_comparison_table_has_intervals_and_baseline(trained) -> None:
    from xray_spark.train.report import baseline_comparison, format_reference_table

    table = pd.read_csv(trained.files["comparison.csv"])
    assert len(table) == IMAGE_RUNS + 4
    assert ({"accuracy_ci_low", "accuracy_ci_high", "covid_recall_ci_low", "macro_f1_ci_high"}
            <= set(table.columns))
    assert ((table["accuracy_ci_low"] <= table["accuracy"]).all()
            and (table["accuracy"] <= table["accuracy_ci_high"]).all())
    assert set(table["kind"]) == {"image", "metadata-baseline"}
    report = Path(trained.files["report.md"]).read_text()
    # the shortcut verdict and every model's row, computed from this run
    for task in ("binary", "multiclass"):
        assert baseline_comparison(trained.comparison, task, "macro_f1") in report
        # [2:-1]: without header, rule ... sample line
        rows = format_reference_table(trained.comparison, task).splitlines()[2:-1]
        assert len(rows) == len(trained.comparison.query("task == @task"))
        for line in rows:  # the same cells in report.md's table
            assert "| " + " | ".join(c.strip() for c in line.split(" | ")) + " |" in report, line
    assert "random initialisation" in report and "GPU" not in report  # says what was run, nothing invented
    for r in trained.comparison.query("kind == 'image'").itertuples():
        assert f"### {r.task}/{r.backbone}/{r.head}" in report  # a confusion matrix per image model


def test_every_image_head_is_calibrated_out_of_fold_and_each_champion_has_its_diagram(trained, spark,
                                                                                      evidence) -> None:
    """The temperature of every image head was fitted on exactly the task's training rows (each predicted
    out of fold), never the test split; report.md and each champion's run show ECE before and after and the
    reliability diagram."""
    table = trained.comparison
    image, baseline = table[table["kind"] == "image"], table[table["kind"] == "metadata-baseline"]
    images = spark.read.parquet(f"{trained.ingest_dir}/images").where("status = 'ok'")
    for r in image.itertuples():
        n_train = images.where("split = 'train'").where(images.label.isin(list(TASKS[r.task].labels))).count()
        assert r.calibration_n == n_train and r.temperature > 0, r
        assert 0 <= r.ece_uncalibrated <= 1 and 0 <= r.ece <= 1 and r.n_test + n_train == images.where(
            images.label.isin(list(TASKS[r.task].labels))).count()
    assert baseline["temperature"].isna().all()  # the shortcut baseline is compared on accuracy only
    report = Path(trained.files["report.md"]).read_text()
    section = report.split("## Calibration (champions)")[1]
    assert "| ECE before | ECE after |" in section and "never on the test split" in report
    out = Path(trained.files["report.md"]).parent
    # the registry too: without it the client takes MLflow's process-wide registry URI, which a test run
    # earlier in the session may have pointed at its own store
    client = mlflow.MlflowClient(tracking_uri=trained.tracking_uri, registry_uri=trained.tracking_uri)
    for task, champ in trained.champions.items():
        png = out / "plots" / f"reliability_{task}_{champ['backbone']}_{champ['head']}.png"
        assert png.stat().st_size > 1000 and f"](plots/{png.name})" in section
        row = image[(image["task"] == task) & (image["head"] == champ["head"])].iloc[0]
        assert f"| {row.temperature:.2f} | {int(row.calibration_n)} out-of-fold training images |" in section
        run_id = client.get_model_version(champ["name"], champ["version"]).run_id
        assert f"plots/{png.name}" in {a.path for a in client.list_artifacts(run_id, "plots")}
        metrics = client.get_run(run_id).data.metrics
        assert metrics["temperature"] == pytest.approx(row.temperature)
        assert metrics["ece_uncalibrated"] == pytest.approx(row.ece_uncalibrated)
    for r in image.itertuples():
        evidence(f"calibration {r.task}/{r.head}: temperature {r.temperature:.2f} from "
                 f"{int(r.calibration_n)} out-of-fold rows in {r.calibration_seconds:.1f}s (head fit "
                 f"{r.fit_seconds:.1f}s); test ECE {r.ece_uncalibrated:.3f} -> {r.ece:.3f}, Brier "
                 f"{r.brier_uncalibrated:.3f} -> {r.brier:.3f} (n={int(r.n_test)})")
    assert "comparison/plots" in {a.path for a in client.list_artifacts(trained.parent_run_id, "comparison")}


def test_champion_is_the_best_image_row_per_task(trained) -> None:
    table = pd.read_csv(trained.files["comparison.csv"])
    for task, champ in trained.champions.items():
        rows = table[(table["task"] == task) & (table["kind"] == "image")]
        best = rows.sort_values(["macro_f1", "accuracy"], ascending=False).iloc[0]
        assert (champ["backbone"], champ["head"]) == (best["backbone"], best["head"])
        assert float(champ["macro_f1"]) == pytest.approx(best["macro_f1"], abs=1e-4)


def test_champion_rows_rank_nan_last_and_ignore_the_baseline() -> None:
    from xray_spark.train.compare import champion_rows

    rows = [
        {"task": "binary", "kind": "image", "head": "lr", "macro_f1": float("nan"), "accuracy": 0.9},
        {"task": "binary", "kind": "image", "head": "dt", "macro_f1": 0.5, "accuracy": 0.6},
        {"task": "binary", "kind": "image", "head": "rf", "macro_f1": 0.5, "accuracy": 0.7},
        {"task": "binary", "kind": "metadata-baseline", "head": "lr", "macro_f1": 0.99, "accuracy": 0.99},
        {"task": "multiclass", "kind": "metadata-baseline", "head": "lr", "macro_f1": 0.4, "accuracy": 0.4},
    ]
    best = champion_rows(rows, ["binary", "multiclass"], "macro_f1")
    assert list(best) == ["binary"] and best["binary"]["head"] == "rf"  # tie on macro F1 -> higher accuracy


def test_champions_registered_load_and_predict_new_images(trained, spark, ozturk_dir: Path,
                                                          tmp_path: Path, monkeypatch) -> None:
    import mlflow.spark

    new = copy_subset(ozturk_dir, tmp_path / "new", per_class=2, offset=100)  # not in the training subset
    isolate_mlflow(monkeypatch)  # the global URIs set below are undone after the test
    # a machine that never saw the training run's weights cache: the model carries its weights (pinned)
    monkeypatch.setenv("XRAY_SPARK_CACHE", str(tmp_path / "fresh-cache"))
    mlflow.set_tracking_uri(trained.tracking_uri)
    mlflow.set_registry_uri(trained.tracking_uri)
    client = mlflow.MlflowClient()
    for task in ("binary", "multiclass"):
        mv = client.get_model_version_by_alias(f"xray-spark-{task}", "champion")
        assert str(mv.version) == trained.champions[task]["version"] == "1"  # a fresh store: nothing before
        model = mlflow.spark.load_model(f"models:/xray-spark-{task}@champion")
        assert [type(s).__name__ for s in model.stages[:3]] == ["FileProperties", "DeepImageFeaturizer",
                                                                "ShiftModel"]
        head_stages = model.stages[3].stages  # the fitted head, then the temperature fitted out of fold
        assert type(head_stages[-1]).__name__ == "TemperatureScalingModel"
        assert head_stages[-1].getTemperature() == pytest.approx(float(client.get_run(mv.run_id).data
                                                                       .metrics["temperature"]))
        featurizer = model.stages[1]
        pin = featurizer.getWeightsSha256()
        assert pin and pin == client.get_run(mv.run_id).data.params["weights_sha256"]
        assert f"/weights/ResNet50/{pin}/" in featurizer.getWeights(), featurizer.getWeights()
        df = spark.read.format("binaryFile").option("recursiveFileLookup", "true").load(str(new))
        pred = model.transform(df).select("path", "predicted_label", "probability", "shift_score",
                                          "in_distribution").toPandas()
        assert len(pred) == 6 and pred["shift_score"].notna().all() and pred["in_distribution"].notna().all()
        metrics = client.get_run(mv.run_id).data.metrics
        assert metrics["shift_threshold"] > 0 and 0 <= metrics["shift_flagged_internal_test"] <= 1
        labels = TASKS[task].labels
        assert pred["probability"].map(lambda v: abs(sum(v.toArray()) - 1) < 1e-6).all()
        # the label decode stage names the most probable class, in the task's label order
        argmax = pred["probability"].map(lambda v, names=labels: names[int(v.toArray().argmax())])
        assert (pred["predicted_label"] == argmax).all()
    assert not (tmp_path / "fresh-cache" / "none").exists()  # the seeded init was not rebuilt here


@pytest.mark.parametrize("flag, value", [("--heads", "lr,xgboost"), ("--backbones", "ResNet51"),
                                         ("--tasks", "ternary"), ("--out", "dbfs:/runs/train")])
@pytest.mark.e2e
def test_unknown_names_exit_2(small_data: Path, tmp_path: Path, flag: str, value: str) -> None:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "xray_spark", "train", "--data", str(small_data), "--out",
                           str(tmp_path / "o"), "--weights", "none", flag, value], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert value.split(",")[-1] in proc.stderr
    assert not (tmp_path / "o").exists() and not Path("dbfs:").exists()  # nothing written before the check
