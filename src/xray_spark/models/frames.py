"""The labelled rows every model is fitted and measured on, and a model's predictions on them.

`labels_frame` reads the ok images of an images table with label, split, fold, group, source and file
properties; `task_frame` keeps one task's classes with the fixed label index (and class weights);
`predict_split` turns a model's output on the test side into plain arrays. Shared by the MLlib heads (`train`)
and the fine-tuned pipeline (`finetune`), so both are fitted and measured on the same rows in the same way.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from xray_spark.models.shift_stage import PROPS_COL
from xray_spark.tasks import Task

FEATURES = "features"  # the feature vector every head reads
LABEL = "label_index"  # the task's fixed label index (tasks.Task.labels)
WEIGHT = "class_weight"  # inverse class frequency, when class weights are on


def labels_frame(images: DataFrame) -> DataFrame:
    """The ok images' labels, split and file properties (the shift check's, models/shift.py: read by
    ingest's decode, equal to what FileProperties reads from the bytes at scoring time). A Spark DataFrame
    over the images table; nothing is collected."""
    props = F.struct("format", "mode", "bit_depth", F.least("width", "height").alias("short_side"),
                     F.greatest("width", "height").alias("long_side"),
                     F.col("file_size").cast("long").alias("file_size"))
    return images.where("status = 'ok'").select("path", "sha256", "label", "split", F.col("fold").cast("int"),
                                                 "group_id", "source", props.alias(PROPS_COL))


def task_frame(sdf, task: Task, *, weighted: bool):
    """Keep the task's classes, add the fixed label index and (optionally) inverse-frequency class weights."""
    df = sdf.where(F.col("label").isin(list(task.labels)))
    mapping = F.create_map(*[x for i, lab in enumerate(task.labels) for x in (F.lit(lab), F.lit(float(i)))])
    df = df.withColumn(LABEL, mapping[F.col("label")])
    if weighted:
        counts = {r["label"]: r["count"]
                  for r in df.where(F.col("split") == "train").groupBy("label").count().collect()}
        total = sum(counts.values())
        w = {lab: total / (len(counts) * n) for lab, n in counts.items()}
        wmap = F.create_map(*[x for lab, v in w.items() for x in (F.lit(lab), F.lit(float(v)))])
        df = df.withColumn(WEIGHT, wmap[F.col("label")])
    return df


def _softmax(scores: np.ndarray) -> np.ndarray:
    z = scores - scores.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def predict_split(model: Any, test, probabilistic: bool) -> dict[str, np.ndarray | None]:
    """The FitResult arrays (y_true, y_pred, proba, groups, paths, sources) of `model` on the test side of a
    task frame. Shared by the fitted heads and the fine-tuned pipeline, so both are measured on the same
    rows in the same way."""
    cols = ["path", "group_id", LABEL, "prediction", "rawPrediction"]
    if "source" in test.columns:
        cols.append("source")
    if probabilistic:
        cols.append("probability")
    pdf = model.transform(test).select(*cols).toPandas()
    if probabilistic:
        proba = np.stack([np.asarray(v.toArray(), dtype=float) for v in pdf["probability"]])
    else:
        proba = _softmax(np.stack([np.asarray(v.toArray(), dtype=float) for v in pdf["rawPrediction"]]))
    return {
        "y_true": pdf[LABEL].to_numpy(dtype=int),
        "y_pred": pdf["prediction"].to_numpy(dtype=int),
        "proba": proba,
        "groups": pdf["group_id"].astype(str).to_numpy(),
        "paths": pdf["path"].astype(str).to_numpy(),
        "sources": pdf["source"].astype(str).to_numpy() if "source" in pdf else None,
    }
