"""Grouped split: patients and duplicate groups never straddle train/test; stratified; deterministic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from xray_spark.data.split import assign_groups, check_no_leak, grouped_split, split_hash

LABELS = ["covid", "no_findings", "pneumonia"]


def synthetic(n_patients: int = 300, seed: int = 0) -> pd.DataFrame:
    """Patients with 1-4 images; ~1/3 of rows have no patient id (unknown, like COVID sources)."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        label = LABELS[p % 3]
        known = p % 3 != 0
        for k in range(int(rng.integers(1, 5))):
            # a few patients have images under two labels, as in the NIH data
            lab = LABELS[(p + 1) % 3] if (k == 1 and p % 25 == 1) else label
            rows.append({"path": f"img/{p:04d}_{k}.png", "sha256": f"{p:04d}{k:02d}" + "0" * 58,
                         "label": lab, "patient_id": f"pat-{p}" if known else [None, "", np.nan][k % 3]})
    return pd.DataFrame(rows)


def dup_pairs(*pairs: tuple[str, str]) -> pd.DataFrame:
    return pd.DataFrame({"path_a": [a for a, _ in pairs], "path_b": [b for _, b in pairs],
                         "kind": "near", "hamming": 3, "correlation": 0.97})


def test_assign_groups_links_patients_and_duplicates_transitively():
    df = pd.DataFrame({
        "path": ["a1", "a2", "b1", "c1", "u1", "u2", "u3"],
        "label": ["covid"] * 7,
        "patient_id": ["A", " A ", "B", "C", None, "", np.nan],
    }, index=[10, 11, 12, 13, 14, 15, 16])  # a non-default index must be respected
    g = assign_groups(df)
    assert g.index.equals(df.index)
    assert g[10] == g[11]  # same patient (whitespace ignored)
    assert len({g[14], g[15], g[16]}) == 3  # unknown patients never link to each other
    assert g.nunique() == 6

    g2 = assign_groups(df, dup_pairs(("a2", "b1"), ("b1", "u1"), ("zzz", "a1")))  # unknown path ignored
    assert g2[10] == g2[11] == g2[12] == g2[14]  # a-b via duplicate, u1 via b1: transitive
    assert g2[13] != g2[10] and g2.nunique() == 4

    shuffled = df.sample(frac=1, random_state=3)
    assert assign_groups(shuffled, dup_pairs(("a2", "b1"))).sort_index().equals(
        assign_groups(df, dup_pairs(("a2", "b1"))).sort_index()
    )  # ids depend on members, not row order


def test_no_patient_or_duplicate_group_on_both_sides():
    df = synthetic()
    # duplicates that link otherwise unrelated patients / unknown-patient images
    pairs = dup_pairs(("img/0001_0.png", "img/0002_0.png"), ("img/0003_0.png", "img/0006_0.png"),
                      ("img/0009_0.png", "img/0010_0.png"))
    groups = assign_groups(df, pairs)
    out = grouped_split(df, groups)
    check_no_leak(out)
    for a, b in zip(pairs["path_a"], pairs["path_b"], strict=True):
        assert out.set_index("path").loc[[a, b], "fold"].nunique() == 1
    known = out[out["patient_id"].astype(str).str.startswith("pat-")]
    assert (known.groupby("patient_id")["split"].nunique() == 1).all()
    assert (out.groupby("group_id")["fold"].nunique() == 1).all()


def test_folds_partition_and_test_is_one_fold():
    df = synthetic()
    out = grouped_split(df, assign_groups(df), folds=5, test_fold=2)
    assert len(out) == len(df) and out["path"].tolist() == df["path"].tolist()
    assert set(out["fold"]) == {0, 1, 2, 3, 4}
    assert ((out["split"] == "test") == (out["fold"] == 2)).all()
    assert 0.15 <= (out["split"] == "test").mean() <= 0.25
    assert set(df.columns) < set(out.columns) and "group_id" not in df.columns  # a copy, input untouched


def test_stratification_roughly_holds():
    df = synthetic(n_patients=600, seed=1)
    out = grouped_split(df, assign_groups(df), seed=7)
    overall = out["label"].value_counts(normalize=True)
    for fold, part in out.groupby("fold"):
        props = part["label"].value_counts(normalize=True)
        assert (props - overall).abs().max() < 0.04, (fold, props.to_dict())


