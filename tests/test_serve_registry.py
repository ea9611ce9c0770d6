"""`train` logs each champion's Spark-free serving bundle beside its Spark model: found again from the
registry without Spark, identical to the Spark model's predictions, and served by `mlflow models serve`.
Real Spark, MLflow (sqlite) and the shared `trained` run (ResNet50 random init)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import mlflow.pyfunc
import mlflow.spark
import numpy as np
import pandas as pd
import pytest

from conftest import auto_engine_atol, isolate_mlflow
from serve_utils import free_port, predict, wait_up
from xray_spark.errors import UserError
from xray_spark.models.serving_bundle import load_bundle
from xray_spark.models.serving_mlflow import bundle_for_model
from xray_spark.serving.predictor import Predictor
from xray_spark.tracking import SERVING_TAG

N_IMAGES = 6


@pytest.fixture(scope="module")
def images(raw_sample_dir: Path) -> list[Path]:
    files = sorted(p for p in raw_sample_dir.rglob("*") if p.suffix.lower() in {".png", ".jpg", ".jpeg"})
    return [files[i] for i in np.linspace(0, len(files) - 1, N_IMAGES).round().astype(int)]


@pytest.fixture(scope="module")
def spark_predictions(spark, trained, images) -> pd.DataFrame:
    """The registered Spark champion's own predictions for the images: what serving must reproduce."""
    mp = pytest.MonkeyPatch()
    isolate_mlflow(mp)
    try:
        mlflow.set_tracking_uri(trained.tracking_uri)
        mlflow.set_registry_uri(trained.tracking_uri)  # else an earlier module's registry may linger
        model = mlflow.spark.load_model(trained.champions["binary"]["uri"])
        df = spark.createDataFrame([(p.name, p.read_bytes()) for p in images], "name string, content binary")
        return model.transform(df).select("name", "predicted_label", "probability", "shift_score",
                                          "in_distribution").toPandas()
    finally:
        mp.undo()


def test_champion_links_its_serving_twin(trained, monkeypatch) -> None:
    isolate_mlflow(monkeypatch)
    client = mlflow.MlflowClient(tracking_uri=trained.tracking_uri, registry_uri=trained.tracking_uri)
    for task, champ in trained.champions.items():
        link = client.get_model_version(champ["name"], champ["version"]).tags[SERVING_TAG]
        twin = client.get_model_version_by_alias(f"{champ['name']}-serving", "champion")
        assert champ["serving_uri"] == f"models:/{champ['name']}-serving@champion", task
        assert twin.source == link or link.endswith(twin.source.rsplit("/", 1)[-1]), (twin.source, link)


def _assert_same_shift(served, spark_row: pd.Series, threshold: float, name: str) -> None:
    """The served shift check against the Spark ShiftModel's columns. The features may differ by engine (bf16
    where the CPU has it: auto_engine_atol), and the feature signals move with them, so the score is
    compared with a relative tolerance and the verdict exactly only away from the threshold."""
    rel = 1e-3 if auto_engine_atol() <= 1e-4 else 5e-2
    assert served.score is not None and spark_row["shift_score"] is not None, name
    assert served.score == pytest.approx(float(spark_row["shift_score"]), rel=rel, abs=1e-6), name
    if abs(served.score - threshold) > 2 * rel * max(threshold, 1e-6):
        assert served.in_distribution == bool(spark_row["in_distribution"]), name
    assert served.in_distribution or served.reasons, name  # a flagged image always says why


