"""train and score through spark-submit on a real Spark standalone cluster (one master, one worker,
127.0.0.1).

What this proves, beyond the local[2] tests:
- the package reaches executors only through what spark-submit ships: the driver and executors run a Python
  that has the third-party dependencies but cannot import `xray_spark` from the source tree (checked first),
  and the project is shipped as `--py-files dist/xray_spark-<ver>-pyfiles.zip` (the wheel's bytes; see
  scripts/build_wheel.sh for why not the .whl itself);
- the featurizer's weights reach executors through SparkContext.addFile: the file lands in the executor's
  work folder on the worker;
- the saved PipelineModel loads from the MLflow registry and its featurizer runs on the executors;
- the work ran on the standalone master's executors: the master lists the finished applications and the
  worker's per-executor folders hold the task logs and the shipped files.
The worker and the executors start in tmp_path with no PYTHONPATH; all output goes under tmp_path.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from cluster_utils import (
    REPO,
    StandaloneCluster,
    copy_subset,
    python_without_project,
    spark_submit,
)

pytestmark = pytest.mark.cluster

PER_CLASS = 8
ODD_NAMES = ["ünïcödé.png", "_scan.png", "2020-03-01T10:22:33.png"]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, ozturk_dir: Path, built_wheel: tuple[Path, Path]) -> dict:
    if shutil.which("java") is None:
        pytest.skip("Java is required for a Spark standalone cluster")
    root = tmp_path_factory.mktemp("cluster")
    wheel, pyfiles = built_wheel
    python = python_without_project(root / "executor-python")
    data = copy_subset(ozturk_dir, root / "data", PER_CLASS)
    incoming = root / "incoming"
    incoming.mkdir()
    for cls in sorted(p for p in ozturk_dir.iterdir() if p.is_dir()):
        for f in sorted(cls.iterdir())[-2:]:  # two images per class that training never saw
            shutil.copyfile(f, incoming / f"{cls.name}-{f.name}")
    # names a C-locale JVM cannot list (non-ASCII), Spark's listing skips (`_`) or Hadoop's checksummed
    # filesystem cannot open (a colon): the score job runs under LANG=C, as cron runs it
    for name, f in zip(ODD_NAMES, sorted((ozturk_dir / "covid").iterdir())[-5:-2], strict=True):
        shutil.copyfile(f, incoming / name)
    return {"root": root, "wheel": wheel, "pyfiles": pyfiles, "python": python, "data": data,
            "incoming": incoming}


@pytest.fixture(scope="module")
def cluster(env: dict):
    c = StandaloneCluster(env["root"] / "standalone", cores=2, memory="4g")
    try:
        c.start()
        yield c
    finally:
        c.stop()


def run_job(cluster: StandaloneCluster, env: dict, job: str, args: list[str], extra_env: dict | None = None):
    """spark-submit jobs/<job>.py on the cluster with the shipped package; returns (result, app id)."""
    before = {p.name for p in cluster.work_dir.glob("app-*")}
    res = spark_submit(
        cluster, REPO / "jobs" / f"{job}.py", args, python=env["python"], py_files=[env["pyfiles"]],
        properties_file=REPO / "conf" / "spark-defaults.conf",
        conf={"spark.driver.memory": "2g", "spark.sql.shuffle.partitions": "4"},
        cwd=env["root"], log_name=job, timeout=420,
        env={"XRAY_SPARK_CACHE": str(env["root"] / "weights-cache"), **(extra_env or {})},
    )
    new = sorted({p.name for p in cluster.work_dir.glob("app-*")} - before)
    assert res.returncode == 0, (
        f"{job} failed ({res.returncode}):\n{res.stdout[-6000:]}\n{cluster.logs_tail()}")
    assert len(new) == 1, f"expected one new application on the worker, got {new}"
    return res, new[0]


def assert_ran_on_executors(cluster: StandaloneCluster, app_id: str, env: dict, evidence) -> Path:
    """The master finished the app with cores; its executor folder holds task logs and the shipped files."""
    app = cluster.wait_app_completed(app_id)
    assert app["state"] == "FINISHED" and app["cores"] >= 1
    assert app["name"] in ("xray-spark train", "xray-spark score", "xray-spark finetune"), app["name"]
    (executor_dir,) = cluster.executor_dirs(app_id)
    stderr = (executor_dir / "stderr").read_text(errors="replace")
    assert "Running task" in stderr and "Finished task" in stderr
    evidence(f"cluster: '{app['name']}' {app_id} FINISHED on {cluster.master_url} with {app['cores']} cores; "
             f"executor {executor_dir.parent.name}/{executor_dir.name} "
             f"ran {stderr.count('Finished task')} tasks")
    assert (executor_dir / env["pyfiles"].name).is_file()  # the package came from --py-files
    # train ships the seeded init; score ships the copy the model carries (staged as <sha256 prefix>-<name>)
    weights = list(executor_dir.glob("*resnet50-seed0-*.weights.h5"))
    assert weights, (
        f"weights were not shipped with addFile to {executor_dir}: {sorted(executor_dir.iterdir())}")
    return executor_dir


def test_executor_python_cannot_import_the_source_tree(env: dict):
    """The control that makes the cluster test meaningful: without the shipped zip there is no xray_spark."""
    probe = ("import numpy, pyspark, keras, mlflow\ntry:\n import xray_spark\n"
             "except ImportError:\n print('absent')")
    res = subprocess.run([str(env["python"]), "-c", probe], cwd=env["root"], capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin"}, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "absent"
    assert str(env["python"]) != sys.executable


@pytest.fixture(scope="module")
def cluster_train(cluster: StandaloneCluster, env: dict):
    """The train application (one per module): its result and app id, and its output folder, whose ingest
    output the fine-tune application takes as --data (as users reuse one split). Over 60 s (~1-2 min): a
    driver JVM and an executor JVM start cold, ingest 24 images, featurize them in TensorFlow and log."""
    out = env["root"] / "train"
    res, app_id = run_job(cluster, env, "train", [
        "--data", str(env["data"]), "--backbones", "ResNet50", "--heads", "lr", "--tasks", "binary",
        "--weights", "none", "--out", str(out), "--no-baseline",  # the baseline's logging: test_train
        "--calibration", "none",  # the temperature's out-of-fold refits: test_train, test_calibration
    ])
    return res, app_id, out


def test_train_then_score_on_a_standalone_cluster(cluster: StandaloneCluster, env: dict, cluster_train,
                                                  evidence):
    """Over 60 s (~3-5 min on 2 cores): two spark-submit applications (train, then score), each a driver JVM
    plus an executor JVM whose Python workers load TensorFlow and build the featurizer, on 24 + 9 images.
    The score job runs under LANG=C (its driver JVM cannot represent non-ASCII names): odd names are read
    by Python on the executor and scored like the rest."""
    import mlflow

    res, train_app, out = cluster_train
    assert "champion binary: models:/xray-spark-binary@champion" in res.stdout
    for name in ("comparison.csv", "report.md", "mlflow.db"):
        assert (out / name).is_file(), name
    comparison = pd.read_csv(out / "comparison.csv")
    assert {"ResNet50"} <= set(comparison["backbone"])
    assert_ran_on_executors(cluster, train_app, env, evidence)

    uri = f"sqlite:///{out / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp = client.get_experiment_by_name("xray-spark")
    runs = client.search_runs([exp.experiment_id], filter_string="tags.kind = 'image'")
    assert [(r.data.tags["backbone"], r.data.tags["head"], r.data.tags["task"]) for r in runs] == [
        ("ResNet50", "lr", "binary")
    ]
    assert 0.0 <= runs[0].data.metrics["accuracy"] <= 1.0
    champion = client.get_model_version_by_alias("xray-spark-binary", "champion")
    assert champion.run_id == runs[0].info.run_id

    preds = env["root"] / "predictions"
    res, score_app = run_job(cluster, env, "score", [
        "--model", "models:/xray-spark-binary@champion", "--input", str(env["incoming"]),
        "--output", str(preds),
    ], extra_env={"MLFLOW_TRACKING_URI": uri, "LANG": "C", "LC_ALL": "C"})
    n_incoming = len(list(env["incoming"].iterdir()))
    assert f"files seen: {n_incoming}" in res.stdout and f"newly scored: {n_incoming}" in res.stdout, (
        res.stdout[-3000:])
    table = pd.concat(pd.read_parquet(p) for p in preds.rglob("part-*.parquet"))
    assert len(table) == n_incoming and table["path"].is_unique
    assert {p.rsplit("/", 1)[1] for p in table["path"]} >= set(ODD_NAMES)
    assert table["predicted_label"].notna().all()
    # the Pipeline's featurizer ran on the executor
    assert_ran_on_executors(cluster, score_app, env, evidence)


def test_finetune_on_a_standalone_cluster(cluster: StandaloneCluster, env: dict, cluster_train, evidence):
    """Two barrier workers on the standalone worker's executor: the TensorFlow children import the package
    shipped with --py-files (the executor's Python has no xray_spark of its own) and read their shards from
    --out, a folder the single-host cluster shares with the driver. Over 60 s (~3 min): a spark-submit
    application whose two TensorFlow processes each build ResNet50 and train one epoch. Its data is the
    train application's ingest output (one split for both, as users run them)."""
    config = env["root"] / "finetune.yml"
    config.write_text("finetune:\n  unfreeze: 0\n  batch_size: 8\n  augment: false\n"
                      "  learning_rate: 1.0e-5\n")
    out = env["root"] / "finetune"
    res, app_id = run_job(cluster, env, "finetune", [
        "--config", str(config), "--data", str(cluster_train[2] / "ingest"), "--backbone", "ResNet50",
        "--task", "binary", "--weights", "none", "--epochs", "1", "--workers", "2", "--out", str(out),
    ])
    metrics = json.loads((out / "finetune_metrics.json").read_text())
    assert metrics["workers"] == 2 and [h["epoch"] for h in metrics["history"]] == [1]
    assert metrics["test"]["n"] > 0 and metrics["model_uri"] in res.stdout
    executor_dir = assert_ran_on_executors(cluster, app_id, env, evidence)
    stderr = (executor_dir / "stderr").read_text(errors="replace")
    assert "epoch 1/1: loss" in stderr  # the TensorFlow workers ran (and logged) under the executor
