"""What the shift check says about a labelled folder: how many images it flags, whether it separates them
from the internal test split, and whether the model is right less often on flagged images.

Pure functions (numbers in, numbers and Markdown out) for `evaluate`; the scores come from the model's
own ShiftModel stage, the internal test split's from its reference (models/shift.py)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from xray_spark.models.shift import Reference, separation_auroc


def shift_summary(scores: Sequence[float | None], flags: Sequence[bool | None], correct: Sequence[bool],
                  ref: Reference) -> dict[str, float]:
    """Per folder: the share flagged (not in distribution), the AUROC of the score against the internal
    test split's scores, the internal share flagged, and accuracy on flagged and unflagged images."""
    s = np.array([math.nan if v is None else float(v) for v in scores], dtype=np.float64)
    known = np.array([f is not None for f in flags])
    flagged = np.array([f is False for f in flags])
    right = np.asarray(correct, dtype=bool)
    internal = np.asarray(ref.internal_scores, dtype=np.float64)

    def accuracy(mask: np.ndarray) -> float:
        return float(right[mask].mean()) if mask.any() else math.nan

    return {
        "shift_n": float(known.sum()),
        "shift_flagged": float(flagged[known].mean()) if known.any() else math.nan,
        "shift_auroc_vs_internal_test": separation_auroc(internal, s[known]),
        "shift_flagged_internal_test": (float(np.mean(internal > ref.threshold)) if len(internal)
                                        else math.nan),
        "shift_n_flagged": float(flagged.sum()),
        "accuracy_flagged": accuracy(flagged),
        "accuracy_unflagged": accuracy(known & ~flagged),
    }


def _pct(v: float) -> str:
    return "n/a" if math.isnan(v) else f"{v:.1%}"


def _num(v: float) -> str:
    return "n/a" if math.isnan(v) else f"{v:.3f}"


def shift_line(summary: dict[str, float]) -> str:
    """One line for the CLI."""
    return (f"unlike the training images: {_pct(summary['shift_flagged'])} of this folder "
            f"(internal test split: {_pct(summary['shift_flagged_internal_test'])}), AUROC "
            f"{_num(summary['shift_auroc_vs_internal_test'])} against the internal test split; accuracy "
            f"{_num(summary['accuracy_flagged'])} on flagged, {_num(summary['accuracy_unflagged'])} "
            "on the rest")


def shift_md(summary: dict[str, float] | None) -> list[str]:
    """The report's section; says plainly what the check can and cannot see."""
    lines = ["## Unlike the training images?", ""]
    if summary is None:
        return [*lines, "The model has no shift reference (trained before the shift check existed).", ""]
    n, flagged = int(summary["shift_n"]), int(summary["shift_n_flagged"])
    lines += [
        "| | value |", "|---|---|",
        f"| images flagged (shift score above the training images' 99th percentile) | {flagged} of {n} "
        f"({_pct(summary['shift_flagged'])}) |",
        f"| internal test split flagged | {_pct(summary['shift_flagged_internal_test'])} |",
        f"| AUROC of the shift score, this folder vs the internal test split | "
        f"{_num(summary['shift_auroc_vs_internal_test'])} |",
        f"| accuracy on flagged images | {_num(summary['accuracy_flagged'])} |",
        f"| accuracy on the other images | {_num(summary['accuracy_unflagged'])} |", "",
        "The score combines the file's properties (format, colour mode, bit depth, short and long side, "
        "size) with the image features (Mahalanobis distance in the top principal components, and the "
        "residual outside them), each in units of the training images' own 99th percentile. File "
        "properties see a new scanner or file pipeline; with random or generic weights the features see "
        "little else, so an image from another hospital saved the same way as the training images may "
        "pass unflagged.", "",
    ]
    return lines
