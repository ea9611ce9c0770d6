"""Grouped split on Spark: patients and duplicate groups never straddle train/test; stratified; seeded;
independent of row order; small folders get fewer folds; leaks are named; the split hash sees any change."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import local
from xray_spark.data.groups import assign_group_ids, component_frame, image_id_col, star_edges
from xray_spark.data.split import (
    assign_folds,
    check_no_leak,
    effective_folds,
    group_label_counts,
    split_hash,
    split_images,
)
from xray_spark.errors import UserError

LABELS = ["covid", "no_findings", "pneumonia"]
IMAGES_SCHEMA = "path string, rel_path string, sha256 string, label string, patient_id string"
IMAGES_SCHEMA_COLS = [c.split()[0] for c in IMAGES_SCHEMA.split(",")]
# duplicates that link otherwise unrelated patients / unknown-patient images
DUPS = [("img/0001_0.png", "img/0002_0.png"), ("img/0003_0.png", "img/0006_0.png"),
        ("img/0009_0.png", "img/0010_0.png")]


def synthetic(n_patients: int = 300, seed: int = 0) -> pd.DataFrame:
    """Patients with 1-4 images; a third of them have no patient id (unknown, like the COVID sources)."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        label = LABELS[p % 3]
        for k in range(int(rng.integers(1, 5))):
            # a few patients have images under two labels, as in the NIH data
            lab = LABELS[(p + 1) % 3] if (k == 1 and p % 25 == 1) else label
            rel = f"img/{p:04d}_{k}.png"
            rows.append({"path": f"file:/data/{rel}", "rel_path": rel, "sha256": f"{p:04d}{k:02d}" + "0" * 58,
                         "label": lab, "patient_id": f"pat-{p}" if p % 3 else [None, "", " "][k % 3]})
    return pd.DataFrame(rows)


def with_groups(spark, pdf: pd.DataFrame, dups=DUPS, *, partitions: int | None = None):
    """The ingest recipe: ids from relative paths, patient stars + duplicate edges -> group_id, dup_group."""
    from pyspark.sql import functions as F

    images = spark.createDataFrame(pdf[IMAGES_SCHEMA_COLS], IMAGES_SCHEMA)
    if partitions:
        images = images.repartition(partitions)
    images = images.withColumn("id", image_id_col(F.col("rel_path")))
    ids = images.select("rel_path", "id")
    dup = (local(spark, dups, "ra string, rb string")
           .join(ids.select(F.col("rel_path").alias("ra"), F.col("id").alias("a")), "ra")
           .join(ids.select(F.col("rel_path").alias("rb"), F.col("id").alias("b")), "rb").select("a", "b"))
    out = assign_group_ids(images, component_frame(spark, dup.unionByName(star_edges(images, "patient_id"))),
                           "group_id", "g-")
    return assign_group_ids(out, component_frame(spark, dup), "dup_group", "dup-", singletons=False)


def folds_of(df) -> dict[str, int]:
    return {r["rel_path"]: r["fold"] for r in df.select("rel_path", "fold").collect()}


def pandas_counts(pdf: pd.DataFrame) -> pd.DataFrame:
    """(group_id, label, n) without Spark: a group per known patient, else per image."""
    pid = pdf["patient_id"].fillna("").str.strip()
    g = pid.where(pid != "", "img:" + pdf["rel_path"])
    return pdf.assign(group_id=g).groupby(["group_id", "label"]).size().rename("n").reset_index()


@pytest.fixture(scope="module")
def grouped(spark):
    df = with_groups(spark, synthetic()).cache()
    yield df
    df.unpersist()


@pytest.fixture(scope="module")
def split42(spark, grouped):
    out, used = split_images(spark, grouped, seed=42, folds=5, test_fold=2)
    yield out.cache(), used
    out.unpersist()


# ---------------------------------------------------------------- grouped, partitioned, stratified


