"""Fine-tuning across Spark barrier tasks: real local[2] Spark, real Keras/TensorFlow workers, real X-rays.

The integration tests share one ingest and one first run (module fixture): two workers, one epoch, ResNet50
from seeded random weights with only the head training (fast on 2 cores). The first run's exported
PipelineModel, its MLflow run and its registered version are checked against the Keras model it came from.
Last, the CLI continues that --out to 3 epochs and is SIGKILLed once it has checkpointed epoch 2 (driver and
JVM killed, the rest must exit on its own); a rerun must resume after epoch 2 rather than start over.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import auto_engine_atol, isolate_mlflow
from xray_spark import paths
from xray_spark.config import load_config
from xray_spark.data.decode import decode_for_model
from xray_spark.errors import ConfigError
from xray_spark.features.backbones import get_backbone
from xray_spark.finetune.augment import augment_one
from xray_spark.finetune.config import FinetuneConfig
from xray_spark.finetune.data import batch_indices, class_weights
from xray_spark.finetune.distributed import tf_config
from xray_spark.finetune.export import head_coefficients
from xray_spark.finetune.trainer import precision_policy

# ------------------------------------------------------------------------------------------- pure units


def test_config_section_defaults_and_validation(tmp_path: Path) -> None:
    cfg = load_config(local=None)
    ft = cfg.finetune
    assert (ft.optimizer, ft.learning_rate, ft.unfreeze) == ("adam", 3e-5, "all")
    bad = tmp_path / "bad.yml"
    bad.write_text("finetune:\n  unfreeze: some\n")
    with pytest.raises(ConfigError, match="finetune.unfreeze"):
        load_config(bad, local=None)
    bad.write_text("finetune:\n  flip: true\n")  # there is no flip setting: anatomy is not symmetric
    with pytest.raises(ConfigError, match="unknown config key 'finetune.flip'"):
        load_config(bad, local=None)
    ok = tmp_path / "ok.yml"
    ok.write_text("finetune:\n  unfreeze: 12\n")
    assert load_config(ok, local=None).finetune.unfreeze == 12


def test_run_key_covers_every_setting_but_epochs() -> None:
    """A rerun with other settings must not resume a checkpoint (its metrics would claim one setting)."""
    from xray_spark.finetune.run import run_key

    cfg = load_config(local=None)
    key = run_key("/x/shards-1", "ResNet50", "binary", "none:seed=0", cfg, 2)
    cfg.finetune.epochs += 5  # asking for more epochs is what a resume is for
    assert run_key("/x/shards-1", "ResNet50", "binary", "none:seed=0", cfg, 2) == key
    for change in ({"learning_rate": 1e-3}, {"augment": False}, {"seed": 8}, {"class_weights": False}):
        other = load_config(local=None)
        for name, value in change.items():
            setattr(other.finetune, name, value)
        assert run_key("/x/shards-1", "ResNet50", "binary", "none:seed=0", other, 2) != key, change


def test_more_workers_than_task_slots_is_one_clear_line(spark) -> None:
    """Spark would wait ~10 minutes for barrier slots that never come, then fail with a traceback."""
    from xray_spark.errors import UserError
    from xray_spark.finetune.run import _check_cluster

    _check_cluster(spark, spark.sparkContext.defaultParallelism)
    with pytest.raises(UserError, match="--workers 3 needs 3 concurrent task slots"):
        _check_cluster(spark, 3)


def test_precision_policy_bf16_only_where_native() -> None:
    assert precision_policy("auto", {"avx2"}) == "float32"
    assert precision_policy("auto", {"avx2", "amx_bf16"}) == "mixed_bfloat16"
    assert precision_policy("fp32", {"amx_bf16"}) == "float32"
    assert precision_policy("bf16", set()) == "mixed_bfloat16"


def test_tf_config_names_every_worker_in_rank_order() -> None:
    conf = tf_config(["h1:1", "h2:2"], 1)
    assert conf == {"cluster": {"worker": ["h1:1", "h2:2"]}, "task": {"type": "worker", "index": 1}}


class _FakeModel:
    """What Checkpoints.save needs of a Keras model: save_weights writes a file (here: a label)."""

    def __init__(self) -> None:
        self.label = ""

    def save_weights(self, path: str) -> None:
        Path(path).write_text(self.label)


def test_checkpoints_name_the_best_epoch_and_ignore_a_best_file_no_state_records(tmp_path: Path) -> None:
    from xray_spark.finetune.checkpoints import Checkpoints

    ckpt, model = Checkpoints(tmp_path, chief=True), _FakeModel()
    for epoch, best in ((1, True), (2, False)):
        model.label = f"after {epoch}"
        ckpt.save(model, {"epoch": epoch}, best=best)
    state = ckpt.state()
    assert state["weights"] == "epoch-2.weights.h5" and state["best"] == "best-epoch-1.weights.h5"
    assert (tmp_path / state["best"]).read_text() == "after 1"
    # a run killed after writing epoch 3's best file but before state.json: the state still names epoch 1's
    (tmp_path / "best-epoch-3.weights.h5").write_text("after 3, never recorded")
    assert ckpt.state()["best"] == "best-epoch-1.weights.h5"
    model.label = "after 4"
    ckpt.save(model, {"epoch": 4}, best=True)
    assert sorted(f.name for f in tmp_path.glob("*.h5")) == [
        "best-epoch-3.weights.h5", "best-epoch-4.weights.h5", "epoch-4.weights.h5"]  # superseded files gone
    ckpt.discard_stale()  # what a fresh start (no state) does
    assert not list(tmp_path.glob("best-*"))


def test_a_folder_the_executors_do_not_see_fails_before_training(spark, tmp_path: Path, monkeypatch) -> None:
    """The barrier tasks check the driver's token in the fine-tune folder before any worker starts."""
    from xray_spark.finetune import distributed

    monkeypatch.setattr(distributed, "leave_token", lambda folder: "a token no executor can read")
    out = tmp_path / "out"
    with pytest.raises(distributed.NotShared, match="is not visible on the executors of host"):
        distributed.run_barrier(spark, 2, {"out_dir": str(out), "weights_path": "unused"})
    assert not out.exists()  # no worker started (a worker would have written checkpoints or a model)


