"""The pieces every report of a measured model is built from: a metric with its 95% interval, a markdown
table, the confusion-matrix plot, the shortcut verdict (`as_good_as`) and internal vs external side by side.

Shared by `train`'s comparison report, `finetune`, `xray-spark evaluate` and the demo, so a metric is written
and judged one way everywhere. Plots use matplotlib's object API with an explicit Agg canvas (no pyplot
global state), so they work in Spark drivers, notebooks and threads alike.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from xray_spark.evaluation.external import BaselineResult


def is_finite(x: Any) -> bool:
    """A number that is not NaN or infinite (None and text are not)."""
    try:
        return x is not None and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def fmt_num(x: Any, digits: int = 3) -> str:
    """`x` with `digits` decimals, or n/a."""
    return f"{float(x):.{digits}f}" if is_finite(x) else "n/a"


def with_ci(row: Mapping[str, Any], metric: str) -> str:
    """'0.951 [0.920, 0.975]' when the interval exists, else just the point estimate."""
    point = fmt_num(row.get(metric))
    low, high = row.get(f"{metric}_ci_low"), row.get(f"{metric}_ci_high")
    if is_finite(row.get(metric)) and is_finite(low) and is_finite(high):
        return f"{point} [{fmt_num(low)}, {fmt_num(high)}]"
    return point


def md_table(header: Sequence[str], cells: list[list[str]]) -> str:
    """A markdown table; `|` inside a cell is escaped."""
    def esc(s: str) -> str:
        return s.replace("|", "\\|")

    lines = ["| " + " | ".join(esc(h) for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in cells]
    return "\n".join(lines)


def save_png(fig: Figure, path: Path) -> Path:
    """Render `fig` on an Agg canvas (no pyplot state) into `path`, creating its folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # lazy: ~0.5 s; only plots need it

    FigureCanvasAgg(fig)
    fig.savefig(path, format="png", dpi=120, bbox_inches="tight")
    return path


def plot_confusion(cm: np.ndarray, labels: list[str], title: str, path: Path) -> Path:
    """Confusion matrix PNG: colour = share of the true class, text = count and row %."""
    cm = np.asarray(cm)
    k = len(labels)
    if cm.shape != (k, k):
        raise ValueError(f"confusion matrix shape {cm.shape} does not match {k} labels")
    rows = cm.sum(axis=1, keepdims=True)
    frac = np.divide(cm, rows, out=np.zeros(cm.shape), where=rows > 0)
    side = 1.4 * k + 2.2
    from matplotlib.figure import Figure  # lazy: ~0.5 s; argument checks and tables never plot

    fig = Figure(figsize=(side + 1.2, side), layout="constrained")
    ax = fig.add_subplot()
    im = ax.imshow(frac, cmap="Blues", vmin=0.0, vmax=1.0)
    for i in range(k):
        for j in range(k):
            text = f"{int(cm[i, j])}\n({100 * frac[i, j]:.1f}%)"
            ax.text(j, i, text, ha="center", va="center", fontsize=10,
                    color="white" if frac[i, j] > 0.55 else "black")
    ticks = [f"{lab}\n(n={int(rows[i, 0])})" for i, lab in enumerate(labels)]
    ax.set_xticks(range(k), labels=labels)
    ax.set_yticks(range(k), labels=ticks)
    ax.set_xlabel("Predicted label")
    ax.set_ylabel("True label")
    ax.set_title(title, fontsize=11)
    fig.colorbar(im, ax=ax, shrink=0.8, label="Share of true class")
    return save_png(fig, path)


def as_good_as(model: Mapping[str, Any], baseline: Mapping[str, Any], metric: str) -> bool | None:
    """The shortcut verdict, one rule everywhere: True when the baseline's `metric` reaches the model's 95%
    interval (its lower bound); None when either value or the model's interval is missing."""
    value, lo = baseline.get(metric), model.get(f"{metric}_ci_low")
    if not (is_finite(model.get(metric)) and is_finite(value) and is_finite(lo)):
        return None
    return float(value) >= float(lo)


GAP_METRICS = ("accuracy", "covid_recall", "macro_f1")  # the metrics train reports with group intervals


def intervals_apart(a: dict[str, Any], b: dict[str, Any], metric: str) -> bool:
    """True when the two 95% intervals of `metric` do not overlap (a generalisation gap between internal and
    external, or a model that beats its baseline); False when either is missing."""
    lo_i, hi_i = a.get(f"{metric}_ci_low"), a.get(f"{metric}_ci_high")
    lo_e, hi_e = b.get(f"{metric}_ci_low"), b.get(f"{metric}_ci_high")
    bounds = [lo_i, hi_i, lo_e, hi_e]
    if any(b is None or not np.isfinite(b) for b in bounds):
        return False
    return bool(hi_e < lo_i or hi_i < lo_e)


def side_by_side_md(title: str, internal: dict[str, Any], external: dict[str, Any], source: str,
                    n_internal: int, n_external: int, baseline: BaselineResult | None = None) -> str:
    """A markdown section: the champion's internal (grouped test split) vs external metrics, gaps flagged;
    with `baseline`, its training run's metadata-only baseline on the same external images beside them."""
    cells = []
    for m in GAP_METRICS:
        gap = intervals_apart(internal, external, m)
        row = [m, with_ci(internal, m), with_ci(external, m)]
        if baseline is not None:
            row.append(with_ci(baseline.metrics, m))
        cells.append([*row, "**gap: intervals do not overlap**" if gap else "intervals overlap"])
    header = ["metric", f"internal test split (n={n_internal})", f"{source} (n={n_external})"]
    if baseline is not None:
        header.append(f"metadata-only baseline on {source} (n={baseline.n})")
    return f"### {title}\n\n{md_table(tuple(header + ['']), cells)}\n"
