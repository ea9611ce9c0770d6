"""Grouped, stratified train/test split: no patient and no duplicate group ever sits on both sides.

Why groups: an image-level split puts follow-ups of one patient (and near-identical copies) in train and
test, so the test score measures recall of a person, not diagnosis. Folds are assigned per group by
scikit-learn's StratifiedGroupKFold, from one row per (group, label) with its image count: the driver
sees group ids and counts, never image rows. Group ids derive from relative paths, so the split does not
change when the data folder moves or is mounted under another scheme.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import reduce
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from xray_spark.errors import UserError

if TYPE_CHECKING:
    from pyspark.sql import Column, SparkSession

log = logging.getLogger(__name__)


COUNT_COLUMNS = ["group_id", "label", "n"]
LEAK_KEYS = ("patient_id", "group_id", "dup_group")


def group_label_frame(images: DataFrame) -> DataFrame:
    """(group_id, label, n): one small row per group and label, what the fold assignment needs (lazy)."""
    return images.groupBy("group_id", "label").agg(F.count(F.lit(1)).alias("n"))


def group_label_counts(images: DataFrame) -> pd.DataFrame:
    """group_label_frame, collected for the fold assignment."""
    return group_label_frame(images).toPandas()


def effective_folds(counts: pd.DataFrame, folds: int) -> int:
    """Small folders (smoke tests, a first look) cannot fill `folds` stratified folds: use fewer, and say
    so."""
    per_class = counts.groupby("label")["group_id"].nunique()
    if per_class.empty or per_class.min() < 2:
        raise UserError(f"too few images to split: groups per class {per_class.to_dict()}; "
                        "need at least 2 per class")
    usable = int(min(folds, per_class.min()))
    if usable < folds:
        log.warning("only %d groups in the smallest class: using %d folds instead of %d (test share 1/%d)",
                    per_class.min(), usable, folds, usable)
    return usable


def assign_folds(counts: pd.DataFrame, *, seed: int, folds: int) -> pd.DataFrame:
    """(group_id, label, n) -> (group_id, fold). StratifiedGroupKFold stratifies on labels weighted by image
    counts; its inputs are expanded from the counts (ints only) and groups are visited in sorted-id order,
    so the folds depend on the seed and the data, not on the order rows arrive in."""
    if folds < 2:
        raise ValueError(f"assign_folds: folds must be >= 2, got {folds}")
    counts = counts.sort_values(["group_id", "label"]).reset_index(drop=True)
    gids, g_code = np.unique(counts["group_id"].to_numpy(dtype=str), return_inverse=True)
    if len(gids) < folds:
        raise ValueError(f"assign_folds: only {len(gids)} group(s) for {folds} folds; "
                         "add data or lower split.folds")
    _, y_code = np.unique(counts["label"].to_numpy(dtype=str), return_inverse=True)
    n = counts["n"].to_numpy(dtype=np.int64)
    y, groups = np.repeat(y_code, n), np.repeat(g_code, n)
    from sklearn.model_selection import StratifiedGroupKFold  # lazy: ~1 s; every CLI start loads this module

    fold_of_group = np.full(len(gids), -1, dtype=np.int64)
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    for k, (_, test_idx) in enumerate(splitter.split(np.zeros(len(y)), y, groups)):
        fold_of_group[np.unique(groups[test_idx])] = k
    if (fold_of_group < 0).any():  # StratifiedGroupKFold covers every group; guards a future sklearn change
        raise RuntimeError("assign_folds: some groups were not assigned to a fold")
    return pd.DataFrame({"group_id": gids, "fold": fold_of_group.astype(np.int32)})


@dataclass(frozen=True)
class FoldPlan:
    """Folds per group, decided on the driver from group_label_counts: group ids and ints only."""

    table: pd.DataFrame  # (group_id, fold)
    folds: int  # folds used (fewer than asked for small folders)
    test: int  # the test fold


def plan_folds(counts: pd.DataFrame, *, seed: int, folds: int, test_fold: int) -> FoldPlan:
    """(group_id, label, n) counts -> the fold of every group; the test fold falls back to the last one used
    when a small folder gets fewer folds."""
    used = effective_folds(counts, folds)
    table = assign_folds(counts, seed=seed, folds=used)
    test = min(test_fold, used - 1)
    sides = table["fold"].value_counts()
    log.info("split: %d groups, %d folds (seed %d, test fold %d): %d test groups", len(table), used, seed,
             test, int(sides.get(test, 0)))
    return FoldPlan(table=table, folds=used, test=test)


def apply_folds(spark: SparkSession, images: DataFrame, plan: FoldPlan) -> DataFrame:
    """images (group_id, ...) -> + fold, split ("test" when fold == plan.test): a broadcast of group ids."""
    fold_df = spark.createDataFrame(plan.table, "group_id string, fold int")
    return images.join(F.broadcast(fold_df), "group_id", "left").withColumn(
        "split", F.when(F.col("fold") == plan.test, "test").otherwise("train"))


def split_images(spark: SparkSession, images: DataFrame, *, seed: int, folds: int,
                 test_fold: int) -> tuple[DataFrame, int]:
    """images (group_id, label, ...) -> + fold, split ("test" when fold == test_fold); returns the folds
    used."""
    plan = plan_folds(group_label_counts(images), seed=seed, folds=folds, test_fold=test_fold)
    return apply_folds(spark, images, plan), plan.folds


def _key(col: str) -> Column:
    return F.trim(F.col(col))


def spanning_keys(images: DataFrame) -> DataFrame:
    """(column, n): for patient_id and dup_group, how many keys have rows in more than one group (lazy).

    Why: folds are assigned per group, so a key can sit on both sides of the split only if its rows carry
    two groups. Counting those keys rides on the split's own aggregate; the full check_no_leak (a job per
    column) is needed only when one exists, which groups built from patients and duplicates never give."""
    parts = []
    for col in LEAK_KEYS:
        if col == "group_id" or col not in images.columns:
            continue  # a group is on one side by construction: its fold comes from its id
        key = _key(col)
        spread = (images.where(key.isNotNull() & (key != "")).groupBy(key.alias("k"))
                  .agg(F.countDistinct("group_id").alias("groups")).where("groups > 1"))
        parts.append(spread.agg(F.lit(col).alias("column"), F.count(F.lit(1)).alias("n")))
    if not parts:
        return images.sparkSession.createDataFrame([], "column string, n long")
    return reduce(DataFrame.unionByName, parts)


def check_no_leak(images: DataFrame) -> None:
    """Raise ValueError naming any patient_id / group_id / dup_group found in both train and test."""
    problems = []
    for col in LEAK_KEYS:
        if col not in images.columns:
            continue
        key = _key(col)
        leaking = (images.where(key.isNotNull() & (key != "")).groupBy(key.alias("k"))
                   .agg(F.countDistinct("split").alias("sides")).where("sides > 1"))
        found = [r["k"] for r in leaking.orderBy("k").limit(6).collect()]
        if found:
            total = leaking.count()
            shown = ", ".join(found[:5]) + (f" (+{total - 5} more)" if total > 5 else "")
            problems.append(f"{total} {col}(s) in both train and test: {shown}")
    if problems:
        raise ValueError("split leak: " + "; ".join(problems))


def split_hash_frame(images: DataFrame) -> DataFrame:
    """One row, `h`: sha256 over the sorted lines "key<TAB>split<TAB>fold" (key: content sha256, else the
    relative path), computed on executors (lazy; see split_hash)."""
    key = F.coalesce(F.when(F.length("sha256") > 0, F.col("sha256")), F.col("rel_path"))
    line = F.concat_ws("\t", key, F.col("split"), F.col("fold").cast("string"))
    return images.agg(F.sha2(F.concat(F.concat_ws("\n", F.sort_array(F.collect_list(line))), F.lit("\n")),
                             256).alias("h"))


def split_hash(images: DataFrame) -> str:
    """Names the split in MLflow params and survives moving the data folder (split_hash_frame). One row comes
    back."""
    return str(split_hash_frame(images).first()["h"])
