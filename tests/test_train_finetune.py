"""`train --heads finetune`: the fine-tune is one more row of the comparison, measured on the same test fold
as the frozen heads and the metadata baseline, and it can be the champion (registered, served, scored)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import pytest

from conftest import isolate_mlflow
from xray_spark import paths
from xray_spark.config import load_config
from xray_spark.errors import UserError


def _cfg():
    cfg = load_config(local=None)
    ft = cfg.finetune
    ft.learning_rate, ft.batch_size, ft.unfreeze, ft.epochs = 1e-5, 8, 0, 1  # head only: fast on 2 cores
    ft.augment, ft.class_weights = False, False
    cfg.train.bootstrap_resamples = 200
    return cfg


def test_heads_option_accepts_finetune_and_rejects_typos(tmp_path: Path) -> None:
    from xray_spark.train.options import resolve_train_options

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "x.png").write_bytes(b"x")
    args = argparse.Namespace(data=str(tmp_path / "data"), out=str(tmp_path / "o"), backbones="ResNet50",
                              heads="lr,FineTune", tasks=None, weights="none")
    assert resolve_train_options(args, load_config(local=None)).heads == ["lr", "finetune"]
    args.heads = "lr,fine-tune"
    with pytest.raises(UserError, match="unknown head 'fine-tune'.*finetune"):
        resolve_train_options(args, load_config(local=None))


@pytest.fixture(scope="module")
def finetune_champion(spark, small_ingest: Path, weights_cache, tmp_path_factory: pytest.TempPathFactory):
    """`train --heads finetune` alone: the fine-tune is the only image model, so it must become champion.
    Over 60 s (~2-4 min): a whole train run whose one head fine-tunes ResNet50 in two TensorFlow processes."""
    from xray_spark.train.run import TrainSpec, run_training

    out = tmp_path_factory.mktemp("train_finetune")
    with pytest.MonkeyPatch.context() as mp:
        isolate_mlflow(mp)
        result = run_training(spark, _cfg(), TrainSpec(data=str(small_ingest), out_dir=str(out),
                                                       backbones=["ResNet50"], heads=["finetune"],
                                                       tasks=["binary"], weights="none"))
        import mlflow

        yield result, out, mlflow.get_tracking_uri()


def test_finetune_row_sits_beside_the_baseline_with_intervals(finetune_champion) -> None:
    result, out, _ = finetune_champion
    table = result.comparison
    row = table[(table["head"] == "finetune")].iloc[0]
    assert row["kind"] == "image" and row["head_title"] == "Fine-tuned end to end" and row["n_test"] > 0
    for key in ("accuracy", "macro_f1"):
        assert row[f"{key}_ci_low"] <= row[key] <= row[f"{key}_ci_high"], key
    baseline = table[table["kind"] == "metadata-baseline"]
    assert list(baseline["head"]) == ["lr"] and int(baseline.iloc[0]["n_test"]) == int(row["n_test"])
    csv = pd.read_csv(out / "comparison.csv")
    assert "finetune" in set(csv["head"])
    report = (out / "report.md").read_text()
    assert "Fine-tuned end to end" in report and "early stopping on one train fold" in report
    assert "random initialisation" in report  # --weights none said plainly
    assert (out / "plots" / "confusion_binary_ResNet50_finetune.png").is_file()
    assert result.seconds["finetune_ResNet50"] > 0 and "featurize_ResNet50" not in result.seconds


def test_finetune_run_logs_history_keras_model_and_its_own_pinned_weights(finetune_champion) -> None:
    import mlflow
    from mlflow import MlflowClient

    result, _, _ = finetune_champion
    run_id = result.comparison.set_index("head").loc["finetune", "run_id"]
    client = MlflowClient()
    run = client.get_run(run_id)
    assert run.data.tags["mlflow.parentRunId"] == result.parent_run_id
    assert [m.step for m in client.get_metric_history(run_id, "loss")] == [1]
    assert run.data.params["head"] == "finetune" and run.data.params["head.epochs_run"] == "1"
    assert "random weights" in run.data.tags["note"]
    assert {"model", "weights", "plots"} <= {a.path for a in client.list_artifacts(run_id)}
    logged = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id], output_format="list",
                                         filter_string=f"source_run_id = '{run_id}'")
    assert "keras_model" in {m.name for m in logged}  # the Keras flavor beside the Spark model
    carried = client.list_artifacts(run_id, "weights/ResNet50")
    assert [a.path.rsplit("/", 1)[1] for a in carried] == [run.data.params["weights_sha256"]]
    # its own (fine-tuned) tensors, not the run's random-init backbone
    assert "finetuned" in client.list_artifacts(run_id, carried[0].path)[0].path


def test_finetuned_champion_is_registered_served_and_scored(finetune_champion, spark, small_data: Path,
                                                           tmp_path: Path) -> None:
    import mlflow.spark
    from mlflow import MlflowClient

    from xray_spark.models.serving_bundle import load_bundle
    from xray_spark.models.serving_mlflow import bundle_for_model
    from xray_spark.serving.predictor import Predictor

    result, out, tracking_uri = finetune_champion
    champ = result.champions["binary"]
    assert champ["head"] == "finetune" and champ["backbone"] == "ResNet50"
    client = MlflowClient(tracking_uri)
    mv = client.get_model_version_by_alias(champ["name"], "champion")
    assert mv.run_id == result.comparison.set_index("head").loc["finetune", "run_id"]
    assert champ.get("baseline_uri")  # the metadata baseline is linked, for `evaluate` on other data
    assert (out / "finetune" / "binary-ResNet50" / "checkpoints" / "state.json").is_file()
    # the champion's Spark model and its Spark-free serving bundle (built from the fine-tuned weights, not
    # the run's random-init backbone) predict the same
    files = sorted(small_data.rglob("*.png"))[:4]
    frame = spark.read.format("binaryFile").load([str(f) for f in files])
    scored = mlflow.spark.load_model(f"models:/{champ['name']}/{mv.version}").transform(frame)
    rows = scored.select("path", "predicted_label", "probability").collect()
    predictor = Predictor(load_bundle(bundle_for_model(champ["uri"], tracking_uri,
                                                       cache_dir=tmp_path / "serving")))
    assert len(rows) == len(files)
    for r in rows:
        got = predictor.predict(Path(paths.local_path(r["path"])).read_bytes())
        assert got.label == r["predicted_label"]
        spark_p = dict(zip(("no_findings", "covid"), r["probability"].toArray(), strict=True))
        assert max(abs(got.probabilities[k] - v) for k, v in spark_p.items()) < 1e-4
