"""Reuse-or-run ingestion and re-read image bytes for the ok rows: shared by featurize, train and demo.

Why: every later step must see the same persisted split and the same bytes ingest validated.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from xray_spark.config import Config


def load_or_ingest(spark, data: str | Path, out_dir: Path, cfg: Config) -> tuple[pd.DataFrame, dict]:
    """An ingest output folder (images/ + split.csv) is reused as is; a raw data folder is ingested first.

    Reusing keeps the split identical across every later train/featurize run (paired comparisons).
    """
    from xray_spark.data.ingest import ingest

    data = Path(data)
    if (data / "summary.json").is_file() and (data / "images").is_dir():
        ingest_dir = data
    else:
        ingest_dir = out_dir / "ingest"
        previous = ingest_dir / "summary.json"
        if not (previous.is_file() and json.loads(previous.read_text()).get("data_dir") == str(data.resolve())):
            ingest(spark, data, ingest_dir, cfg)
    summary = json.loads((ingest_dir / "summary.json").read_text())
    images = spark.read.parquet(str(ingest_dir / "images")).toPandas()
    return images, summary


def image_contents(spark, images: pd.DataFrame, data_dir: str):
    """(sha256, content) for the ok images, read again with binaryFile (one row per distinct content)."""
    from pyspark.sql import functions as F

    from xray_spark.data.ingest import read_binary_files

    ok = images[images["status"] == "ok"][["path", "sha256"]]
    wanted = spark.createDataFrame(ok)
    files = read_binary_files(spark, data_dir).select("path", "content")
    files = files.withColumn("key", path_key_expr(F.col("path"))).drop("path")
    joined = files.join(wanted, files["key"] == wanted["path"], "inner").select("sha256", "content")
    return joined.dropDuplicates(["sha256"])


def path_key_expr(col):
    """Spark-side twin of ingest.path_key: binaryFile URI `file:/a%20b/x.png` -> `/a b/x.png`."""
    from pyspark.sql import functions as F

    return F.url_decode(F.regexp_replace(col, r"^file:(//)?", ""))
