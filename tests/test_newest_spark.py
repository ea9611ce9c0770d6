"""Smoke test on the newest pyspark that pyproject.toml allows. The rest of the suite runs on the version
pinned in constraints.txt. Here ingest, train and score run through the CLI's `main` in ONE subprocess (one
JVM) with that newer pyspark first on PYTHONPATH, after a probe of the pyspark that the driver, its JVM and
its Python workers run.

`make test` installs the newest pyspark (and its py4j, nothing else) into .spark-newest and passes its path in
$XRAY_SPARK_NEWEST_PYSPARK. Without the variable this test skips on a developer machine and FAILS when $CI is
set, so CI cannot pass without running it.
"""

from __future__ import annotations

import glob
import os
import re
import time
from importlib import metadata
from pathlib import Path

import pandas as pd
import pytest

from cli_session import run_cli_steps

NEWEST_ENV = "XRAY_SPARK_NEWEST_PYSPARK"

# The Python driver, the JVM it starts and a Python worker (Arrow UDF, the path the featurizer uses) each
# report their Spark version. Spark checks only its workers' Python version, not their pyspark: this does.
# The probe starts the session the commands after it then share (the CLI's get_spark returns it).
PROBE = r"""
import logging
import pyspark
from pyspark.sql.functions import pandas_udf
from xray_spark.config import load_config
from xray_spark.logs import setup_logging
from xray_spark.session import get_spark

setup_logging(logging.INFO)
spark = get_spark(load_config(local=None), master="local[2]", app_name="newest-spark-smoke")

@pandas_udf("string")  # Spark 4.3 parses a DDL return type here: it needs the session first
def worker_pyspark(ids):
    import pyspark
    return ids.map(lambda _: f"{pyspark.__version__} {pyspark.__file__}")

print(f"driver {pyspark.__version__} {pyspark.__file__}")
print(f"jvm {spark.version}")
print(f"worker {spark.range(1).select(worker_pyspark('id')).first()[0]}")
"""

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def newest_pyspark() -> Path:
    value = os.environ.get(NEWEST_ENV, "").strip()
    if not value:
        message = f"${NEWEST_ENV} is not set: `make test` installs the newest pyspark and sets it"
        if os.environ.get("CI", "").strip():
            pytest.fail(f"{message} (CI is set, so this is a failure, not a skip)", pytrace=False)
        pytest.skip(message)
    path = Path(value)
    assert (path / "pyspark").is_dir() and (path / "py4j").is_dir(), f"no pyspark + py4j in {path}"
    return path


def _overlay_version(overlay: Path) -> str:
    found = metadata.distributions(path=[str(overlay)])
    versions = [d.version for d in found if d.metadata["Name"] == "pyspark"]
    assert len(versions) == 1, f"expected one pyspark in {overlay}, found {versions}"
    return versions[0]


def _env(overlay: Path) -> dict[str, str]:
    """This environment with the overlay first on PYTHONPATH. PYTHONPATH also reaches the JVM, which passes it
    on to its Python workers. Anything that could point Spark or MLflow elsewhere is removed."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("SPARK_HOME", "PYSPARK_GATEWAY_PORT", "PYSPARK_GATEWAY_SECRET")
           and not k.startswith("MLFLOW_")}
    env["PYTHONPATH"] = os.pathsep.join([str(overlay), *filter(None, [os.environ.get("PYTHONPATH")])])
    return env


def test_ingest_train_score_on_the_newest_pyspark(newest_pyspark: Path, small_data: Path, tmp_path: Path,
                                                  evidence) -> None:
    """Over 60 s (~2-3 min): a process of its own (another pyspark needs another JVM) that ingests, featurizes
    (its Python workers load TensorFlow anew), trains and scores 36 images."""
    newest, pinned = _overlay_version(newest_pyspark), metadata.version("pyspark")
    env = _env(newest_pyspark)
    images = sorted(str(p) for p in small_data.rglob("*") if p.is_file())
    n_images = len(images)

    out, train_out, preds = tmp_path / "ingest", tmp_path / "train", tmp_path / "preds"
    db = f"sqlite:///{tmp_path}/mlflow.db"
    start = time.monotonic()
    probe_step, ingest_step, train_step, _ = run_cli_steps([
        ["ingest", "--data", str(small_data), "--out", str(out)],
        ["train", "--data", str(out), "--backbones", "ResNet50", "--heads", "lr", "--tasks", "binary",
         "--weights", "none", "--out", str(train_out), "--tracking-uri", db],
        ["score", "--model", "models:/xray-spark-binary@champion", "--tracking-uri", db,
         "--input", str(small_data), "--output", str(preds)],
    ], env=env, prelude=PROBE)
    seconds = time.monotonic() - start

    # the Python driver, its JVM and its Python workers all run the overlay's pyspark
    printed = probe_step.stdout.splitlines()
    probe = dict(line.split(" ", 1) for line in printed if line.startswith(("driver ", "jvm ", "worker ")))
    assert probe["driver"] == f"{newest} {newest_pyspark / 'pyspark' / '__init__.py'}", probe
    assert probe["jvm"] == newest, probe
    # workers import SPARK_HOME/python/lib/pyspark.zip, i.e. the pyspark that started the JVM: the overlay's
    version, file = probe["worker"].split(" ", 1)
    assert version == newest and file.startswith(f"{newest_pyspark}/pyspark/"), probe
    # the one session the commands shared logged its JVM's Spark version (xray_spark.session.get_spark)
    started = re.findall(r"\bSpark (\S+), master ", probe_step.stderr)
    assert started == [newest], f"Spark {started} in the log, expected {newest}"

    assert len(pd.read_parquet(out / "images")) == n_images
    assert f"files read: {n_images} = ok {n_images} + quarantined 0" in ingest_step.stdout
    assert "champion binary: models:/xray-spark-binary@champion" in train_step.stdout
    files = sorted(glob.glob(str(preds / "score_date=*" / "*.parquet")))
    assert files, f"no predictions under {preds}"
    scored = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    assert len(scored) == n_images  # one row per input image
    assert sorted(scored["path"].str.replace(r"^file:(//)?", "", regex=True)) == images
    assert scored["status"].eq("ok").all() and scored["predicted_label"].notna().all()

    took = f"ingest, train and score in one process: {seconds:.0f} s"
    if newest == pinned:  # the pin is the newest: the whole suite covers it, this smoke only repeats it
        evidence(f"newest pyspark {newest} == pinned {pinned}: the smoke repeated the suite's version "
                 f"({took})")
    else:
        evidence(f"newest pyspark smoke: pyspark {newest} (suite pinned to {pinned}): ingest, train, score "
                 f"of {n_images} images ok, driver + JVM + Python workers on {newest} ({took})")