def test_no_patient_or_duplicate_group_on_both_sides(split42):
    out, _ = split42
    check_no_leak(out)
    pdf = out.toPandas()
    assert (pdf.groupby("group_id")["fold"].nunique() == 1).all()
    known = pdf[pdf["patient_id"].fillna("").str.startswith("pat-")]
    assert (known.groupby("patient_id")["split"].nunique() == 1).all()
    sides = pdf.set_index("rel_path")
    for a, b in DUPS:
        assert sides.loc[a, "fold"] == sides.loc[b, "fold"], (a, b)
        assert sides.loc[a, "dup_group"] == sides.loc[b, "dup_group"] is not None
    # the duplicates really did join groups that patients alone would not (0001 and 0002 are two patients)
    assert pdf[pdf["patient_id"].isin(["pat-1", "pat-2"])]["group_id"].nunique() == 1


def test_folds_partition_the_images_and_test_is_one_fold(split42, grouped):
    out, used = split42
    pdf = out.toPandas()
    assert used == 5 and len(pdf) == grouped.count() and pdf["rel_path"].is_unique
    assert set(pdf["fold"]) == {0, 1, 2, 3, 4}
    assert ((pdf["split"] == "test") == (pdf["fold"] == 2)).all() and set(pdf["split"]) == {"train", "test"}
    assert 0.15 <= (pdf["split"] == "test").mean() <= 0.25
    assert set(grouped.columns) < set(out.columns) and {"fold", "split"} <= set(out.columns)


def test_stratification_roughly_holds():
    """assign_folds (what split_images runs on the driver) on 600 patients: every fold mirrors the labels."""
    pdf = synthetic(n_patients=600, seed=1)
    counts = pandas_counts(pdf)
    table = assign_folds(counts, seed=7, folds=5)
    assert list(table.columns) == ["group_id", "fold"] and table["group_id"].is_unique
    assert set(table["group_id"]) == set(counts["group_id"])
    per_image = counts.merge(table, on="group_id")
    overall = per_image.groupby("label")["n"].sum() / per_image["n"].sum()
    for fold, part in per_image.groupby("fold"):
        props = part.groupby("label")["n"].sum() / part["n"].sum()
        assert (props - overall).abs().max() < 0.02, (fold, props.to_dict())  # random folds: ~0.03


def test_split_images_is_stratified_too(split42):
    pdf = split42[0].toPandas()
    overall = pdf["label"].value_counts(normalize=True)
    test = pdf[pdf["split"] == "test"]["label"].value_counts(normalize=True)
    assert (test - overall).abs().max() < 0.02, test.to_dict()


# ---------------------------------------------------------------- seeded and order-independent


def test_seeded_same_seed_same_folds_other_seed_differs(spark, grouped, split42):
    a = split42[0]
    b, _ = split_images(spark, grouped, seed=42, folds=5, test_fold=2)
    c, _ = split_images(spark, grouped, seed=43, folds=5, test_fold=2)
    assert folds_of(a) == folds_of(b) and split_hash(a) == split_hash(b)
    assert folds_of(a) != folds_of(c) and split_hash(a) != split_hash(c)


def test_independent_of_row_order(spark, split42):
    shuffled = synthetic().sample(frac=1, random_state=5)
    d, used = split_images(spark, with_groups(spark, shuffled, DUPS[::-1], partitions=3), seed=42, folds=5,
                           test_fold=2)
    a = split42[0]
    assert used == 5 and folds_of(d) == folds_of(a)
    assert split_hash(d) == split_hash(a)

    counts = pandas_counts(synthetic())
    want = assign_folds(counts, seed=3, folds=4)
    got = assign_folds(counts.sample(frac=1, random_state=9), seed=3, folds=4)
    pd.testing.assert_frame_equal(got, want)


# ---------------------------------------------------------------- small folders and bad settings


def counts_frame(groups_per_label: dict[str, int]) -> pd.DataFrame:
    rows = [(f"{lab}-{k}", lab, 1 + k % 3) for lab, n in groups_per_label.items() for k in range(n)]
    return pd.DataFrame(rows, columns=["group_id", "label", "n"])


