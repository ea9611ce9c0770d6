"""The shift check for one served image: does it resemble the images the model was trained on?

Why here and not in the Spark stage: serving has no Spark, but it must say what `score` says. So it runs the
very functions the Spark `ShiftModel` runs on executors (models/shift.py `Reference.signals/score/
in_distribution/explain`) on the same inputs: the file's header properties (`file_props`, read from the
uploaded bytes) and the features the engine already computed for the head. Nothing here logs: the reasons
hold header values (format, size), which belong to the answer only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from xray_spark.models.shift import Reference, file_props


@dataclass(frozen=True)
class ShiftResult:
    """One image's shift score (larger = less like the training images), verdict and short reasons."""

    score: float | None
    in_distribution: bool | None
    reasons: tuple[str, ...]


NO_REFERENCE = ShiftResult(None, None, ())  # a bundle from before the shift check: nothing to say


def check_shift(reference: Reference | None, data: bytes, features: np.ndarray) -> ShiftResult:
    """Score one upload's bytes and its pooled features against the training reference."""
    if reference is None:
        return NO_REFERENCE
    props = [file_props(data)]
    signals = reference.signals(np.asarray(features, dtype=np.float64)[None, :], props)
    score = float(reference.score(signals)[0])
    if math.isnan(score):
        return NO_REFERENCE
    in_dist = bool(reference.in_distribution(np.array([score]))[0])
    reasons = () if in_dist else tuple(reference.explain(signals, props, 0))
    return ShiftResult(score, in_dist, reasons)
