"""Classification metrics with 95% intervals, in plain numpy (no Spark, no per-resample sklearn calls).

Why everything is computed from confusion matrices and per-group sums: the bootstrap needs each metric
~1000 times per trained combination. Confusion counts, Brier sums and calibration-bin sums are additive over
rows, so one (resamples x groups) weight matrix times the per-group contributions gives every resample at
once. The point estimates go through the same functions, so a point estimate and its interval can never be
computed two different ways.

Conventions (documented once, used everywhere):
- Labels are integer codes 0..K-1 indexing ``labels``; string labels and integral floats (Spark's
  ``prediction`` column) are accepted and converted.
- Zero division: a precision, recall or F1 whose denominator is 0 is **0.0** (sklearn's
  ``zero_division=0``). ``macro_f1`` averages F1 over *all* ``labels``, so a class absent from both
  ``y_true`` and ``y_pred`` contributes 0.0 (as sklearn with ``labels=`` given).
- ROC-AUC is one-vs-rest per class with ties counted 1/2 (equal to sklearn's ``roc_auc_score``); it is NaN
  when the class, or every other class, is absent from ``y_true``. ``roc_auc_macro`` is the positive class
  AUC for two classes and the mean of the defined per-class AUCs otherwise.
- ECE uses the top-class confidence ``max_k p_k`` and counts a row correct when ``argmax_k p_k`` equals the
  true label (so it describes the probabilities, even if ``y_pred`` came from a tuned threshold). Bins are
  equal-width and right-closed, ``(0, 0.1], (0.1, 0.2], ...`` (Guo et al. 2017); a confidence of 0 goes
  into the first bin.
- Intervals: percentile bootstrap over *groups* (patients / duplicate clusters), because rows of one group
  are not independent; Wilson for a single proportion (covid recall), which ignores grouping and is
  therefore reported as a cross-check, not as the headline interval.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

DEFAULT_INTERVAL_METRICS = ("accuracy", "covid_recall", "macro_f1")
_PROBA_METRICS_PREFIX = ("roc_auc_", "brier", "ece")


@dataclass(frozen=True)
class Interval:
    low: float
    high: float
    method: str  # "bootstrap-groups" | "wilson"

    def contains(self, value: float) -> bool:
        return bool(self.low <= value <= self.high)


# ----------------------------------------------------------------------------------------------- inputs


def _as_codes(y: np.ndarray | Sequence, labels: Sequence[str], what: str) -> np.ndarray:
    """Integer codes 0..K-1 from ints, integral floats or label strings; anything else is a ValueError."""
    arr = np.asarray(y)
    k = len(labels)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be 1-D, got shape {arr.shape}")
    if arr.dtype.kind in "USO":
        index = {lab: i for i, lab in enumerate(labels)}
        unknown = sorted({str(v) for v in arr.tolist() if v not in index})
        if unknown:
            raise ValueError(f"{what} has labels not in {list(labels)}: {unknown[:5]}")
        return np.fromiter((index[v] for v in arr.tolist()), dtype=np.int64, count=arr.size)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise ValueError(f"{what} has non-integral class codes")
        arr = arr.astype(np.int64)
    elif arr.dtype.kind not in "iub":
        raise ValueError(f"{what} has unsupported dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() >= k):
        raise ValueError(f"{what} has class codes outside 0..{k - 1}")
    return arr


def _check_inputs(
    y_true, y_pred, proba, labels: Sequence[str], positive: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    labels = list(labels)
    if len(labels) < 2:
        raise ValueError(f"need at least two labels, got {labels}")
    if positive not in labels:
        raise ValueError(f"positive class {positive!r} is not one of the labels {labels}")
    yt = _as_codes(y_true, labels, "y_true")
    yp = _as_codes(y_pred, labels, "y_pred")
    if yt.shape != yp.shape:
        raise ValueError(f"y_true has {yt.size} rows but y_pred has {yp.size}")
    p = None
    if proba is not None:
        p = np.asarray(proba, dtype=np.float64)
        if p.shape != (yt.size, len(labels)):
            raise ValueError(f"proba must have shape ({yt.size}, {len(labels)}), got {p.shape}")
        if not np.all(np.isfinite(p)):
            raise ValueError("proba has non-finite values")
    return yt, yp, p


# ------------------------------------------------------------------------------- confusion-based metrics


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Confusion counts, rows = true class, columns = predicted class (int labels 0..n_classes-1)."""
    yt = np.asarray(y_true, dtype=np.int64)
    yp = np.asarray(y_pred, dtype=np.int64)
    if yt.shape != yp.shape:
        raise ValueError(f"y_true has {yt.size} rows but y_pred has {yp.size}")
    if yt.size and (min(yt.min(), yp.min()) < 0 or max(yt.max(), yp.max()) >= n_classes):
        raise ValueError(f"class codes outside 0..{n_classes - 1}")
    cells = np.bincount(yt * n_classes + yp, minlength=n_classes * n_classes)
    return cells.reshape(n_classes, n_classes)


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with 0.0 where den == 0 (the documented zero-division rule)."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros(np.broadcast(num, den).shape), where=den > 0)


