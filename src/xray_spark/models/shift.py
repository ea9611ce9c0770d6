"""How unlike its training images an image is: a shift score from file properties and image features.

Why two kinds of signal: with random (or any) weights, two different chest X-rays have nearly parallel
features, and a Mahalanobis distance in the top principal components barely separates another hospital's
images from the internal test split (AUROC 0.53-0.59 on figure1); the residual outside those components
does better (0.72-0.74). A new scanner or file pipeline shows first in the file itself: format, colour
mode, bit depth, size. So each image gets several signals, each measured in units of what 99% of the
training images show (its 99th percentile there), and the shift score is the largest: 2.0 means "twice as
far out as the most unusual training images on some signal". An image is in distribution when its score
is at most the training images' own 99th percentile of the score.

Pure numpy, no Spark: the Spark stage (models/shift_stage.py) fits the statistics with aggregates and
scores on executors; the Spark-free serving twin scores with the same functions.
"""

from __future__ import annotations

import base64
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.stats import mannwhitneyu

from xray_spark.data.decode import probe_info

CATEGORICAL = ("format", "mode", "bit_depth")
NUMERIC = ("short_side", "long_side", "file_size")  # compared in log space
FEATURE_SIGNALS = ("features_pca", "features_residual")
SIGNALS = FEATURE_SIGNALS + CATEGORICAL + NUMERIC
PROPS_DDL = "format string, mode string, bit_depth int, short_side int, long_side int, file_size long"
PROPS_STRUCT = "struct<" + ",".join(f.replace(" ", ":") for f in PROPS_DDL.split(", ")) + ">"
_MIN_LOG_SPREAD = 0.05  # a numeric property's scale floor in log units (~5%): a folder of one size has MAD 0
_SCALE_FLOOR = {**dict.fromkeys(CATEGORICAL, math.log(2.0)), **dict.fromkeys(NUMERIC, 1.0)}
FEATURES_REASON = "image features unlike the training images'"
# Run-level drift of the features (models/drift.py): the projections on the top DRIFT_COMPONENTS principal
# components, each binned at its training deciles (DRIFT_BINS bins of ~10% of the training images each)
DRIFT_COMPONENTS = 5
DRIFT_BINS = 10
_LABELS = {"format": "file format", "mode": "colour mode", "bit_depth": "bit depth",
           "short_side": "short side", "long_side": "long side", "file_size": "file size"}


def file_props(data: bytes | None) -> dict[str, object]:
    """The properties of one file, from its header (data/decode.probe_info) and its length."""
    info = probe_info(data) if data else None
    if info is None:
        return {"format": None, "mode": None, "bit_depth": None, "short_side": None, "long_side": None,
                "file_size": len(data) if data else None}
    return {"format": info.format, "mode": info.mode, "bit_depth": info.bit_depth,
            "short_side": min(info.width, info.height), "long_side": max(info.width, info.height),
            "file_size": len(data)}


