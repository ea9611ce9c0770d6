"""Only image faults become quarantine rows: any other executor fault fails the task, and Spark retries it.

The Spark test runs in its own driver process: it needs a Python worker module of its own
(`spark.python.worker.module`), which is fixed when a SparkContext starts, and the shared `spark` fixture
has started one already. Nothing in the package knows about the injection: the worker module (written
below) patches `decode_for_model` in each forked Python worker and then runs PySpark's normal worker.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from xray_spark.data.decode import DecodeError
from xray_spark.features.backbones import get_backbone
from xray_spark.features.worker import WorkerFeaturizer
from xray_spark.session import with_task_retries

# ------------------------------------------------------------------------------------- unit: the row rule


class _ZerosEngine:
    """Stands in for the backbone (only `_run`'s error routing is under test here)."""

    label = "test:fp32"

    def __init__(self, dim: int) -> None:
        self.dim, self.calls = dim, 0

    def __call__(self, images: np.ndarray) -> np.ndarray:
        self.calls += 1
        return np.ones((len(images), self.dim), dtype=np.float32)


def _featurizer() -> WorkerFeaturizer:
    featurizer = WorkerFeaturizer.__new__(WorkerFeaturizer)  # no model build: the engine is stubbed
    featurizer.backbone = get_backbone("ResNet50")
    featurizer.engine = _ZerosEngine(featurizer.backbone.feature_dim)
    return featurizer


def _decoder(fault: BaseException | None = None, at: int = 1):
    size = get_backbone("ResNet50").input_size

    def one(i: int) -> np.ndarray:
        if i == at and fault is not None:
            raise fault
        return np.zeros((size, size, 3), dtype=np.uint8)

    return one


def test_a_decode_error_becomes_that_rows_error_and_the_rest_are_featurized() -> None:
    featurizer = _featurizer()
    out = featurizer._run(3, _decoder(DecodeError("dicom_unsupported", "no decoder for JPEG-LS")))
    assert list(out["error"]) == [None, "dicom_unsupported: no decoder for JPEG-LS", None]
    assert list(out["engine"]) == ["test:fp32", None, "test:fp32"]
    assert np.isnan(out["features"][1]).all() and (out["features"][[0, 2]] == 1).all()


@pytest.mark.parametrize("fault", [MemoryError("no memory"), RuntimeError("executor lost its disk"),
                                   OSError("stale NFS handle")])
def test_any_other_fault_fails_the_batch_instead_of_becoming_a_row(fault: BaseException) -> None:
    featurizer = _featurizer()
    with pytest.raises(type(fault), match=str(fault)):
        featurizer._run(3, _decoder(fault))
    assert featurizer.engine.calls == 0  # nothing was featurized, nothing to commit


@pytest.mark.parametrize(("master", "failures", "expected"), [
    ("local[2]", None, "local[2,4]"),
    ("local[*]", None, "local[*,4]"),
    ("local", None, "local[1,4]"),
    ("local[2]", "7", "local[2,7]"),  # spark.task.maxFailures, which local mode otherwise ignores
    ("local[2,1]", None, "local[2,1]"),  # the user's F wins (1 = no retries)
    ("local-cluster[2,1,1024]", None, "local-cluster[2,1,1024]"),
    ("spark://host:7077", None, "spark://host:7077"),  # clusters retry already (spark.task.maxFailures)
    ("yarn", None, "yarn"),
])
def test_local_masters_get_task_retries(master: str, failures: str | None, expected: str) -> None:
    assert with_task_retries(master, failures) == expected


def test_the_shared_test_session_retries_tasks(spark) -> None:
    assert spark.sparkContext.master == "local[2,4]"  # conftest asks get_spark for local[2]


# ----------------------------------------------------------------------------- real Spark, injected fault

# Test-only Python worker. The name must start with "pyspark": pyspark/daemon.py ignores other modules.
FAULT_WORKER = '''
"""The first image decode of the whole run raises MemoryError (one marker file, created atomically)."""
import os

import pyspark.worker


def _inject():
    import xray_spark.features.worker as worker

    if getattr(worker, "_fault_injected", False):
        return
    real = worker.decode_for_model

    def decode_failing_once(data, size, **kwargs):
        try:
            fd = os.open(os.environ["XRAY_FAULT_MARKER"], os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return real(data, size, **kwargs)
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        raise MemoryError("injected executor fault")

    worker.decode_for_model = decode_failing_once
    worker._fault_injected = True


def main(infile, outfile):
    _inject()
    return pyspark.worker.main(infile, outfile)
'''

DRIVER = '''
import json
import sys

from pyspark.sql import functions as F

from xray_spark.config import load_config
from xray_spark.features.featurizer import DeepImageFeaturizer
from xray_spark.session import get_spark

spark = get_spark(load_config(local=None), master="local[2]",
                  conf={"spark.python.worker.module": "pyspark_xray_fault"}, app_name="xray-spark-faults")
df = spark.read.format("binaryFile").load(sys.argv[1]).coalesce(1)  # one task: it fails once, then passes
featurizer = DeepImageFeaturizer(inputCol="content", outputCol="features", modelName="ResNet50",
                                 weights="none", engine="keras", engineCol="engine")
rows = (featurizer.transform(df)
        .select("path", "featurize_error", "engine", F.col("features").isNotNull().alias("has_features"))
        .collect())
print(json.dumps({"master": spark.sparkContext.master, "rows": [r.asDict() for r in rows]}))
spark.stop()
'''


@pytest.mark.e2e
def test_an_injected_executor_fault_is_retried_not_quarantined(ozturk_dir: Path, weights_cache: Path,
                                                               tmp_path: Path, evidence) -> None:
    images = tmp_path / "images"
    images.mkdir()
    for label in ("covid", "no_findings"):
        for p in sorted((ozturk_dir / label).iterdir())[:2]:
            shutil.copy(p, images / f"{label}__{p.name}")
    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "pyspark_xray_fault.py").write_text(textwrap.dedent(FAULT_WORKER))
    (tmp_path / "driver.py").write_text(textwrap.dedent(DRIVER))
    marker = tmp_path / "fault-fired"
    env = {**os.environ, "XRAY_FAULT_MARKER": str(marker), "XRAY_SPARK_CACHE": str(weights_cache),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(inject), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, str(tmp_path / "driver.py"), str(images)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])

    assert marker.is_file(), "the injected fault never fired: this test proved nothing"
    assert "injected executor fault" in proc.stderr  # Spark logged the failed attempt ...
    assert result["master"] == "local[2,4]"  # ... and retried it (local[2] alone never retries)
    rows = result["rows"]
    assert len(rows) == 4
    assert [r["featurize_error"] for r in rows] == [None] * 4, rows  # not one row carries the fault
    assert all(r["has_features"] and r["engine"] == "keras:fp32" for r in rows), rows
    evidence(f"injected MemoryError in a Python worker (pid {marker.read_text()}): task retried, "
             f"{len(rows)}/{len(rows)} images featurized, none quarantined")


def test_rows_of_the_old_catch_all_and_of_a_changed_decoder_are_scored_again(spark) -> None:
    """`decode_failed` rows were written for any fault (not the image's verdict): always retried. A file no
    decoder could read is retried only under another decoder stack; the image's own faults never are."""
    from pyspark.sql import functions as F

    from xray_spark.scoring.store import retry_under

    rows = spark.createDataFrame([
        ("quarantined", "decode_failed: MemoryError: ", "now"),
        ("quarantined", "dicom_unsupported: no decoder for JPEG-LS", "now"),
        ("quarantined", "dicom_unsupported: no decoder for JPEG-LS", "before"),
        ("quarantined", "dicom_unsupported: no decoder for JPEG-LS", None),
        ("quarantined", "truncated: cut short", "before"),
        ("ok", None, "before"),
    ], "status string, reason string, decoder string")
    got = [r[0] for r in rows.select(F.coalesce(retry_under("now"), F.lit(False))).collect()]
    assert got == [True, False, True, True, False, False]