def _cm_metrics(cm: np.ndarray, labels: Sequence[str], positive: str) -> dict[str, np.ndarray]:
    """Confusion-derived metrics for one (K, K) matrix or a batch (..., K, K); values have shape (...)."""
    tp = np.diagonal(cm, axis1=-2, axis2=-1).astype(np.float64)
    support = cm.sum(axis=-1)  # true counts per class
    predicted = cm.sum(axis=-2)  # predicted counts per class
    precision = _safe_div(tp, predicted)
    recall = _safe_div(tp, support)
    f1 = _safe_div(2.0 * tp, support + predicted)
    out: dict[str, np.ndarray] = {"accuracy": _safe_div(tp.sum(axis=-1), support.sum(axis=-1))}
    pos = list(labels).index(positive)
    out["covid_precision"] = precision[..., pos]
    out["covid_recall"] = recall[..., pos]
    out["covid_f1"] = f1[..., pos]
    for i, lab in enumerate(labels):
        out[f"precision_{lab}"] = precision[..., i]
        out[f"recall_{lab}"] = recall[..., i]
        out[f"f1_{lab}"] = f1[..., i]
    out["macro_f1"] = f1.mean(axis=-1)
    return out


# ---------------------------------------------------------------------------------- probability metrics


def _weighted_auc(scores: np.ndarray, is_pos: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ROC-AUC (Mann-Whitney, ties = 1/2) for each row of `weights` (R, n) over the same n scored rows.

    Why weighted: a bootstrap resample is just integer weights on the original rows, so all resamples share
    one sort. Returns shape (R,), NaN where a resample has no positive or no negative weight.
    """
    order = np.argsort(scores, kind="mergesort")
    s = scores[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])  # first index of each block of tied scores
    w = weights[:, order]
    pos = is_pos[order]
    pos_u = np.add.reduceat(w * pos, starts, axis=1)
    neg_u = np.add.reduceat(w * ~pos, starts, axis=1)
    neg_below = np.cumsum(neg_u, axis=1) - neg_u
    num = (pos_u * (neg_below + 0.5 * neg_u)).sum(axis=1)
    den = pos_u.sum(axis=1) * neg_u.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _auc_metrics(
    yt: np.ndarray, proba: np.ndarray, labels: Sequence[str], positive: str, weights: np.ndarray
) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for i, lab in enumerate(labels):
        out[f"roc_auc_{lab}"] = _weighted_auc(proba[:, i], yt == i, weights)
    if len(labels) == 2:
        out["roc_auc_macro"] = out[f"roc_auc_{positive}"]
    else:
        stacked = np.stack([out[f"roc_auc_{lab}"] for lab in labels], axis=0)
        defined = np.isfinite(stacked)
        n_def = defined.sum(axis=0)
        total = np.where(defined, stacked, 0.0).sum(axis=0)
        out["roc_auc_macro"] = np.where(n_def > 0, total / np.maximum(n_def, 1), np.nan)
    return out


def _brier_rows(yt: np.ndarray, proba: np.ndarray) -> np.ndarray:
    """Per-row multi-class Brier term sum_k (p_k - 1[y=k])^2."""
    onehot = np.zeros_like(proba)
    onehot[np.arange(yt.size), yt] = 1.0
    return ((proba - onehot) ** 2).sum(axis=1)


def _calibration_rows(
    yt: np.ndarray, proba: np.ndarray, n_bins: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-row (bin index, top-class confidence, correct 0/1) for the ECE."""
    conf = proba.max(axis=1)
    correct = (proba.argmax(axis=1) == yt).astype(np.float64)
    bins = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    return bins, conf, correct


def _ece_from_sums(conf_sums: np.ndarray, correct_sums: np.ndarray, n: np.ndarray) -> np.ndarray:
    """ECE = sum_b (n_b / n) |acc_b - conf_b| = sum_b |correct_b - conf_b| / n (works batched on axis -1)."""
    return _safe_div(np.abs(correct_sums - conf_sums).sum(axis=-1), n)


# ------------------------------------------------------------------------------------- point estimates


def compute_metrics(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    proba: np.ndarray | None,
    labels: Sequence[str],
    *,
    positive: str = "covid",
    n_bins: int = 10,
) -> dict[str, float]:
    """All point metrics for one test set (see the module docstring for the zero-division/NaN rules).

    `proba` rows are per-class probabilities in `labels` order; without it the AUC, Brier and ECE keys are
    present and NaN, so every run logs the same columns.
    """
    labels = list(labels)
    yt, yp, p = _check_inputs(y_true, y_pred, proba, labels, positive)
    cm = confusion(yt, yp, len(labels))
    out = {k: float(v) for k, v in _cm_metrics(cm, labels, positive).items()}
    if p is None or yt.size == 0:
        for lab in labels:
            out[f"roc_auc_{lab}"] = math.nan
        out.update(roc_auc_macro=math.nan, brier=math.nan, ece=math.nan)
        return out
    ones = np.ones((1, yt.size))
    out.update({k: float(v[0]) for k, v in _auc_metrics(yt, p, labels, positive, ones).items()})
    out["brier"] = float(_brier_rows(yt, p).mean())
    bins, conf, correct = _calibration_rows(yt, p, n_bins)
    conf_sums = np.bincount(bins, weights=conf, minlength=n_bins)
    correct_sums = np.bincount(bins, weights=correct, minlength=n_bins)
    out["ece"] = float(_ece_from_sums(conf_sums, correct_sums, np.float64(yt.size)))
    return out


# ------------------------------------------------------------------------------------------- intervals


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> Interval:
    """Wilson score interval for a proportion; NaN bounds when n == 0 (nothing to estimate)."""
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"need 0 <= successes <= n, got {successes}/{n}")
    if n == 0:
        return Interval(math.nan, math.nan, "wilson")
    p = successes / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    low = 0.0 if successes == 0 else max(0.0, centre - half)  # exact at the edges (rounding gives 1 - 1e-16)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return Interval(low, high, "wilson")