def category(value: object) -> str:
    """A categorical property's value as the reference keys it (null -> 'unknown')."""
    return "unknown" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Each feature vector scaled to length 1 (zero vectors stay zero)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def principal(covariance: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k eigenvectors (k x d, rows) and eigenvalues of a covariance matrix, largest first."""
    values, vectors = np.linalg.eigh(covariance)
    order = np.argsort(values)[::-1][:k]
    return vectors[:, order].T.astype(np.float64), np.maximum(values[order], 1e-12)


@dataclass
class Reference:
    """The training images' statistics: everything a score needs, small enough for a Param (k x d floats)."""

    mean: np.ndarray  # (d,) mean of the unit-normalised training features
    components: np.ndarray  # (k, d) top principal directions
    variances: np.ndarray  # (k,) variance along each
    shares: dict[str, dict[str, float]]  # categorical property -> value -> share of training images
    centers: dict[str, float]  # numeric property -> median log value
    spreads: dict[str, float]  # numeric property -> robust spread of the log value (MAD x 1.4826, floored)
    scales: dict[str, float] = field(default_factory=dict)  # signal -> its training 99th percentile
    threshold: float = math.inf  # training 99th percentile of the score
    n_train: int = 0
    # the internal test split's scores (set by train): what an external folder is compared with (AUROC)
    internal_scores: np.ndarray = field(default_factory=lambda: np.zeros(0))
    # per top component (m <= DRIFT_COMPONENTS): the inner bin edges of its training projections (m, bins - 1,
    # the training deciles) and the share of training images in each bin (m, bins); empty in references
    # fitted before the component drift existed
    component_edges: np.ndarray = field(default_factory=lambda: np.zeros((0, DRIFT_BINS - 1)))
    component_shares: np.ndarray = field(default_factory=lambda: np.zeros((0, DRIFT_BINS)))

    # ---------------------------------------------------------------------------------------- scoring
    def signals(self, features: np.ndarray | None,
                props: Sequence[Mapping[str, object]]) -> dict[str, np.ndarray]:
        """Raw signal values per image (NaN where an input is missing): Mahalanobis distance (squared) in the
        top components, the residual length outside them, the surprisal of each categorical property
        (-log of its training share, unseen values smoothed) and the robust z of each numeric one."""
        n = len(props)
        out: dict[str, np.ndarray] = {}
        if features is not None and len(features):
            z = unit_rows(np.asarray(features, dtype=np.float64)) - self.mean
            proj = z @ self.components.T
            out["features_pca"] = np.sum(proj * proj / self.variances, axis=1)
            out["features_residual"] = np.sqrt(np.maximum(np.sum(z * z, axis=1) - np.sum(proj * proj, axis=1),
                                                          0.0))
        else:
            out.update({s: np.full(n, np.nan) for s in FEATURE_SIGNALS})
        for prop in CATEGORICAL:
            shares = self.shares.get(prop, {})
            unseen = 0.5 / (self.n_train + 0.5 * (len(shares) + 1)) if self.n_train else 1.0
            out[prop] = np.array([-math.log(shares.get(category(p.get(prop)), unseen)) for p in props])
        for prop in NUMERIC:
            values = np.array([_log_or_nan(p.get(prop)) for p in props], dtype=np.float64)
            out[prop] = np.abs(values - self.centers.get(prop, np.nan)) / self.spreads.get(prop, 1.0)
        return out

    def projections(self, features: np.ndarray, m: int | None = None) -> np.ndarray:
        """(n, m) coordinates of the unit-normalised features along the top `m` principal components (all
        of them by default): what the component drift bins."""
        z = unit_rows(np.asarray(features, dtype=np.float64)) - self.mean
        return z @ self.components[: len(self.components) if m is None else m].T

    def component_bins(self, features: np.ndarray) -> np.ndarray:
        """(n, m) bin of each image along each top component with drift bins (0 .. DRIFT_BINS - 1; a value
        equal to an edge goes to the bin above it, as Spark's side of the count at fitting time)."""
        proj = self.projections(features, len(self.component_edges))
        bins = [np.searchsorted(edges, proj[:, j], side="right")
                for j, edges in enumerate(self.component_edges)]
        return np.stack(bins, axis=1) if bins else np.zeros((len(proj), 0), dtype=np.int64)

    def score(self, signals: Mapping[str, np.ndarray]) -> np.ndarray:
        """The largest signal in units of its training 99th percentile (NaN signals are skipped)."""
        parts = [np.asarray(v, dtype=np.float64) / self.scales.get(s, 1.0) for s, v in signals.items()]
        stacked = np.vstack(parts)
        with np.errstate(all="ignore"):
            best = np.where(np.all(np.isnan(stacked), axis=0), np.nan,
                            np.nanmax(np.where(np.isnan(stacked), -np.inf, stacked), axis=0))
        return best

    def in_distribution(self, scores: np.ndarray) -> np.ndarray:
        return np.asarray(scores) <= self.threshold

    def explain(self, signals: Mapping[str, np.ndarray], props: Sequence[Mapping[str, object]], i: int,
                most: int = 3) -> list[str]:
        """Why image `i` (flagged) looks unlike the training images: the signals beyond their training 99th
        percentile, largest first, in words a user can check ("file format JPEG (9% of training images)");
        when none is beyond it alone (a threshold below 1), the largest one. The same words in Spark's
        `shift_reasons` column and in serving's answer."""
        ranked = sorted(((float(v[i]) / self.scales.get(s, 1.0), s) for s, v in signals.items()
                         if not math.isnan(float(v[i]))), reverse=True)
        beyond = [s for ratio, s in ranked[:most] if ratio > 1.0] or [s for _, s in ranked[:1]]
        return [self._describe(s, props[i]) for s in beyond]

    def _describe(self, signal: str, props: Mapping[str, object]) -> str:
        if signal in CATEGORICAL:
            value = category(props.get(signal))
            share = self.shares.get(signal, {}).get(value, 0.0)
            return f"{_LABELS[signal]} {value} ({share:.0%} of training images)"
        if signal in NUMERIC:
            value, typical = props.get(signal), math.exp(self.centers.get(signal, 0.0))
            unit = " bytes" if signal == "file_size" else " px"
            return f"{_LABELS[signal]} {value}{unit} (training median {typical:.0f}{unit})"
        return FEATURES_REASON

    # ---------------------------------------------------------------------------------- persistence
    def to_text(self) -> str:
        """The reference as one ASCII string (npz arrays + JSON, base64): a simple Param that PipelineModel
        save/load and MLflow keep as is."""
        meta = {"shares": self.shares, "centers": self.centers, "spreads": self.spreads,
                "scales": self.scales, "threshold": self.threshold, "n_train": self.n_train}
        buf = io.BytesIO()
        np.savez_compressed(buf, mean=self.mean.astype(np.float32),
                            components=self.components.astype(np.float32),
                            variances=self.variances.astype(np.float64),
                            internal_scores=np.asarray(self.internal_scores, dtype=np.float64),
                            component_edges=np.asarray(self.component_edges, dtype=np.float64),
                            component_shares=np.asarray(self.component_shares, dtype=np.float64),
                            meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))
        return base64.b64encode(buf.getvalue()).decode("ascii")

    @classmethod
    def from_text(cls, text: str) -> Reference:
        with np.load(io.BytesIO(base64.b64decode(text))) as z:
            meta = json.loads(z["meta"].tobytes().decode())
            drift = {k: z[k] for k in ("component_edges", "component_shares") if k in z.files}  # newer only
            return cls(mean=z["mean"].astype(np.float64), components=z["components"].astype(np.float64),
                       variances=z["variances"], shares=meta["shares"], centers=meta["centers"],
                       spreads=meta["spreads"], scales=meta["scales"], threshold=float(meta["threshold"]),
                       n_train=int(meta["n_train"]), internal_scores=z["internal_scores"], **drift)


