"""The whole flow with a non-`file:` default filesystem, as on Databricks (`dbfs:`), here a Hadoop viewfs
mount table over the local /tmp: ingest, train and score through the real console script."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import VIEWFS_ARGS, copy_subset, isolate_mlflow
from xray_spark.config import load_config
from xray_spark.data.ingest import ingest

CLI = [sys.executable, "-m", "xray_spark"]


def _run(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run([*CLI, *args, *VIEWFS_ARGS], capture_output=True, text=True, timeout=900,
                          env={**os.environ, **(env or {})})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_ingest_train_score_under_a_viewfs_default_filesystem(spark, ozturk_dir: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    assert str(tmp_path).startswith("/tmp/"), "the mount table maps /tmp"
    isolate_mlflow(monkeypatch)
    data = copy_subset(ozturk_dir, tmp_path / "data", per_class=8)
    out, train_out, preds = tmp_path / "ingest", tmp_path / "train", tmp_path / "preds"

    proc = _run(["ingest", "--data", str(data), "--out", str(out)])
    assert "files read: 24 = ok 24 + quarantined 0" in proc.stdout
    images = spark.read.parquet(f"file:{out}/images").toPandas()
    assert images["path"].str.startswith(f"viewfs://v{data}/").all()  # identity = the qualified URI

    # the same folder ingested with the plain local filesystem gets the same groups and folds
    local = ingest(spark, str(data), str(tmp_path / "local"), load_config(local=None)).images.toPandas()
    by_rel = images.set_index("rel_path")[["group_id", "fold", "split"]].sort_index()
    assert by_rel.equals(local.set_index("rel_path")[["group_id", "fold", "split"]].sort_index())

    db = f"sqlite:///{tmp_path}/mlflow.db"
    # train reuses the ingest output (same split) instead of ingesting again
    proc = _run(["train", "--data", str(out), "--backbones", "ResNet50", "--heads", "lr", "--tasks", "binary",
                 "--weights", "none", "--out", str(train_out), "--tracking-uri", db])
    assert "champion binary: models:/xray-spark-binary@champion" in proc.stdout
    assert pd.read_csv(train_out / "comparison.csv")["task"].eq("binary").all()

    proc = _run(["score", "--model", "models:/xray-spark-binary@champion", "--input", str(data / "covid"),
                 "--output", str(preds)], env={"MLFLOW_TRACKING_URI": db})
    assert "newly scored: 8" in proc.stdout and "quarantined: 0" in proc.stdout
    scored = spark.read.parquet(f"file:{preds}").toPandas()
    assert len(scored) == 8 and scored["path"].str.startswith("viewfs://v/").all()
    assert scored["status"].eq("ok").all() and scored["predicted_label"].notna().all()