def _is_missing(value: object) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return str(value) in ("", "<NA>", "NaT")


def _group_codes(groups: np.ndarray) -> np.ndarray:
    """Group ids -> codes 0..G-1. A missing id (None, NaN, "") makes the row its own group, with a warning:
    an unknown patient is treated as independent rather than silently merged with other unknowns."""
    raw = np.asarray(groups, dtype=object).ravel()
    missing = np.array([_is_missing(v) for v in raw], dtype=bool)
    keys = np.array(
        [f"<no-group>#{i}" if miss else str(v) for i, (v, miss) in enumerate(zip(raw, missing, strict=True))]
    )
    if missing.any():
        log.warning("%d rows have no group id; each is treated as its own group", int(missing.sum()))
    _, codes = np.unique(keys, return_inverse=True)
    return codes.ravel().astype(np.int64)


def _supported(labels: Sequence[str]) -> set[str]:
    names = {
        "accuracy",
        "covid_precision",
        "covid_recall",
        "covid_f1",
        "macro_f1",
        "roc_auc_macro",
        "brier",
        "ece",
    }
    for lab in labels:
        names |= {f"precision_{lab}", f"recall_{lab}", f"f1_{lab}", f"roc_auc_{lab}"}
    return names


def _needs_proba(name: str) -> bool:
    return name.startswith(_PROBA_METRICS_PREFIX)