def test_shared_token_round_trip(tmp_path: Path) -> None:
    from xray_spark.finetune.distributed import leave_token, sees_token

    token = leave_token(tmp_path / "shared")
    assert sees_token(str(tmp_path / "shared"), token)
    assert not sees_token(str(tmp_path / "elsewhere"), token)
    assert not sees_token(str(tmp_path / "shared"), "another token")


def test_batches_same_step_count_whatever_the_shard_size() -> None:
    rng = np.random.default_rng(0)
    for n in (0, 3, 10):
        train = list(batch_indices(n, 4, rng, steps=5))
        assert len(train) == 5 and all(len(i) == 4 for i, _ in train)
    val = list(batch_indices(6, 4, None, steps=3))  # one pass, padded and masked
    assert [m.sum() for _, m in val] == [4, 2, 0]
    assert sorted(np.concatenate([i[m > 0] for i, m in val]).tolist()) == list(range(6))
    assert class_weights([30, 10, 0]) == [40 / 90, 40 / 30, 0.0]


def test_augmentation_is_mild_and_never_mirrors() -> None:
    img = np.zeros((64, 64, 3), np.uint8)
    img[:, :20] = 255  # bright on the left only
    cfg = FinetuneConfig()
    for seed in range(5):
        out = augment_one(img, np.random.default_rng(seed), cfg)
        assert out.shape == img.shape and out.dtype == np.uint8
        assert out[:, :16].mean() > 150 and out[:, -16:].mean() < 50  # still bright on the left
        assert (out[..., 0] == out[..., 2]).all()
    still = FinetuneConfig(rotation_degrees=0, scale=0, contrast=0)
    assert (augment_one(img, np.random.default_rng(0), still) == img).all()


