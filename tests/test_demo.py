"""`xray-spark demo`, the README's main job, end to end on a small real subset, offline.

No ImageNet weights can be had (the mirror is a refused local port and the cache is empty), so the demo must
say so loudly and carry on with seeded random weights; then ingest, featurize, train, register and score the
test split, and say where the report and the MLflow UI are.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

pytestmark = pytest.mark.e2e


def test_demo_runs_end_to_end_offline(small_data: Path, data_root: Path, tmp_path: Path) -> None:
    import os

    out = tmp_path / "demo"
    env = dict(os.environ, XRAY_SPARK_CACHE=str(tmp_path / "cache"),
               XRAY_SPARK_WEIGHTS_BASE_URL="http://127.0.0.1:9/mirror/", KERAS_HOME=str(tmp_path / "keras"))
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("MLFLOW_REGISTRY_URI", None)
    proc = subprocess.run([sys.executable, "-m", "xray_spark", "demo", "--data", str(small_data),
                           "--out", str(out), "--backbones", "ResNet50", "--heads", "lr",
                           "--external", str(data_root / "figure1")],
                          capture_output=True, text=True, timeout=600, env=env)
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

    # the champions on another source, beside their internal numbers (figure1: 35 COVID, 3 No-findings,
    # 2 pneumonia; the binary champion has no pneumonia class)
    report = (out / "report.md").read_text()
    assert "## Internal vs external: the champions on figure1" in report
    for task, n in (("binary", 38), ("multiclass", 40)):
        metrics = json.loads((out / "external" / task / "metrics.json").read_text())
        assert metrics["n"] == n and metrics["source"] == "figure1"
        assert f"external:    {task} champion on figure1 ({n} images)" in proc.stdout
    assert report.count("internal test split (n=") == 2
