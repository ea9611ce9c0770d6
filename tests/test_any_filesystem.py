"""The whole flow with a non-`file:` default filesystem, as on Databricks (`dbfs:`), here a Hadoop viewfs
mount table over the local /tmp: ingest, train and score through the CLI's `main`, in one subprocess whose
session has viewfs as its default filesystem (the suite's own session keeps `file:`)."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from cli_session import run_cli_steps
from conftest import VIEWFS_ARGS, copy_subset, isolate_mlflow
from xray_spark.config import load_config
from xray_spark.data.ingest import ingest

pytestmark = pytest.mark.e2e


def test_ingest_train_score_under_a_viewfs_default_filesystem(spark, ozturk_dir: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Over 60 s (~2-4 min): a process of its own (the default filesystem is fixed when a JVM starts) that
    ingests, featurizes, trains and scores 24 images, then the same ingest here on `file:` to compare."""
    assert str(tmp_path).startswith("/tmp/"), "the mount table maps /tmp"
    isolate_mlflow(monkeypatch)
    data = copy_subset(ozturk_dir, tmp_path / "data", per_class=8)
    out, train_out, preds = tmp_path / "ingest", tmp_path / "train", tmp_path / "preds"

    db = f"sqlite:///{tmp_path}/mlflow.db"
    _, ingested, trained, scored_step = run_cli_steps([
        ["ingest", "--data", str(data), "--out", str(out), *VIEWFS_ARGS],
        # train reuses the ingest output (same split) instead of ingesting again
        ["train", "--data", str(out), "--backbones", "ResNet50", "--heads", "lr", "--tasks", "binary",
         "--weights", "none", "--out", str(train_out), "--tracking-uri", db, *VIEWFS_ARGS],
        ["score", "--model", "models:/xray-spark-binary@champion", "--input", str(data / "covid"),
         "--output", str(preds), "--tracking-uri", db, *VIEWFS_ARGS],
    ], env={k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")})

    assert "files read: 24 = ok 24 + quarantined 0" in ingested.stdout
    images = spark.read.parquet(f"file:{out}/images").toPandas()
    assert images["path"].str.startswith(f"viewfs://v{data}/").all()  # identity = the qualified URI

    # the same folder ingested with the plain local filesystem gets the same groups and folds
    local = ingest(spark, str(data), str(tmp_path / "local"), load_config(local=None)).images.toPandas()
    by_rel = images.set_index("rel_path")[["group_id", "fold", "split"]].sort_index()
    assert by_rel.equals(local.set_index("rel_path")[["group_id", "fold", "split"]].sort_index())

    assert "champion binary: models:/xray-spark-binary@champion" in trained.stdout
    assert pd.read_csv(train_out / "comparison.csv")["task"].eq("binary").all()

    assert "newly scored: 8" in scored_step.stdout and "quarantined: 0" in scored_step.stdout
    scored = spark.read.parquet(f"file:{preds}").toPandas()
    assert len(scored) == 8 and scored["path"].str.startswith("viewfs://v/").all()
    assert scored["status"].eq("ok").all() and scored["predicted_label"].notna().all()