def test_softmax_head_as_logistic_regression_coefficients() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 4))

    def softmax(z: np.ndarray) -> np.ndarray:
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    for k in (2, 3):
        kernel, bias = rng.normal(size=(4, k)), rng.normal(size=k)
        coef, intercept, multinomial = head_coefficients(kernel, bias)
        assert multinomial == (k > 2)
        if multinomial:
            np.testing.assert_allclose(softmax(x @ coef.T + intercept), softmax(x @ kernel + bias))
        else:  # MLlib's binomial model: P(class 1) = sigmoid(w.x + c)
            p1 = 1 / (1 + np.exp(-(x @ coef[0] + intercept[0])))
            np.testing.assert_allclose(p1, softmax(x @ kernel + bias)[:, 1])


def test_softmax_head_is_an_mllib_model_that_spark_and_serving_agree_on(spark) -> None:
    """Both task shapes through the py4j constructor (binary needs row-major coefficients), Spark's transform
    and the Spark-free serving export (`serve`) against numpy's softmax."""
    from pyspark.ml import PipelineModel
    from pyspark.ml.linalg import Vectors

    from xray_spark.finetune.export import softmax_head
    from xray_spark.models.head_export import export_head
    from xray_spark.models.pipeline import _decode_label
    from xray_spark.tasks import get_task

    rng = np.random.default_rng(1)
    x = rng.normal(size=(6, 8))
    for name in ("binary", "multiclass"):
        task = get_task(name)
        kernel, bias = rng.normal(size=(8, task.n_classes)), rng.normal(size=task.n_classes)
        z = x @ kernel + bias
        want = np.exp(z - z.max(axis=1, keepdims=True))
        want /= want.sum(axis=1, keepdims=True)
        head = softmax_head(spark, kernel, bias, task)
        pipeline = PipelineModel(stages=[head, _decode_label(task)])
        frame = spark.createDataFrame([(Vectors.dense(v),) for v in x], ["features"])
        rows = pipeline.transform(frame).collect()
        np.testing.assert_allclose(np.stack([r["probability"].toArray() for r in rows]), want, atol=1e-12)
        assert [r["predicted_label"] for r in rows] == [task.labels[i] for i in want.argmax(axis=1)]
        labels, proba = export_head(pipeline).predict(x)
        np.testing.assert_allclose(proba, want, atol=1e-12)
        assert list(labels) == [task.labels[i] for i in want.argmax(axis=1)]


