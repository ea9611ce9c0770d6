"""Reliability diagrams: does a model that says 80% turn out right 80% of the time?

The top-class confidence of each image is binned into equal-width bins (right-closed, as evaluation/metrics.py
bins it for the ECE, so the diagram and the number agree); each bin's accuracy is plotted against its mean
confidence, with the diagonal a perfectly calibrated model would follow. `train` draws one per champion on the
internal test split (its probabilities before and after calibration), `evaluate` one on the folder it
measures. Pure numpy; matplotlib only when a diagram is drawn (Agg canvas, as report_parts.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xray_spark.evaluation.report_parts import save_png
from xray_spark.models.heads_numpy import temperature_scale


@dataclass(frozen=True)
class Reliability:
    """Per bin: images, mean top-class confidence and accuracy (NaN for empty bins); and the ECE."""

    edges: np.ndarray  # (n_bins + 1,)
    count: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray
    ece: float


def reliability(y_true: np.ndarray, proba: np.ndarray, n_bins: int = 10) -> Reliability:
    """The bins of `proba` (rows of class probabilities) against `y_true` (class indices)."""
    p = np.asarray(proba, dtype=np.float64)
    y = np.asarray(y_true, dtype=np.int64)
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    bins = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    count = np.bincount(bins, minlength=n_bins).astype(np.float64)
    conf_sum = np.bincount(bins, weights=conf, minlength=n_bins)
    correct_sum = np.bincount(bins, weights=correct, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.where(count > 0, conf_sum / count, np.nan)
        accuracy = np.where(count > 0, correct_sum / count, np.nan)
    ece = float(np.abs(correct_sum - conf_sum).sum() / len(y)) if len(y) else float("nan")
    return Reliability(np.linspace(0.0, 1.0, n_bins + 1), count, mean_conf, accuracy, ece)


def plot_reliability(y_true: np.ndarray, curves: Mapping[str, np.ndarray], title: str, path: Path,
                     n_bins: int = 10) -> Path:
    """A reliability diagram PNG: one line per entry of `curves` (label -> probability rows), each point a
    non-empty bin (marker area ~ its images), the diagonal, and below it the images per bin."""
    from matplotlib.figure import Figure  # lazy: ~0.5 s; argument checks and tables never plot
    from matplotlib.ticker import MaxNLocator  # lazy: as above

    fig = Figure(figsize=(5.6, 6.4), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.plot([0, 1], [0, 1], linestyle=":", color="0.4", label="perfectly calibrated")
    width = 1.0 / n_bins / (len(curves) + 1)
    for i, (label, proba) in enumerate(curves.items()):
        r = reliability(y_true, proba, n_bins)
        seen = r.count > 0
        color = f"C{i}"
        top.plot(r.confidence[seen], r.accuracy[seen], marker="o", color=color, linewidth=1.2,
                 label=f"{label}: ECE {r.ece:.3f}")
        top.scatter(r.confidence[seen], r.accuracy[seen], s=20 + 180 * r.count[seen] / max(r.count.max(), 1),
                    color=color, alpha=0.35, zorder=3)
        bottom.bar(r.edges[:-1] + (i + 0.5) * width, r.count, width=width, align="edge", color=color)
    top.set_xlim(0, 1)
    top.set_ylim(0, 1.02)
    top.set_ylabel("Accuracy in the bin")
    top.set_title(title, fontsize=10)
    top.grid(color="0.9")
    top.legend(loc="upper left", fontsize=8, frameon=False)
    bottom.set_xlabel(f"Confidence of the predicted class ({n_bins} bins)")
    bottom.set_ylabel("Images")
    bottom.yaxis.set_major_locator(MaxNLocator(integer=True))
    return save_png(fig, path)


def calibration_summary(y_true: np.ndarray, proba: np.ndarray, temperature: float | None,
                        n_bins: int = 10) -> dict[str, float]:
    """ECE of a model's probabilities on labelled images (`y_true`: class indices) and, for a model whose
    pipeline ends in a temperature stage, of the head's own probabilities: recovered exactly by the inverse
    temperature (softmax(T log p) undoes softmax(log p / T) up to the 1e-6 probability floor)."""
    out = {"ece": reliability(y_true, proba, n_bins).ece, "temperature": np.nan, "ece_uncalibrated": np.nan}
    if temperature is not None:
        out["temperature"] = float(temperature)
        out["ece_uncalibrated"] = reliability(y_true, uncalibrated(proba, temperature), n_bins).ece
    return out


def uncalibrated(proba: np.ndarray, temperature: float) -> np.ndarray:
    """The head's own probabilities back from calibrated ones (the inverse temperature)."""
    return temperature_scale(proba, 1.0 / float(temperature))


def reliability_png(y_true: np.ndarray, proba: np.ndarray, temperature: float | None, title: str,
                    path: Path) -> Path:
    """A model's diagram on labelled images: its probabilities, and the head's own beside them when its
    pipeline ends in a temperature stage."""
    curves = {"model": proba} if temperature is None else {
        "without the temperature": uncalibrated(proba, temperature),
        f"with the temperature {temperature:.2f} (as served)": proba}
    return plot_reliability(y_true, curves, title, path)


def calibration_line(summary: Mapping[str, float]) -> str:
    """One line for the CLI."""
    if np.isnan(summary["temperature"]):
        return f"calibration: ECE {summary['ece']:.3f} (no temperature stage)"
    return (f"calibration: ECE {summary['ece']:.3f} with temperature {summary['temperature']:.2f}, "
            f"{summary['ece_uncalibrated']:.3f} without")


def calibration_section(summary: Mapping[str, float] | None, png: str) -> list[str]:
    """`evaluate`'s report section: the ECE on this folder (before and after the model's temperature) and the
    reliability diagram; why there is none for a head without probabilities."""
    lines = ["## Calibration on this folder", ""]
    if summary is None:
        return [*lines, "The model gives no probabilities (LinearSVC or one-vs-rest head): no reliability "
                "diagram.", ""]
    if np.isnan(summary["temperature"]):
        lines.append(f"Expected calibration error (10 bins): {summary['ece']:.3f}. The model has no "
                     "temperature stage (trained with `calibration.method: none`, or before calibration "
                     "existed).")
    else:
        lines.append(f"Expected calibration error (10 bins): {summary['ece']:.3f} with the temperature "
                     f"{summary['temperature']:.2f} fitted at training time, "
                     f"{summary['ece_uncalibrated']:.3f} with the head's own probabilities. The temperature "
                     "was fitted on the training images; on another source's images it may help less, or not "
                     "at all.")
    return [*lines, "", f"![reliability diagram]({png})", ""]