def test_effective_folds_lowers_folds_with_a_warning(caplog: pytest.LogCaptureFixture):
    counts = counts_frame({"covid": 3, "pneumonia": 9})
    with caplog.at_level(logging.WARNING, logger="xray_spark.data.split"):
        assert effective_folds(counts, 5) == 3
    assert any(r.levelno == logging.WARNING and "3 folds instead of 5" in r.getMessage()
               for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="xray_spark.data.split"):
        assert effective_folds(counts, 3) == 3 and effective_folds(counts, 2) == 2
    assert not caplog.records


@pytest.mark.parametrize("groups_per_label", [{"covid": 1, "pneumonia": 9}, {"covid": 4, "pneumonia": 1}, {}])
def test_effective_folds_refuses_a_class_with_fewer_than_two_groups(groups_per_label):
    with pytest.raises(UserError, match="too few images to split"):
        effective_folds(counts_frame(groups_per_label), 5)


def test_assign_folds_bad_settings_are_clear_errors():
    counts = counts_frame({"covid": 2, "pneumonia": 2})
    with pytest.raises(ValueError, match="folds must be >= 2"):
        assign_folds(counts, seed=0, folds=1)
    with pytest.raises(ValueError, match=r"only 4 group\(s\) for 5 folds"):
        assign_folds(counts, seed=0, folds=5)
    assert assign_folds(counts, seed=0, folds=2)["fold"].nunique() == 2


def test_small_folder_gets_fewer_folds_and_a_valid_test_fold(spark):
    """3 patients per class: 3 folds instead of 5, and a test fold beyond them falls back to the last one."""
    schema = "rel_path string, label string, group_id string"
    rows = [(f"{lab}/{p}_{k}.png", lab, f"g-{lab}-{p}") for lab in ("covid", "pneumonia") for p in range(3)
            for k in range(2)]
    images = local(spark, rows, schema)
    counts = group_label_counts(images)
    assert (sorted(counts.columns) == ["group_id", "label", "n"] and len(counts) == 6
            and (counts["n"] == 2).all())
    out, used = split_images(spark, images, seed=1, folds=5, test_fold=4)
    pdf = out.toPandas()
    assert used == 3 and set(pdf["fold"]) == {0, 1, 2} and len(pdf) == len(rows)
    assert ((pdf["split"] == "test") == (pdf["fold"] == 2)).all()
    assert (pdf.groupby("group_id")["fold"].nunique() == 1).all()

    one_covid = local(spark, rows[:2] + rows[6:], schema)  # covid has a single group left
    with pytest.raises(UserError, match="too few images to split"):
        split_images(spark, one_covid, seed=1, folds=5, test_fold=0)


# ---------------------------------------------------------------- leak check


LEAK_SCHEMA = "rel_path string, patient_id string, group_id string, dup_group string, split string, fold int"


def test_check_no_leak_names_the_leaking_patient_group_and_duplicate_group(spark):
    rows = [("p1", "nih-1", "g-a", None, "train", 1), ("p2", " nih-1", "g-b", None, "test", 0),
            ("q1", None, "g-c", None, "test", 0), ("q2", "", "g-d", None, "train", 1),
            ("q3", "  ", "g-e", None, "test", 0)]  # blank patient ids are unknown, never a leak
    with pytest.raises(ValueError, match=r"1 patient_id\(s\) in both train and test: nih-1") as err:
        check_no_leak(local(spark, rows, LEAK_SCHEMA))
    assert "group_id" not in str(err.value)
    ok = [(r[0], f"nih-{k}" if r[1] else r[1], *r[2:]) for k, r in enumerate(rows)]
    check_no_leak(local(spark, ok, LEAK_SCHEMA))
    leaky = [(*r[:2], "g-x" if r[0] in ("p1", "p2") else r[2], "dup-y" if r[0] in ("q1", "q2") else None,
              *r[4:])
             for r in ok]
    with pytest.raises(ValueError, match=r"group_id\(s\) in both train and test: g-x.*dup_group.*dup-y"):
        check_no_leak(local(spark, leaky, LEAK_SCHEMA))
    check_no_leak(local(spark, ok, LEAK_SCHEMA).drop("patient_id", "dup_group"))  # absent columns are skipped