@pytest.mark.e2e
def test_cli_bad_arguments_exit_2_before_spark(tmp_path: Path, small_data: Path) -> None:
    out = tmp_path / "out"
    for extra in (["--backbone", "NoSuchNet"], ["--backbone", "ResNet50", "--epochs", "0"],
                  ["--backbone", "ResNet50", "--weights", str(tmp_path / "missing.h5")]):
        proc = subprocess.run([sys.executable, "-m", "xray_spark", "finetune", "--data", str(small_data),
                               "--task", "binary", "--out", str(out), *extra],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
    assert not out.exists()


# ------------------------------------------------------------------------------------------ integration


def _cfg():
    cfg = load_config(local=None)
    ft = cfg.finetune
    ft.learning_rate, ft.batch_size, ft.unfreeze = 1e-5, 8, 0  # head only: seconds per step on 2 cores
    ft.augment, ft.class_weights = False, False
    return cfg


@pytest.fixture(scope="module")
def first_run(spark, small_ingest: Path, weights_cache, tmp_path_factory: pytest.TempPathFactory):
    """One real fine-tune (multiclass, 2 barrier workers, 1 epoch, head only). Over 60 s (~2-4 min): two
    TensorFlow processes build and train ResNet50, then the exported pipeline featurizes the test fold with
    the new weights (a new OpenVINO model) and MLflow logs the Keras and Spark models."""
    from xray_spark.finetune.run import FinetuneSpec, run_finetune

    out = tmp_path_factory.mktemp("finetune_out")
    with pytest.MonkeyPatch.context() as mp:
        isolate_mlflow(mp)  # the run's sqlite store under `out` must not leak into later test modules
        t0 = time.perf_counter()
        result = run_finetune(spark, _cfg(), FinetuneSpec(data=str(small_ingest), backbone="ResNet50",
                                                          task="multiclass", weights="none", out_dir=str(out),
                                                          epochs=1, workers=2))
        yield result, out, time.perf_counter() - t0


@pytest.fixture(scope="module")
def keras_probabilities(first_run) -> dict[str, np.ndarray]:
    """The first run's Keras model (as logged in MLflow, Keras flavor) on each exported test-fold image."""
    import mlflow.keras

    result, _, _ = first_run
    model = mlflow.keras.load_model(result.metrics["keras_model_uri"])
    bb = get_backbone("ResNet50")
    files = [paths.local_path(p) for p in result.predictions["paths"]]
    images = np.stack([decode_for_model(Path(f).read_bytes(), bb.input_size) for f in files])
    proba = np.asarray(model.predict(bb.preprocess(images), verbose=0), dtype=np.float64)
    return dict(zip(result.predictions["paths"], proba, strict=True))


def test_two_worker_epoch_learns_on_a_fixed_batch(first_run, evidence) -> None:
    result, out, seconds = first_run
    m = result.metrics
    assert m["workers"] == 2 and m["start_epoch"] == 0 and [h["epoch"] for h in m["history"]] == [1]
    epoch = m["history"][0]
    assert epoch["fixed_batch_loss"] < m["initial_fixed_batch_loss"], m
    assert epoch["images_per_second"] > 0 and np.isfinite(epoch["val_loss"])
    assert m["test"]["n"] > 0 and 0 <= m["test"]["accuracy"] <= 1
    assert (out / "model.keras").is_file() and json.loads((out / "finetune_metrics.json").read_text()) == m
    summary = "\n".join(result.lines())
    assert "random weights" in summary and result.model_uri in summary and "95% intervals" in summary
    state = json.loads((out / "checkpoints" / "state.json").read_text())
    assert state["epoch"] == 1 and (out / "checkpoints" / state["weights"]).is_file()
    evidence(f"finetune 2 workers, 1 epoch: fixed-batch loss {m['initial_fixed_batch_loss']:.4f} -> "
             f"{epoch['fixed_batch_loss']:.4f}, {epoch['images_per_second']:.2f} images/s, "
             f"run {seconds:.0f}s")


def test_exported_pipeline_matches_the_keras_model_on_the_test_fold(first_run, keras_probabilities,
                                                                     evidence) -> None:
    result, _, _ = first_run
    pred = result.predictions
    keras_proba = np.stack([keras_probabilities[p] for p in pred["paths"]])
    gap = float(np.abs(pred["proba"] - keras_proba).max())
    assert gap < auto_engine_atol(), gap  # the exported featurizer runs engine 'auto' (bf16 where native)
    assert (pred["y_pred"] == keras_proba.argmax(axis=1)).all()
    evidence(f"finetune export parity on {len(keras_proba)} test-fold images: max |p_spark - p_keras| = "
             f"{gap:.2e}")


def test_mlflow_run_has_epoch_metrics_intervals_and_an_unaliased_version(first_run) -> None:
    from mlflow import MlflowClient

    result, _, _ = first_run
    client = MlflowClient()
    run = client.get_run(result.run_id)
    for key in ("loss", "val_loss", "val_accuracy", "images_per_s"):
        assert [m.step for m in client.get_metric_history(result.run_id, key)] == [1], key
    metrics = run.data.metrics
    for key in ("accuracy", "macro_f1"):
        assert metrics[f"{key}_ci_low"] <= metrics[key] <= metrics[f"{key}_ci_high"], key
    assert metrics["n_test"] == result.metrics["test"]["n"] > 0
    assert run.data.params["weights"] == "none" and "random weights" in run.data.tags["note"]
    assert "random weights" in run.data.tags["mlflow.note.content"]
    assert run.data.params["split_hash"] == result.metrics["split_hash"]
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"plots", "weights"} <= artifacts
    name, version = result.model_uri.removeprefix("models:/").split("/")
    mv = client.get_model_version(name, version)
    assert mv.run_id == result.run_id
    assert not client.get_registered_model(name).aliases  # champion is train's to give


