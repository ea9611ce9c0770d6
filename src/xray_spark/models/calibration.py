"""Post-hoc calibration of a head's probabilities: one temperature, fitted by minimising the negative
log-likelihood (NLL) on predictions the head made for images it was not fitted on.

Why temperature scaling: one parameter fits binary and multi-class heads alike, it cannot change which class
is on top (so accuracy, F1 and the champion stay what they were), and one number is hard to overfit on a
few hundred out-of-fold predictions. Why out-of-fold: a head is more confident on its own training rows than
on new images; `train` refits each head once per training fold, predicts that fold, and fits the temperature
on those predictions, never on the test split (train/calibrate.py).

Pure numpy + scipy; the Spark stages that fit and carry it are in models/calibration_stage.py, and the
arithmetic that applies it is `heads_numpy.temperature_scale`, shared with serving.

The config section `calibration` is declared here and registered with xray_spark.config.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import logsumexp

from xray_spark.config import Ranges, register_section
from xray_spark.models.heads_numpy import PROBABILITY_FLOOR

METHODS = ("temperature", "none")
# The search range: beyond it the fit is saying something is wrong (a head certain on every out-of-fold row,
# or no better than chance), not asking for more; `TemperatureFit.at_bound` says so.
TEMPERATURE_BOUNDS = (0.05, 20.0)


@dataclass
class CalibrationConfig:
    """`train`: post-hoc calibration of each image head's probabilities (config section `calibration`)."""

    method: str = "temperature"  # temperature | none
    min_rows: int = 10  # fewer out-of-fold predictions than this: no calibration (one number from noise)


RANGES: Ranges = {
    "method": (lambda v: v in METHODS, f"one of {', '.join(METHODS)}"),
    "min_rows": (lambda v: v >= 2, ">= 2"),
}

register_section("calibration", CalibrationConfig, RANGES)


@dataclass(frozen=True)
class TemperatureFit:
    """A fitted temperature and what it did on the rows it was fitted on (mean NLL before and after)."""

    temperature: float
    n: int
    nll_before: float
    nll_after: float

    @property
    def at_bound(self) -> bool:
        low, high = TEMPERATURE_BOUNDS
        return not low * 1.01 < self.temperature < high / 1.01


def nll(proba: np.ndarray, y: np.ndarray, temperature: float) -> float:
    """Mean negative log-likelihood of the true classes `y` under `proba` rescaled by `temperature`
    (log-softmax form of `temperature_scale`: the same floor, no exp/log round trip)."""
    logs = np.log(np.maximum(np.asarray(proba, dtype=np.float64), PROBABILITY_FLOOR)) / float(temperature)
    true = logs[np.arange(len(y)), np.asarray(y, dtype=np.int64)]
    return float(np.mean(logsumexp(logs, axis=1) - true))


def fit_temperature(proba: np.ndarray, y: np.ndarray) -> TemperatureFit:
    """The temperature in TEMPERATURE_BOUNDS that minimises the mean NLL of `y` (class indices) under
    `proba` (rows of class probabilities): scipy's bounded scalar search over log T."""
    p = np.asarray(proba, dtype=np.float64)
    labels = np.asarray(y, dtype=np.int64)
    if p.ndim != 2 or len(p) != len(labels) or not len(p):
        raise ValueError(f"need matching probability rows and labels, got {p.shape} and {labels.shape}")
    if labels.min() < 0 or labels.max() >= p.shape[1]:
        raise ValueError(f"labels must be class indices in [0, {p.shape[1] - 1}]")
    low, high = (math.log(b) for b in TEMPERATURE_BOUNDS)
    found = minimize_scalar(lambda t: nll(p, labels, math.exp(t)), bounds=(low, high), method="bounded",
                            options={"xatol": 1e-5})
    temperature = float(math.exp(found.x))
    return TemperatureFit(temperature, len(p), nll(p, labels, 1.0), nll(p, labels, temperature))
