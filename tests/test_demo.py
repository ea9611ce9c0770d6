"""`xray-spark demo`, the README's main job, end to end on a small real subset, offline.

No ImageNet weights can be had (the mirror is a refused local port and the cache is empty), so the demo must
say so loudly and carry on with seeded random weights; then ingest, featurize, train, register and score the
test split, and say where the report and the MLflow UI are.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from conftest import isolate_mlflow, manifest_subset

pytestmark = pytest.mark.e2e


def test_demo_runs_end_to_end_offline(spark, small_data: Path, data_root: Path, tmp_path: Path, capsys,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """`xray-spark demo` through the CLI's `main`, in this process on the shared session (the command's
    get_spark returns it): ingest, featurize, train, register, score and the external evaluation of both
    champions. Over 60 s (~2-4 min on 2 cores): it is the whole main job, with an empty weights cache, so
    the seeded weights and their OpenVINO model are built anew."""
    from xray_spark.cli import main

    out = tmp_path / "demo"
    isolate_mlflow(monkeypatch)
    monkeypatch.setenv("XRAY_SPARK_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("XRAY_SPARK_WEIGHTS_BASE_URL", "http://127.0.0.1:9/mirror/")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    external = tmp_path / "figure1"  # full-size images: the evaluation's cost scales with them, not its logic
    manifest_subset(data_root / "figure1", external, {"covid": 6, "no_findings": 3, "pneumonia": 2})
    code = main(["demo", "--data", str(small_data), "--out", str(out), "--backbones", "ResNet50",
                 "--heads", "lr", "--external", str(external)])
    captured = capsys.readouterr()
    proc = SimpleNamespace(returncode=code, stdout=captured.out, stderr=captured.err)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "ImageNet weights are not available here" in proc.stdout
    assert ("RANDOM (seeded) weights" in proc.stdout
            and "NOTE: features came from randomly initialised" in proc.stdout)
    assert (f"report:      {out / 'report.md'}" in proc.stdout
            and "mlflow ui --backend-store-uri sqlite:" in proc.stdout)

    table = pd.read_csv(out / "comparison.csv")
    assert (set(table["kind"]) == {"image", "metadata-baseline"}
            and (table["weights"].dropna() != "imagenet").all())
    n_test = int((pd.read_csv(out / "ingest" / "split.csv")["split"] == "test").sum())
    for task in ("binary", "multiclass"):
        preds = pd.concat(pd.read_parquet(p) for p in (out / "predictions" / task).rglob("part-*.parquet"))
        assert len(preds) <= n_test and preds["sha256"].is_unique  # identical test images are scored once
        assert (preds["status"] == "ok").all() and preds["model_name"].eq(f"xray-spark-{task}").all()
        assert f"newly scored: {len(preds)}" in proc.stdout

    # the champions on another source, beside their internal numbers (the subset: 6 COVID, 3 No-findings,
    # 2 pneumonia; the binary champion has no pneumonia class)
    report = (out / "report.md").read_text()
    assert "## Internal vs external: the champions on figure1" in report
    for task, n in (("binary", 9), ("multiclass", 11)):
        metrics = json.loads((out / "external" / task / "metrics.json").read_text())
        assert metrics["n"] == n and metrics["source"] == "figure1"
        assert f"external:    {task} champion on figure1 ({n} images)" in proc.stdout
    assert report.count("internal test split (n=") == 2
