"""Grouped, stratified train/test split: no patient and no duplicate group ever sits on both sides.

Why groups: an image-level split puts follow-ups of one patient (and near-identical copies) in train and
test, so the test score measures recall of a person, not diagnosis. A group joins every image of one
patient_id and every confirmed duplicate pair, transitively; folds are assigned per group.
"""

from __future__ import annotations

import hashlib
import logging

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from sklearn.model_selection import StratifiedGroupKFold

log = logging.getLogger(__name__)


def clean_patient_ids(values: pd.Series) -> pd.Series:
    """None / NaN / empty / whitespace -> NA: an unknown patient links nothing."""
    text = values.astype("string").str.strip()
    return text.where(text.notna() & (text != ""), pd.NA)


def _star_edges(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows sharing a code (>= 0) -> edges from the first such row to each other one."""
    pos = np.flatnonzero(codes >= 0)
    first = pd.Series(pos).groupby(codes[pos]).transform("first").to_numpy()
    keep = pos != first
    return first[keep], pos[keep]


def assign_groups(df: pd.DataFrame, dup_pairs: pd.DataFrame | None = None) -> pd.Series:
    """Group id per row (index aligned with `df`): connected components of patient links + duplicate pairs.

    Ids are derived from the member paths, so they do not depend on row order.
    """
    n = len(df)
    if n == 0:
        return pd.Series([], index=df.index, dtype=object, name="group_id")
    paths = df["path"].astype(str).to_numpy()
    if pd.Series(paths).duplicated().any():
        raise ValueError(f"assign_groups: duplicated path(s), e.g. {pd.Series(paths)[pd.Series(paths).duplicated()].iat[0]}")
    heads, tails = [], []
    if "patient_id" in df.columns:
        codes, _ = pd.factorize(clean_patient_ids(df["patient_id"]))
        a, b = _star_edges(codes.astype(np.int64))
        heads.append(a)
        tails.append(b)
    if dup_pairs is not None and len(dup_pairs):
        pos = pd.Series(np.arange(n), index=paths)
        known = dup_pairs["path_a"].isin(pos.index) & dup_pairs["path_b"].isin(pos.index)
        if (~known).any():
            log.debug("assign_groups: %d duplicate pairs name paths not in df; ignored", int((~known).sum()))
        heads.append(pos[dup_pairs.loc[known, "path_a"]].to_numpy())
        tails.append(pos[dup_pairs.loc[known, "path_b"]].to_numpy())
    a = np.concatenate(heads) if heads else np.empty(0, np.int64)
    b = np.concatenate(tails) if tails else np.empty(0, np.int64)
    graph = coo_matrix((np.ones(len(a), dtype=np.int8), (a, b)), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    ids = pd.Series(paths).groupby(comp).agg(
        lambda p: "g-" + hashlib.sha256("\n".join(sorted(p)).encode()).hexdigest()[:12]
    )
    return pd.Series(ids.reindex(comp).to_numpy(), index=df.index, name="group_id", dtype=object)


def grouped_split(
    df: pd.DataFrame, groups: pd.Series, *, seed: int = 42, folds: int = 5, test_fold: int = 0
) -> pd.DataFrame:
    """`df` copy + group_id, fold (0..folds-1) and split (test = fold == test_fold; ~1/folds of the data).

    StratifiedGroupKFold stratified on label. It walks groups in sorted-id order (then shuffles with the
    seed), and group ids come from member paths, so the result depends on the seed and the data, not on
    the order rows arrived in from Spark (tested).
    """
    if folds < 2:
        raise ValueError(f"grouped_split: folds must be >= 2, got {folds}")
    if not 0 <= test_fold < folds:
        raise ValueError(f"grouped_split: test_fold must be in 0..{folds - 1}, got {test_fold}")
    if len(groups) != len(df) or not groups.index.equals(df.index):
        raise ValueError("grouped_split: `groups` must be index-aligned with `df` (use assign_groups(df, ...))")
    if groups.isna().any():
        raise ValueError(f"grouped_split: {int(groups.isna().sum())} row(s) have no group id")
    if df["label"].isna().any():
        raise ValueError(f"grouped_split: {int(df['label'].isna().sum())} row(s) have no label")
    n_groups = groups.nunique()
    if n_groups < folds:
        raise ValueError(
            f"grouped_split: only {n_groups} group(s) (patients/duplicate groups) for {folds} folds; "
            f"need at least {folds} groups — add data or lower split.folds"
        )
    out = df.copy()
    out["group_id"] = groups.astype(str)
    fold = np.full(len(out), -1, dtype=np.int64)
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    labels = out["label"].astype(str).to_numpy()
    for k, (_, test_idx) in enumerate(splitter.split(np.zeros(len(out)), labels, out["group_id"].to_numpy())):
        fold[test_idx] = k
    if (fold < 0).any():  # StratifiedGroupKFold covers every row; this guards a future sklearn change
        raise RuntimeError("grouped_split: some rows were not assigned to a fold")
    out["fold"] = fold
    out["split"] = np.where(fold == test_fold, "test", "train")
    log.info("split: %d groups, %d folds (seed %d): %d train / %d test images", n_groups, folds, seed,
             int((out["split"] == "train").sum()), int((out["split"] == "test").sum()))
    return out


def split_hash(split_df: pd.DataFrame) -> str:
    """sha256 over sorted (content sha256 or path, split, fold): names the split in MLflow params.

    The content hash is preferred so the id survives moving the data folder.
    """
    if "sha256" in split_df.columns:
        sha = split_df["sha256"].astype("string")
        keys = sha.where(sha.notna() & (sha.str.len() > 0), split_df["path"].astype(str))
    else:
        keys = split_df["path"].astype(str)
    rows = sorted(zip(keys.astype(str), split_df["split"].astype(str), split_df["fold"].astype(int), strict=True))
    digest = hashlib.sha256()
    for key, side, fold in rows:
        digest.update(f"{key}\t{side}\t{fold}\n".encode())
    return digest.hexdigest()


def check_no_leak(split_df: pd.DataFrame) -> None:
    """Raise ValueError naming any patient_id / group_id / dup_group found in both train and test."""
    problems = []
    for col in ("patient_id", "group_id", "dup_group"):
        if col not in split_df.columns:
            continue
        values = clean_patient_ids(split_df[col])
        known = values.notna()
        sides = split_df.loc[known, "split"].groupby(values[known]).nunique()
        leaking = sorted(sides[sides > 1].index)
        if leaking:
            shown = ", ".join(leaking[:5]) + (f" (+{len(leaking) - 5} more)" if len(leaking) > 5 else "")
            problems.append(f"{len(leaking)} {col}(s) in both train and test: {shown}")
    if problems:
        raise ValueError("split leak: " + "; ".join(problems))