def scale_of(signal: str, q99: float | None) -> float:
    """A signal's unit: its training 99th percentile, floored so a property every training image shares
    (MAD 0, one format) still gives finite, comparable ratios."""
    floor = _SCALE_FLOOR.get(signal, 1e-9)
    return max(float(q99) if q99 is not None and not math.isnan(q99) else floor, floor)


def spread_of(mad: float | None) -> float:
    return max(1.4826 * float(mad or 0.0), _MIN_LOG_SPREAD)


def _log_or_nan(value: object) -> float:
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan
    return math.log(v) if v > 0 else math.nan


def shift_metrics(ref: Reference) -> dict[str, float]:
    """What train logs of a reference: its threshold and the share of the internal test split flagged."""
    scores = np.asarray(ref.internal_scores, dtype=np.float64)
    out = {"shift_threshold": float(ref.threshold)}
    if len(scores):
        out["shift_flagged_internal_test"] = float(np.mean(scores > ref.threshold))
    return out


def separation_auroc(internal: np.ndarray, external: np.ndarray) -> float:
    """P(an external image scores above an internal test image), ties counted half (the Mann-Whitney
    AUROC): 0.5 = the score cannot tell the folders apart, 1.0 = it always can. NaN without both."""
    a = np.asarray(internal, dtype=np.float64)
    b = np.asarray(external, dtype=np.float64)
    a, b = a[~np.isnan(a)], b[~np.isnan(b)]
    if not len(a) or not len(b):
        return math.nan
    return float(mannwhitneyu(b, a).statistic / (len(a) * len(b)))
