"""report.md's calibration section: each champion's reliability diagram on the internal test split, and its
ECE and Brier score before and after the temperature (train/calibrate.py).

Pure: arrays in, Markdown and PNG files out; train/run.py logs them to MLflow.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xray_spark.evaluation.metrics import compute_metrics
from xray_spark.evaluation.reliability import plot_reliability
from xray_spark.evaluation.report_parts import fmt_num, md_table
from xray_spark.models.calibration import TemperatureFit
from xray_spark.tasks import Task
from xray_spark.train.fit import FitResult

INTRO = ("Can a champion's probabilities be read as probabilities? A reliability diagram bins the internal "
         "test split by the confidence of the predicted class and plots each bin's accuracy against it: a "
         "calibrated model follows the diagonal. The expected calibration error (ECE, 10 bins) is the "
         "average gap, weighted by images. The temperature was fitted on out-of-fold predictions of the "
         "training side (each training fold predicted by the head refitted without it), never on the test "
         "split; it rescales the probabilities and never changes the predicted class. On a few dozen test "
         "images the ECE moves by several points from image to image: read it with the test size.")
HEADER = ("model", "temperature", "fitted on", "ECE before", "ECE after", "Brier before", "Brier after",
          "test images")


@dataclass(frozen=True)
class TestPredictions:
    """A model's test-split predictions as train measured them: what it gives (`proba`), and the head's own
    probabilities and the temperature when it ends in a temperature stage."""

    task: Task
    y_true: np.ndarray
    y_pred: np.ndarray
    proba: np.ndarray
    proba_uncalibrated: np.ndarray | None = None
    fit: TemperatureFit | None = None

    @classmethod
    def of(cls, task: Task, fit: FitResult) -> TestPredictions:
        return cls(task, fit.y_true, fit.y_pred, fit.proba, fit.proba_uncalibrated, fit.calibration)

    def scores(self) -> dict[str, float]:
        """ece/brier (after: the model as saved) and ece_before/brier_before (NaN when uncalibrated)."""
        labels = list(self.task.labels)
        after = compute_metrics(self.y_true, self.y_pred, self.proba, labels, positive=self.task.positive)
        out = {"ece": after["ece"], "brier": after["brier"], "ece_before": np.nan, "brier_before": np.nan}
        if self.proba_uncalibrated is not None:
            before = compute_metrics(self.y_true, self.y_pred, self.proba_uncalibrated, labels,
                                     positive=self.task.positive)
            out.update(ece_before=before["ece"], brier_before=before["brier"])
        return out


def reliability_png(preds: TestPredictions, title: str, path: Path) -> Path:
    """The diagram of one model: before and after calibration, or the model's own probabilities alone."""
    if preds.fit is not None and preds.proba_uncalibrated is not None:
        curves = {"before calibration": preds.proba_uncalibrated,
                  f"after (temperature {preds.fit.temperature:.2f})": preds.proba}
    else:
        curves = {"not calibrated": preds.proba}
    return plot_reliability(preds.y_true, curves, title, path)


def calibration_row(name: str, preds: TestPredictions) -> list[str]:
    """One champion's row of HEADER."""
    s, fit = preds.scores(), preds.fit
    if fit is None:
        return [name, "none", "n/a", "n/a", fmt_num(s["ece"]), "n/a", fmt_num(s["brier"]),
                str(len(preds.y_true))]
    return [name, f"{fit.temperature:.2f}" + (" (edge of range)" if fit.at_bound else ""),
            f"{fit.n} out-of-fold training images", fmt_num(s["ece_before"]), fmt_num(s["ece"]),
            fmt_num(s["brier_before"]), fmt_num(s["brier"]), str(len(preds.y_true))]


def calibration_md(rows: list[list[str]], pngs: dict[str, str]) -> str:
    """The section's body: the table, then each champion's diagram (name -> link relative to report.md)."""
    lines = [md_table(HEADER, rows), "",
             "A head left uncalibrated (config `calibration.method: none`, a head without probabilities, a "
             "fine-tune, or too few training rows) shows `none`: its own probabilities.", ""]
    for name, link in pngs.items():
        lines += [f"### {name}", "", f"![reliability diagram {name}]({link})", ""]
    return "\n".join(lines)
