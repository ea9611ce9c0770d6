"""Leave-one-source-out (`train --eval leave-one-source-out`): which sources can be held out, and the split
that holds one out. Small aggregates only; train/run.py fits, measures and logs."""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from xray_spark.tasks import Task

LOSO_MIN_IMAGES = 5  # a held-out source smaller than this says nothing, even with intervals


def loso_plan(labels: DataFrame, task: Task, min_images: int = LOSO_MIN_IMAGES) -> dict[str, str | None]:
    """source -> None when it can be held out for `task`, else why not. It can when it has at least
    `min_images` images of >= 2 of the task's classes and the other sources together cover every class (a
    head cannot learn a class it never sees)."""
    counts = (labels.where(F.col("label").isin(list(task.labels))).groupBy("source", "label").count()
              .collect())  # one row per (source, class): a small aggregate
    per_source: dict[str, dict[str, int]] = {}
    for r in counts:
        per_source.setdefault(r["source"], {})[r["label"]] = r["count"]
    plan: dict[str, str | None] = {}
    for source, classes in sorted(per_source.items()):
        others = {lab for s, c in per_source.items() if s != source for lab in c}
        missing = [lab for lab in task.labels if lab not in others]
        if len(per_source) < 2:
            plan[source] = "the only source"
        elif sum(classes.values()) < min_images or len(classes) < 2:
            plan[source] = (f"{sum(classes.values())} images of {len(classes)} class(es); "
                            f"need {min_images} of 2")
        elif missing:
            plan[source] = f"the other sources have no {', '.join(missing)} to train on"
        else:
            plan[source] = None
    return plan


def held_out_split(labels: DataFrame, source: str) -> DataFrame:
    """`labels` with split = test for `source` and train for every other source, minus training images that
    share a group with a held-out one (the same image published by two sources would otherwise leak)."""
    test = labels.where(F.col("source") == source)
    train = (labels.where(F.col("source") != source)
             .join(test.select("group_id").distinct(), "group_id", "left_anti"))
    return (train.withColumn("split", F.lit("train"))
            .unionByName(test.withColumn("split", F.lit("test"))))