def test_check_no_leak_lists_five_and_counts_the_rest(spark):
    rows = [(f"i{k}{s}", f"pat-{k}", f"g-{k}{s}", None, side, 0 if side == "test" else 1)
            for k in range(7) for s, side in (("a", "train"), ("b", "test"))]
    with pytest.raises(ValueError, match=r"7 patient_id\(s\) in both train and test: pat-0, pat-1, pat-2, "
                                         r"pat-3, pat-4 \(\+2 more\)"):
        check_no_leak(local(spark, rows, LEAK_SCHEMA))


# ---------------------------------------------------------------- split hash


HASH_SCHEMA = "rel_path string, sha256 string, split string, fold int"


def test_split_hash_stable_under_row_order_and_sees_any_change(spark):
    rng = np.random.default_rng(0)
    rows = [(f"img/{k}.png", f"{k:064x}", "test" if k % 5 == 0 else "train", k % 5) for k in range(60)]
    h = split_hash(local(spark, rows, HASH_SCHEMA))
    assert len(h) == 64 and int(h, 16) >= 0
    shuffled = [rows[i] for i in rng.permutation(len(rows))]
    assert split_hash(local(spark, shuffled, HASH_SCHEMA).repartition(4)) == h
    moved = [(f"elsewhere/{r[0]}", *r[1:]) for r in rows]
    assert split_hash(local(spark, moved, HASH_SCHEMA)) == h  # same files, other folder: same split id
    flipped = [("img/0.png", rows[0][1], "train", 0), *rows[1:]]  # one image changes side
    assert split_hash(local(spark, flipped, HASH_SCHEMA)) != h
    refolded = [*rows[:-1], (*rows[-1][:3], (rows[-1][3] + 1) % 5)]  # one train image changes fold
    assert split_hash(local(spark, refolded, HASH_SCHEMA)) != h
    assert split_hash(local(spark, rows[:-1], HASH_SCHEMA)) != h  # one image fewer


def test_split_hash_falls_back_to_the_relative_path(spark):
    rows = [(f"img/{k}.png", None if k % 2 else "", "train" if k % 3 else "test", k % 3) for k in range(12)]
    h = split_hash(local(spark, rows, HASH_SCHEMA))
    assert split_hash(local(spark, rows[::-1], HASH_SCHEMA)) == h
    assert split_hash(local(spark, [("renamed.png", *rows[0][1:]), *rows[1:]], HASH_SCHEMA)) != h


# ---------------------------------------------------------------- real NIH patients


def test_real_nih_patients_with_two_labels_stay_on_one_side(spark, ozturk_dir: Path):
    m = pd.read_csv(ozturk_dir / "manifest.csv", dtype=str, keep_default_na=False)
    nih = m[m["patient_id"] != ""]
    both = nih.groupby("patient_id")["label"].nunique()
    cross = set(both[both > 1].index)
    assert len(cross) == 21 and nih["patient_id"].nunique() == 682
    pdf = pd.DataFrame({"path": "file:/data/" + m["path"], "rel_path": m["path"],
                        "sha256": m["original_sha256"], "label": m["label"], "patient_id": m["patient_id"]})
    out, used = split_images(spark, with_groups(spark, pdf, dups=[]), seed=42, folds=5, test_fold=0)
    check_no_leak(out)
    res = out.toPandas()
    assert used == 5 and len(res) == len(m) == 1124
    per_patient = res[res["patient_id"].isin(cross)].groupby("patient_id")["split"].nunique()
    assert len(per_patient) == 21 and (per_patient == 1).all()
    assert 0.17 <= (res["split"] == "test").mean() <= 0.23
    overall = res["label"].value_counts(normalize=True)
    test = res[res["split"] == "test"]["label"].value_counts(normalize=True)
    assert (test - overall).abs().max() < 0.03