def test_deterministic_per_seed_and_order_independent():
    df = synthetic()
    groups = assign_groups(df)
    a = grouped_split(df, groups, seed=42)
    b = grouped_split(df, groups, seed=42)
    c = grouped_split(df, groups, seed=43)
    assert a["fold"].tolist() == b["fold"].tolist() and split_hash(a) == split_hash(b)
    assert a["fold"].tolist() != c["fold"].tolist() and split_hash(a) != split_hash(c)
    shuffled = df.sample(frac=1, random_state=5)
    d = grouped_split(shuffled, assign_groups(shuffled), seed=42)
    assert d.sort_index()["fold"].tolist() == a["fold"].tolist()
    assert split_hash(d) == split_hash(a)


def test_split_hash_uses_content_hash_and_sees_any_change():
    df = synthetic(n_patients=40)
    out = grouped_split(df, assign_groups(df))
    h = split_hash(out)
    assert len(h) == 64
    moved = out.assign(path="/elsewhere/" + out["path"])
    assert split_hash(moved) == h  # same files, other folder: same split id
    flipped = out.copy()
    flipped.loc[flipped.index[0], "split"] = "train" if flipped["split"].iat[0] == "test" else "test"
    assert split_hash(flipped) != h
    no_sha = out.drop(columns=["sha256"])
    assert split_hash(no_sha) != h and split_hash(no_sha) == split_hash(no_sha.iloc[::-1])


def test_check_no_leak_names_the_leaking_patient_and_group():
    df = pd.DataFrame({"path": ["p1", "p2", "q1"], "label": ["covid"] * 3, "patient_id": ["nih-1", "nih-1", None],
                       "group_id": ["g-a", "g-b", "g-c"], "split": ["train", "test", "test"], "fold": [1, 0, 0]})
    with pytest.raises(ValueError, match="patient_id.*nih-1"):
        check_no_leak(df)
    ok = df.assign(patient_id=["nih-1", "nih-2", None])
    check_no_leak(ok)
    with pytest.raises(ValueError, match="group_id.*g-x"):
        check_no_leak(ok.assign(group_id=["g-x", "g-x", "g-c"]))


def test_fewer_groups_than_folds_is_a_clear_error():
    df = pd.DataFrame({"path": [f"i{k}" for k in range(8)], "label": LABELS[:2] * 4,
                       "patient_id": ["a", "a", "b", "b", "c", "c", "d", "d"]})
    with pytest.raises(ValueError, match=r"only 4 group\(s\).*5 folds"):
        grouped_split(df, assign_groups(df), folds=5)
    assert grouped_split(df, assign_groups(df), folds=4)["fold"].nunique() == 4
    with pytest.raises(ValueError, match="test_fold"):
        grouped_split(df, assign_groups(df), folds=4, test_fold=4)
    with pytest.raises(ValueError, match="index-aligned"):
        grouped_split(df, assign_groups(df).reset_index(drop=True).iloc[:-1], folds=2)


def test_real_nih_patients_with_two_labels_stay_on_one_side(ozturk_dir: Path):
    m = pd.read_csv(ozturk_dir / "manifest.csv", dtype=str, keep_default_na=False)
    df = m[["path", "label", "patient_id"]].copy()
    nih = df[df["patient_id"] != ""]
    both = nih.groupby("patient_id")["label"].nunique()
    cross = set(both[both > 1].index)
    assert len(cross) == 21 and nih["patient_id"].nunique() == 682
    out = grouped_split(df, assign_groups(df), seed=42)
    check_no_leak(out)
    per_patient = out[out["patient_id"].isin(cross)].groupby("patient_id")["split"].nunique()
    assert len(per_patient) == 21 and (per_patient == 1).all()
    assert 0.17 <= (out["split"] == "test").mean() <= 0.23
    overall = out["label"].value_counts(normalize=True)
    test = out[out["split"] == "test"]["label"].value_counts(normalize=True)
    assert (test - overall).abs().max() < 0.03