def test_bundle_from_the_registry_predicts_what_spark_predicts(trained, images, spark_predictions, tmp_path,
                                                               monkeypatch, evidence) -> None:
    isolate_mlflow(monkeypatch)
    folder = bundle_for_model(trained.champions["binary"]["uri"], trained.tracking_uri, cache_dir=tmp_path)
    bundle = load_bundle(folder)
    assert bundle.meta.model_name == "xray-spark-binary" and bundle.meta.model_version == "1"
    assert bundle.meta.baseline_as_good in (True, False)  # the training report's verdict travels with it
    assert bundle.shift is not None  # the champion's ShiftModel reference travels with the bundle
    predictor = Predictor(bundle)
    by_name = spark_predictions.set_index("name")
    shift_scores = []
    for path in images:
        served = predictor.predict(path.read_bytes())
        expected = by_name.loc[path.name]
        assert served.label == expected["predicted_label"], path.name
        spark_proba = expected["probability"].toArray()
        served_proba = np.array([served.probabilities[lab] for lab in bundle.labels])
        assert np.abs(served_proba - spark_proba).max() < 1e-4, path.name
        _assert_same_shift(served.shift, expected, bundle.shift.threshold, path.name)
        shift_scores.append(served.shift.score)
    evidence(f"serve shift parity: {len(images)} raw-sample images, shift scores "
             f"{', '.join(f'{s:.2f}' for s in shift_scores)} (threshold {bundle.shift.threshold:.2f})")
    # found again from the cache (by name and version), and through the twin's own URI: the same bundle
    assert bundle_for_model(trained.champions["binary"]["uri"], trained.tracking_uri, cache_dir=tmp_path
                            ) == folder
    twin = load_bundle(bundle_for_model("models:/xray-spark-binary-serving@champion", trained.tracking_uri,
                                        cache_dir=tmp_path))
    assert twin.folder != folder and twin.meta == bundle.meta
    assert twin.weights_fingerprint == bundle.weights_fingerprint
    with pytest.raises(UserError, match="nope"):
        bundle_for_model("models:/nope@champion", trained.tracking_uri, cache_dir=tmp_path)


@pytest.mark.e2e
def test_mlflow_models_serve_answers_with_the_twin(trained, images, spark_predictions, tmp_path) -> None:
    """`mlflow models serve -m models:/<name>-serving@champion` (no Spark): same labels, and a file that is
    not an image comes back as a row with the decoder's reason."""
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": trained.tracking_uri,
           "MLFLOW_REGISTRY_URI": trained.tracking_uri,  # and the venv's uvicorn, as in an activated venv
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m",
                             "models:/xray-spark-binary-serving@champion", "--env-manager", "local",
                             "--host", "127.0.0.1", "-p", str(port)], env=env, stdout=log, stderr=log)
    try:
        deadline = time.time() + 300
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            tail = (tmp_path / "serve.log").read_text()[-3000:]
            assert proc.poll() is None and time.time() < deadline, tail
            time.sleep(2)
        rows = [[base64.b64encode(p.read_bytes()).decode()] for p in images]
        rows.append([base64.b64encode(b"not an image at all").decode()])
        body = json.dumps({"dataframe_split": {"columns": ["content"], "data": rows}}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=300) as r:
            out = pd.DataFrame(json.loads(r.read())["predictions"])
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    expected = spark_predictions.set_index("name").loc[[p.name for p in images], "predicted_label"].tolist()
    assert out["predicted_label"].iloc[:N_IMAGES].tolist() == expected
    assert out["error"].iloc[:N_IMAGES].isna().all()
    assert out["predicted_label"].iloc[N_IMAGES] is None
    assert out["error"].iloc[N_IMAGES].startswith("not_an_image:"), out["error"].iloc[N_IMAGES]
    assert "prob_covid" in out.columns
    spark_shift = spark_predictions.set_index("name").loc[[p.name for p in images], "shift_score"].to_numpy()
    assert np.allclose(out["shift_score"].iloc[:N_IMAGES].astype(float), spark_shift.astype(float), rtol=5e-2)
    assert pd.isna(out["shift_score"].iloc[N_IMAGES])


@pytest.mark.e2e
def test_cli_serve_model_uri_answers_like_spark(trained, images, spark_predictions, tmp_path) -> None:
    """`xray-spark serve --model models:/NAME@champion`: the champion's bundle from the registry, served."""
    port = free_port()
    log_path = tmp_path / "serve.log"
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    env["XRAY_SPARK_CACHE"] = str(tmp_path)  # the bundle is downloaded into this folder; --tracking-uri only
    proc = subprocess.Popen([sys.executable, "-m", "xray_spark", "serve", "--model",
                             trained.champions["binary"]["uri"], "--tracking-uri", trained.tracking_uri,
                             "--port", str(port), "--threads", "1"],
                            stdout=log_path.open("wb"), stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_up(base, proc, log_path)
        answers = [predict(base, p.read_bytes()).json() for p in images[:2]]
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    by_name = spark_predictions.set_index("name")
    assert [a["label"] for a in answers] == [by_name.loc[p.name, "predicted_label"] for p in images[:2]]
    assert {(a["model_name"], a["model_version"]) for a in answers} == {("xray-spark-binary", "1")}

