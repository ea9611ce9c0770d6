"""The whole flow with a non-`file:` default filesystem, as on Databricks (`dbfs:`), here a Hadoop viewfs
mount table over the local /tmp: ingest, train and score through the CLI's `main`, in one subprocess whose
session has viewfs as its default filesystem (the suite's own session keeps `file:`), started under the C
locale as cron starts scheduled jobs."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

from cli_session import run_cli_steps
from conftest import VIEWFS_ARGS, copy_subset, isolate_mlflow

pytestmark = pytest.mark.e2e


ODD_NAMES = ["2020-03-01T10:22:33.png", "scan:01.png", "ünïcödé.png", "new\nline.png", "_scan.png"]


def _add_odd_files(ozturk_dir: Path, data: Path) -> None:
    """Five more covid images under names scanners and PACS exports use (colons, non-ASCII, a newline, a
    leading `_`), a FIFO and a symlink loop among them, a dangling link and OS clutter elsewhere."""
    extra = sorted((ozturk_dir / "covid").iterdir())[40:40 + len(ODD_NAMES)]
    for name, image in zip(ODD_NAMES, extra, strict=True):
        shutil.copy(image, data / "covid" / name)
    os.mkfifo(data / "covid" / "fifo.png")
    os.symlink("loop.png", data / "covid" / "loop.png")
    os.symlink("gone.png", data / "no_findings" / "dangling.png")
    (data / "pneumonia" / ".DS_Store").write_bytes(b"\0")


def test_ingest_train_score_under_a_viewfs_default_filesystem_and_the_c_locale(
        spark, ozturk_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Over 60 s (~2-4 min): a process of its own (the default filesystem and the locale are fixed when a
    JVM starts) run as cron runs jobs, under LANG=C LC_ALL=C, that ingests, featurizes, trains and scores 24
    images plus odd names and special files through viewfs, then ingests and scores the same folders as
    plain `file:` URIs: every file is accounted for, with true reasons, on both filesystems."""
    assert str(tmp_path).startswith("/tmp/"), "the mount table maps /tmp"
    isolate_mlflow(monkeypatch)
    data = copy_subset(ozturk_dir, tmp_path / "data", per_class=8)
    _add_odd_files(ozturk_dir, data)
    out, train_out, preds = tmp_path / "ingest", tmp_path / "train", tmp_path / "preds"
    local_out, local_preds = tmp_path / "local", tmp_path / "local-preds"

    db = f"sqlite:///{tmp_path}/mlflow.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "LC_", "LANG"))}
    _, ingested, trained, scored_step, local_ingested, local_scored = run_cli_steps([
        ["ingest", "--data", str(data), "--out", str(out), *VIEWFS_ARGS],
        # train reuses the ingest output (same split) instead of ingesting again
        ["train", "--data", str(out), "--backbones", "ResNet50", "--heads", "lr", "--tasks", "binary",
         "--weights", "none", "--out", str(train_out), "--tracking-uri", db, "--no-baseline",
         "--calibration", "none", *VIEWFS_ARGS],  # the baseline, temperature: test_train, test_calibration
        ["score", "--model", "models:/xray-spark-binary@champion", "--input", str(data / "covid"),
         "--output", str(preds), "--tracking-uri", db, *VIEWFS_ARGS],
        ["ingest", "--data", f"file:{data}", "--out", f"file:{local_out}"],
        ["score", "--model", "models:/xray-spark-binary@champion", "--input", f"file:{data / 'covid'}",
         "--output", f"file:{local_preds}", "--tracking-uri", db],
    ], env={**env, "LANG": "C", "LC_ALL": "C"})

    reconciled = "files read: 32 = ok 29 + quarantined 3"
    assert reconciled in ingested.stdout and reconciled in local_ingested.stdout
    reasons = "quarantined by reason: dangling_symlink 1, not_a_regular_file 1, symlink_loop 1"
    assert reasons in ingested.stdout
    images = spark.read.parquet(f"file:{out}/images").toPandas()
    assert images["path"].str.startswith(f"viewfs://v{data}/").all()  # identity = the qualified URI
    ok = set(images.loc[images["status"] == "ok", "rel_path"])
    assert {f"covid/{n}" for n in ODD_NAMES} <= ok

    # the same folder ingested with the plain local filesystem gets the same rows, groups and folds
    local = spark.read.parquet(f"file:{local_out}/images").toPandas()
    cols = ["status", "reason", "sha256", "group_id", "fold", "split"]
    by_rel = [df.set_index("rel_path")[cols].sort_index() for df in (images, local)]
    assert by_rel[0].equals(by_rel[1])

    assert "champion binary: models:/xray-spark-binary@champion" in trained.stdout
    assert pd.read_csv(train_out / "comparison.csv")["task"].eq("binary").all()

    for step, folder, prefix in ((scored_step, preds, "viewfs://v/"), (local_scored, local_preds, "file:/")):
        assert "files seen: 15" in step.stdout, step.stdout
        assert "newly scored: 13" in step.stdout and "quarantined: 2" in step.stdout
        scored = spark.read.parquet(f"file:{folder}").toPandas()
        assert len(scored) == 15 and scored["path"].str.startswith(prefix).all()
        assert scored["path"].is_unique
        good = scored[scored["status"] == "ok"]
        assert len(good) == 13 and good["predicted_label"].notna().all()
        assert {p.rsplit("/", 1)[1] for p in good["path"]} >= set(ODD_NAMES)
        bad = scored.set_index(scored["path"].str.rsplit("/", n=1).str[1])["reason"].dropna()
        assert {k: v.split(":")[0] for k, v in bad.items()} == {"fifo.png": "not_a_regular_file",
                                                               "loop.png": "symlink_loop"}