@pytest.mark.e2e
def test_registered_model_scores_through_the_cli(spark, first_run, keras_probabilities, tmp_path: Path,
                                                 capsys) -> None:
    """`score` through the CLI's `main` (in-process, on the shared session) with the registered fine-tuned
    model: the labels Keras gives."""
    result, _, _ = first_run
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    expected = {}
    for uri in list(keras_probabilities)[:3]:
        f = Path(paths.local_path(uri))
        shutil.copy(f, src / f.name)
        expected[f.name] = result.metrics["labels"][int(keras_probabilities[uri].argmax())]
    import mlflow

    from xray_spark.cli import main

    code = main(["score", "--model", result.model_uri, "--input", str(src), "--output", str(out),
                 "--tracking-uri", mlflow.get_tracking_uri(), "--min-age", "0"])  # just copied
    assert code == 0, capsys.readouterr().err[-3000:]
    import pandas as pd

    rows = pd.concat([pd.read_parquet(f) for f in sorted(out.glob("score_date=*/part-*.parquet"))])
    assert (rows["status"] == "ok").all() and len(rows) == len(expected)
    got = {Path(paths.local_path(p)).name: lab for p, lab in zip(rows["path"], rows["predicted_label"],
                                                                 strict=True)}
    assert got == expected


def test_registered_version_serves_spark_free(first_run, keras_probabilities, tmp_path: Path) -> None:
    """`serve --model models:/NAME/VERSION` finds the bundle linked to the version and predicts as Keras."""
    import mlflow

    from xray_spark.models.serving_bundle import load_bundle
    from xray_spark.models.serving_mlflow import bundle_for_model
    from xray_spark.serving.predictor import Predictor

    result, _, _ = first_run
    folder = bundle_for_model(result.model_uri, mlflow.get_tracking_uri(), cache_dir=tmp_path / "serving")
    predictor = Predictor(load_bundle(folder))
    for uri, proba in list(keras_probabilities.items())[:3]:
        got = predictor.predict(Path(paths.local_path(uri)).read_bytes())
        assert got.label == result.metrics["labels"][int(proba.argmax())]
        assert max(abs(got.probabilities[k] - p) for k, p in zip(result.metrics["labels"], proba,
                                                                  strict=True)) < auto_engine_atol()