def _resampled(
    yt: np.ndarray,
    yp: np.ndarray,
    p: np.ndarray | None,
    labels: list[str],
    positive: str,
    codes: np.ndarray,
    counts: np.ndarray,
    wanted: list[str],
    n_bins: int,
) -> dict[str, np.ndarray]:
    """Every wanted metric for every resample; `counts` (R, G) says how often each group was drawn."""
    k, g = len(labels), counts.shape[1]
    out: dict[str, np.ndarray] = {}
    # confusion contributions per group: (G, K*K); one matrix product gives all resampled matrices
    cells = np.zeros((g, k * k))
    np.add.at(cells, (codes, yt * k + yp), 1.0)
    cms = (counts @ cells).reshape(-1, k, k)
    cm_vals = _cm_metrics(cms, labels, positive)
    out.update({m: cm_vals[m] for m in wanted if m in cm_vals})
    proba_wanted = [m for m in wanted if _needs_proba(m)]
    if not proba_wanted:
        return out
    if p is None:
        log.warning("no probabilities given: intervals for %s are NaN", proba_wanted)
        out.update({m: np.full(counts.shape[0], np.nan) for m in proba_wanted})
        return out
    sizes = np.bincount(codes, minlength=g).astype(np.float64)
    n_r = counts @ sizes
    if "brier" in wanted:
        out["brier"] = _safe_div(counts @ np.bincount(codes, weights=_brier_rows(yt, p), minlength=g), n_r)
    if "ece" in wanted:
        bins, conf, correct = _calibration_rows(yt, p, n_bins)
        conf_gb = np.zeros((g, n_bins))
        corr_gb = np.zeros((g, n_bins))
        np.add.at(conf_gb, (codes, bins), conf)
        np.add.at(corr_gb, (codes, bins), correct)
        out["ece"] = _ece_from_sums(counts @ conf_gb, counts @ corr_gb, n_r)
    auc_wanted = [m for m in proba_wanted if m.startswith("roc_auc_")]
    if auc_wanted:
        # row weights (R, n) can be large: chunk the resamples so one chunk's (chunk, n) float64 weights hold
        # at most 5M values (40 MB), or a single resample's row when n alone is larger
        chunk = max(1, 5_000_000 // max(1, yt.size))
        parts: dict[str, list[np.ndarray]] = {m: [] for m in auc_wanted}
        for start in range(0, counts.shape[0], chunk):
            w = counts[start : start + chunk][:, codes]
            vals = _auc_metrics(yt, p, labels, positive, w)
            for m in auc_wanted:
                parts[m].append(vals[m])
        out.update({m: np.concatenate(v) for m, v in parts.items()})
    return out


def bootstrap_intervals(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    proba: np.ndarray | None,
    labels: Sequence[str],
    groups: np.ndarray,
    *,
    metrics: Sequence[str] = DEFAULT_INTERVAL_METRICS,
    n_resamples: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    positive: str = "covid",
    n_bins: int = 10,
) -> dict[str, Interval]:
    """Percentile intervals from resampling GROUPS with replacement (same group count as the test set).

    Why groups: images of one patient (or near-duplicates) rise and fall together; resampling rows would
    pretend they are independent and give intervals that are too narrow. Resamples where a metric is
    undefined (AUC without both classes) are dropped for that metric; all-undefined gives NaN bounds.
    """
    labels = list(labels)
    yt, yp, p = _check_inputs(y_true, y_pred, proba, labels, positive)
    grp = np.asarray(groups)
    if grp.shape != yt.shape:
        raise ValueError(f"groups has {grp.size} rows but y_true has {yt.size}")
    unknown = [m for m in metrics if m not in _supported(labels)]
    if unknown:
        raise ValueError(f"no interval for unknown metrics {unknown}; known: {sorted(_supported(labels))}")
    if not 0 < alpha < 1 or n_resamples < 1:
        raise ValueError(f"need 0 < alpha < 1 and n_resamples >= 1, got {alpha}, {n_resamples}")
    if yt.size == 0:
        return {m: Interval(math.nan, math.nan, "bootstrap-groups") for m in metrics}
    codes = _group_codes(grp)
    g = int(codes.max()) + 1
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(g, np.full(g, 1.0 / g), size=n_resamples).astype(np.float64)
    values = _resampled(yt, yp, p, labels, positive, codes, counts, list(metrics), n_bins)
    out: dict[str, Interval] = {}
    for m in metrics:
        v = values[m]
        v = v[np.isfinite(v)]
        if v.size < n_resamples:
            log.debug("%s undefined in %d of %d resamples", m, n_resamples - v.size, n_resamples)
        if v.size == 0:
            out[m] = Interval(math.nan, math.nan, "bootstrap-groups")
            continue
        low, high = np.percentile(v, [100 * alpha / 2, 100 * (1 - alpha / 2)])
        out[m] = Interval(float(low), float(high), "bootstrap-groups")
    return out


def metrics_with_intervals(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    proba: np.ndarray | None,
    labels: Sequence[str],
    groups: np.ndarray,
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    positive: str = "covid",
    metrics: Sequence[str] = DEFAULT_INTERVAL_METRICS,
    alpha: float = 0.05,
) -> dict[str, float]:
    """Flat dict ready for MLflow / the comparison table.

    Keys: everything from `compute_metrics`; `<m>_ci_low` / `<m>_ci_high` for each interval metric
    (group bootstrap); `covid_recall_wilson_low` / `_high` (rows treated as independent — a cross-check);
    `n_test` rows and `n_test_groups` distinct groups.
    """
    labels = list(labels)
    out = compute_metrics(y_true, y_pred, proba, labels, positive=positive)
    intervals = bootstrap_intervals(
        y_true, y_pred, proba, labels, groups,
        metrics=metrics, n_resamples=n_resamples, seed=seed, alpha=alpha, positive=positive,
    )
    for m, iv in intervals.items():
        out[f"{m}_ci_low"] = iv.low
        out[f"{m}_ci_high"] = iv.high
    yt = _as_codes(y_true, labels, "y_true")
    yp = _as_codes(y_pred, labels, "y_pred")
    pos = labels.index(positive)
    wil = wilson_interval(int(np.sum((yt == pos) & (yp == pos))), int(np.sum(yt == pos)))
    out["covid_recall_wilson_low"] = wil.low
    out["covid_recall_wilson_high"] = wil.high
    out["n_test"] = int(yt.size)
    out["n_test_groups"] = int(_group_codes(np.asarray(groups)).max()) + 1 if yt.size else 0
    return out