def _session_processes(sid: int) -> dict[int, str]:
    """Live (not zombie) processes of session `sid`, pid -> command line. Spark's Python daemon moves itself,
    its workers and so the TensorFlow workers they start to a process group of its own, but never out of
    the session that `start_new_session` gave the CLI."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:  # gone meanwhile
            continue
        state, _ppid, _pgrp, session = stat[stat.rindex(")") + 2:].split()[:4]
        if int(session) == sid and state != "Z":
            found[int(entry.name)] = cmdline.replace(b"\0", b" ").decode(errors="replace").strip()
    return found


def _wait_for_checkpoint(proc: subprocess.Popen, state_file: Path, epoch: int, log: Path,
                         timeout: float = 900) -> dict:
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if json.loads(state_file.read_text())["epoch"] >= epoch:
            return json.loads(state_file.read_text())
        time.sleep(0.1)
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
    raise AssertionError(f"no checkpoint of epoch {epoch} while the run was alive (exit {proc.poll()}):\n"
                         f"{tail}")


@pytest.mark.e2e
@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="finds the run's processes in /proc")
def test_killed_run_resumes_from_its_last_checkpoint(first_run, spark, small_ingest, weights_cache,
                                                     monkeypatch, tmp_path: Path, evidence) -> None:
    """The CLI continues first_run's --out to 3 epochs (it resumes after epoch 1) and is SIGKILLed, driver and
    JVM, as soon as it has checkpointed epoch 2: every process it started must then exit by itself (Spark's
    Python daemon on its JVM's death, the TensorFlow workers with their Spark task), and a rerun must start
    after epoch 2 with epochs 1-2 and the optimizer state as checkpointed. Over 60 s (~3-5 min): the killed
    CLI run trains an epoch in its own JVM and TensorFlow processes, then the rerun trains the third."""
    from xray_spark.finetune.run import METRICS_FILE, FinetuneSpec, run_finetune

    first, out, _ = first_run
    epoch1 = first.metrics["history"][0]
    steps = epoch1["optimizer_step"]
    state_file = out / "checkpoints" / "state.json"
    assert json.loads(state_file.read_text())["epoch"] == 1
    t0 = time.perf_counter()
    conf = tmp_path / "finetune.yml"  # _cfg()'s settings, so the CLI's run key is first_run's
    conf.write_text(yaml.safe_dump({"finetune": asdict(_cfg().finetune)}))
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    log = tmp_path / "killed-run.log"
    cmd = [sys.executable, "-m", "xray_spark", "finetune", "--config", str(conf),
           "--data", str(small_ingest), "--backbone", "ResNet50", "--task", "multiclass",
           "--weights", "none", "--epochs", "3", "--out", str(out), "--workers", "2",
           "--conf", "spark.driver.memory=2g"]
    with log.open("w") as log_file:  # cwd tmp_path: no conf/local.yml layered over the config
        proc = subprocess.Popen(cmd, cwd=tmp_path, env={**env, "PYTHONUNBUFFERED": "1"},
                                stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                                start_new_session=True)
    left: dict[int, str] = {}
    try:
        checkpointed = _wait_for_checkpoint(proc, state_file, 2, log)
        running = _session_processes(proc.pid)
        os.killpg(proc.pid, signal.SIGKILL)  # the CLI's group: the driver and its JVM
        proc.wait(60)
        deadline = time.monotonic() + 90
        while (left := _session_processes(proc.pid)) and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(60)
        for pid in _session_processes(proc.pid):  # only after a failure: this run's, by pid
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    killed_s = time.perf_counter() - t0
    assert proc.returncode == -signal.SIGKILL  # our kill ended it: it was still running
    trainers = [c for c in running.values() if "xray_spark.finetune.trainer" in c]
    assert len(trainers) == 2, running  # killed mid-training: both TensorFlow workers were alive
    assert not left, f"still running 90 s after the kill: {left}"
    assert checkpointed["epoch"] == 2 and json.loads(state_file.read_text()) == checkpointed  # not epoch 3
    assert json.loads((out / METRICS_FILE).read_text()) == first.metrics  # the killed run never finished
    # the killed run had itself resumed from first_run's checkpoint
    assert checkpointed["history"][0] == epoch1 and checkpointed["history"][1]["optimizer_step"] == 2 * steps

    isolate_mlflow(monkeypatch)  # run_finetune points MLflow (and MLFLOW_*_URI) at its store: undone after
    result = run_finetune(spark, _cfg(), FinetuneSpec(data=str(small_ingest), backbone="ResNet50",
                                                      task="multiclass", weights="none", out_dir=str(out),
                                                      epochs=3, workers=2))
    m = result.metrics
    assert m["start_epoch"] == 2  # after the killed run's last checkpoint, not from scratch
    assert [h["epoch"] for h in m["history"]] == [1, 2, 3]
    assert m["history"][:2] == checkpointed["history"]  # epochs 1-2 as checkpointed, not trained again
    assert m["history"][0] == epoch1
    # the optimizer state came back too: its step counter continues from epoch 2's
    assert m["history"][2]["optimizer_step"] == 3 * steps
    assert json.loads(state_file.read_text())["epoch"] == 3
    evidence(f"finetune killed (SIGKILL, {len(running)} processes incl. 2 TF workers) after checkpointing "
             f"epoch 2 of 3: all gone on their own; rerun resumed at epoch 2 (optimizer step "
             f"{2 * steps} -> {3 * steps}); killed run {killed_s:.0f}s, test {time.perf_counter() - t0:.0f}s")
