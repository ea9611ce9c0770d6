"""What people look at: the comparison table (CSV/Markdown/HTML/terminal), plots, and report.md.

Why the shortcut paragraph is generated, not hand-written: the honest reading of these numbers depends on
how the metadata-only baseline compares with the best image model, and that changes with every run. The
report says it plainly instead of leaving the reader to spot it.

The parts every report shares (a metric with its interval, markdown tables, the confusion plot, the shortcut
verdict) live in evaluation/report_parts.py.
"""

from __future__ import annotations

import datetime as dt
import html
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from xray_spark.evaluation.report_parts import as_good_as, fmt_num, is_finite, md_table, save_png, with_ci
from xray_spark.models.metadata_baseline import BASELINE_NAME
from xray_spark.train.compare import BASELINE, IMAGE

log = logging.getLogger(__name__)

KINDS = (IMAGE, BASELINE)  # the two kinds of rows, in the order the table shows them
REFERENCE_HEADER = ("Model", "Precision (COVID)", "Recall (COVID)", "F1 (COVID)", "Accuracy")
ID_COLUMNS = ["task", "kind", "backbone", "head", "weights"]
METRIC_COLUMNS = [
    "accuracy", "accuracy_ci_low", "accuracy_ci_high",
    "covid_precision",
    "covid_recall", "covid_recall_ci_low", "covid_recall_ci_high",
    "covid_recall_wilson_low", "covid_recall_wilson_high",
    "covid_f1",
    "macro_f1", "macro_f1_ci_low", "macro_f1_ci_high",
    "roc_auc_macro", "brier", "ece",
    # the head's own probabilities before the temperature (train/calibrate.py); brier and ece are after it
    "ece_uncalibrated", "brier_uncalibrated", "temperature", "calibration_n", "calibration_seconds",
    "n_test", "n_test_groups", "fit_seconds", "featurize_seconds",
]
_OTHER_HEADER = ("Model", "Macro F1", "ROC-AUC (macro)", "Brier", "ECE", "ECE uncalibrated", "Temperature",
                 "Fit s", "Featurize s")


# ------------------------------------------------------------------------------------------- formatting


def model_name(row: Mapping[str, Any]) -> str:
    """'<backbone> + <head>' ('metadata-only + <head>' for baselines); the head's title when known."""
    head = (
        row.get("head_title")
        if isinstance(row.get("head_title"), str) and row.get("head_title")
        else row["head"]
    )
    if row.get("kind") == BASELINE:
        return f"{BASELINE_NAME} + {head}"
    return f"{row.get('backbone')} + {head}"


def _task_rows(df: pd.DataFrame, task: str) -> list[dict[str, Any]]:
    if df.empty or "task" not in df:
        return []
    return df[df["task"] == task].to_dict("records")


def _names(rows: list[dict[str, Any]]) -> list[str]:
    """Model names, disambiguated by weights when two rows would otherwise share a name."""
    names = [model_name(r) for r in rows]
    out = list(names)
    for i, n in enumerate(names):
        if names.count(n) > 1:
            w = rows[i].get("weights")
            out[i] = f"{n} ({w})" if isinstance(w, str) and w else f"{n} (#{i + 1})"
    return out


def _reference_cells(df: pd.DataFrame, task: str) -> list[list[str]]:
    rows = _task_rows(df, task)
    return [
        [name, fmt_num(r.get("covid_precision")), with_ci(r, "covid_recall"), fmt_num(r.get("covid_f1")),
         with_ci(r, "accuracy")]
        for name, r in zip(_names(rows), rows, strict=True)
    ]


def _other_cells(df: pd.DataFrame, task: str) -> list[list[str]]:
    rows = _task_rows(df, task)
    return [
        [name, with_ci(r, "macro_f1"), fmt_num(r.get("roc_auc_macro")), fmt_num(r.get("brier")),
         fmt_num(r.get("ece")), fmt_num(r.get("ece_uncalibrated")), fmt_num(r.get("temperature"), 2),
         fmt_num(r.get("fit_seconds"), 1), fmt_num(r.get("featurize_seconds"), 1)]
        for name, r in zip(_names(rows), rows, strict=True)
    ]


def _text_table(header: Sequence[str], cells: list[list[str]]) -> str:
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(header)]
    lines = [" | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    lines.append("-+-".join("-" * w for w in widths))
    lines += [" | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    return "\n".join(lines)


def _sample_line(df: pd.DataFrame, task: str) -> str:
    rows = _task_rows(df, task)
    n = {(r.get("n_test"), r.get("n_test_groups")) for r in rows if is_finite(r.get("n_test"))}
    if len(n) == 1:
        ((n_test, n_groups),) = n
        groups = f", {int(n_groups)} groups" if is_finite(n_groups) else ""
        return f"Test split: {int(n_test)} images{groups}. Brackets: 95% interval, bootstrap over groups."
    return "Brackets: 95% interval, bootstrap over groups."


# ------------------------------------------------------------------------------------------------ table


def comparison_table(rows: list[dict]) -> pd.DataFrame:
    """One row per trained combination, standard columns first (missing ones NaN), extra keys kept after.

    Grouped by task (first-appearance order), image models before baselines; otherwise the caller's order
    (config order of backbones and heads) is kept.
    """
    df = pd.DataFrame(list(rows))
    for col in ID_COLUMNS + METRIC_COLUMNS:
        if col not in df:
            df[col] = IMAGE if col == "kind" else np.nan
    if df.empty:
        return df[ID_COLUMNS + METRIC_COLUMNS]
    df["kind"] = df["kind"].fillna(IMAGE)
    bad = sorted(set(df["kind"]) - set(KINDS))
    if bad:
        raise ValueError(f"unknown kind {bad}; expected one of {KINDS}")
    if df["task"].isna().any() or df["head"].isna().any():
        raise ValueError("every row needs a task and a head")
    df.loc[(df["kind"] == BASELINE) & df["backbone"].isna(), "backbone"] = BASELINE_NAME
    extra = [c for c in df.columns if c not in ID_COLUMNS + METRIC_COLUMNS]
    df = df[ID_COLUMNS + METRIC_COLUMNS + extra]
    task_order = {t: i for i, t in enumerate(dict.fromkeys(df["task"]))}
    keys = df.assign(_t=df["task"].map(task_order), _k=df["kind"].map({k: i for i, k in enumerate(KINDS)}))
    df = df.loc[keys.sort_values(["_t", "_k"], kind="mergesort").index]
    return df.reset_index(drop=True)


def format_reference_table(df: pd.DataFrame, task: str) -> str:
    """Terminal table in the reference report's layout; accuracy and COVID recall carry 95% intervals."""
    cells = _reference_cells(df, task)
    table = _text_table(REFERENCE_HEADER, cells)
    if not cells:
        return table + f"\n(no results for task {task!r})"
    return table + "\n" + _sample_line(df, task)


# ------------------------------------------------------------------------------------------------ plots


def _plot_comparison(df: pd.DataFrame, path: Path) -> Path:
    """Dot plot per task: accuracy and macro-F1 with 95% intervals; baseline rows on a grey band."""
    tasks = list(dict.fromkeys(df["task"])) if not df.empty else []
    heights = [max(2, len(_task_rows(df, t))) for t in tasks] or [2]
    from matplotlib.figure import Figure  # lazy: ~0.5 s; argument checks and tables never plot
    from matplotlib.lines import Line2D  # lazy: as above
    from matplotlib.patches import Patch  # lazy: as above

    fig = Figure(figsize=(9.5, 1.2 + 0.55 * sum(heights) + 0.9 * len(heights)), layout="constrained")
    axes = fig.subplots(len(heights), 1, squeeze=False, gridspec_kw={"height_ratios": heights})[:, 0]
    metrics = [
        ("accuracy", "Accuracy", "tab:blue", "o", -0.16),
        ("macro_f1", "Macro F1", "tab:orange", "s", 0.16),
    ]
    lows = (
        [df[f"{m}_ci_low"].min() for m, *_ in metrics] + [df[m].min() for m, *_ in metrics] if len(df) else []
    )
    finite_lows = [float(v) for v in lows if is_finite(v)]
    x_min = max(0.0, math.floor((min(finite_lows) - 0.05) * 10) / 10) if finite_lows else 0.0
    for ax, task in zip(axes, tasks or [None], strict=True):
        if task is None:
            ax.text(0.5, 0.5, "no results", ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
            continue
        rows = _task_rows(df, task)
        names = _names(rows)
        for i, r in enumerate(rows):
            if r.get("kind") == BASELINE:
                ax.axhspan(i - 0.5, i + 0.5, color="0.88", zorder=0)
            for m, _, color, marker, dy in metrics:
                v, lo, hi = r.get(m), r.get(f"{m}_ci_low"), r.get(f"{m}_ci_high")
                if not is_finite(v):
                    continue
                err = [[v - lo], [hi - v]] if is_finite(lo) and is_finite(hi) else None
                ax.errorbar(v, i + dy, xerr=err, fmt=marker, color=color, capsize=3, markersize=6, zorder=3)
        base_acc = [
            float(r["accuracy"])
            for r in rows
            if r.get("kind") == BASELINE and is_finite(r.get("accuracy"))
        ]
        if base_acc:
            ax.axvline(max(base_acc), color="0.35", linestyle=":", linewidth=1.2, zorder=1)
        ax.set_yticks(range(len(rows)), labels=names)
        for tick, r in zip(ax.get_yticklabels(), rows, strict=True):
            if r.get("kind") == BASELINE:
                tick.set_fontstyle("italic")
        ax.set_ylim(len(rows) - 0.5, -0.5)
        ax.set_xlim(x_min, 1.01)
        ax.grid(axis="x", color="0.85", zorder=0)
        ax.set_title(f"Task: {task}", loc="left", fontsize=11)
        ax.set_xlabel("Score on the test split (bars: 95% interval, bootstrap over groups)")
    handles = [
        Line2D([], [], color=c, marker=mk, linestyle="none", label=lab) for _, lab, c, mk, _ in metrics
    ]
    handles.append(Patch(facecolor="0.88", label="metadata-only baseline (no pixels)"))
    handles.append(Line2D([], [], color="0.35", linestyle=":", label="best baseline accuracy"))
    fig.legend(handles=handles, loc="outside upper center", ncols=4, frameon=False)
    return save_png(fig, path)


# ------------------------------------------------------------------------------------------------ files


def _md_task_section(df: pd.DataFrame, task: str, level: str = "##") -> list[str]:
    return [
        f"{level} Task: {task}",
        "",
        _sample_line(df, task),
        "",
        md_table(REFERENCE_HEADER, _reference_cells(df, task)),
        "",
        md_table(_OTHER_HEADER, _other_cells(df, task)),
        "",
    ]


def _scalar_columns(df: pd.DataFrame) -> pd.DataFrame:
    """Drop columns holding lists/dicts (e.g. a confusion matrix) for the Markdown/HTML views."""
    keep = [
        c
        for c in df.columns
        if not df[c].map(lambda v: isinstance(v, list | dict | tuple | np.ndarray)).any()
    ]
    return df[keep]


def write_comparison(df: pd.DataFrame, out_dir: Path) -> list[Path]:
    """comparison.csv (every column), comparison.md, comparison.html and comparison.png in `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / "comparison.csv"
    df.to_csv(csv_path, index=False)
    tasks = list(dict.fromkeys(df["task"])) if not df.empty else []
    md = ["# Model comparison", ""]
    for task in tasks:
        md += _md_task_section(df, task)
    if not tasks:
        md += ["No results.", ""]
    md += ["![Accuracy and macro F1 with 95% intervals](comparison.png)", ""]
    md_path = out / "comparison.md"
    md_path.write_text("\n".join(md), encoding="utf-8")
    table_html = _scalar_columns(df).to_html(index=False, float_format=lambda v: f"{v:.4f}", na_rep="n/a")
    html_path = out / "comparison.html"
    html_path.write_text(
        "<!doctype html>\n<html><head><meta charset='utf-8'><title>xray-spark comparison</title>\n"
        "<style>body{font-family:sans-serif} table{border-collapse:collapse;font-size:13px}"
        " td,th{border:1px solid #ccc;padding:3px 6px;text-align:right} th{background:#f0f0f0}</style>"
        "</head><body>\n<h1>Model comparison</h1>\n<img src='comparison.png' alt='comparison plot'>\n"
        f"{table_html}\n</body></html>\n",
        encoding="utf-8",
    )
    png_path = _plot_comparison(df, out / "comparison.png")
    return [csv_path, md_path, html_path, png_path]


def _best_rows(df: pd.DataFrame, task: str, metric: str) -> tuple[list[dict], list[dict]]:
    rows = _task_rows(df, task)
    return ([r for r in rows if r.get("kind") == IMAGE and is_finite(r.get(metric))],
            [r for r in rows if r.get("kind") == BASELINE and is_finite(r.get(metric))])


def baseline_matches(df: pd.DataFrame, task: str, metric: str = "accuracy") -> bool | None:
    """`as_good_as` for the best image model and the best metadata-only baseline of `task` (the verdict
    `baseline_comparison` words); None when there is no baseline, model or interval."""
    image, base = _best_rows(df, task, metric)
    if not image or not base:
        return None
    return as_good_as(max(image, key=lambda r: float(r[metric])), max(base, key=lambda r: float(r[metric])),
                      metric)


def baseline_comparison(df: pd.DataFrame, task: str, metric: str = "accuracy") -> str:
    """One plain paragraph: best image model vs best metadata-only baseline on `metric` for `task`."""
    image, base = _best_rows(df, task, metric)
    label = metric.replace("_", " ")
    if not base:
        return (f"No metadata-only baseline was evaluated for task {task}, so these numbers cannot tell "
                "disease signal from dataset cues (file size, dimensions, format, colour mode).")
    if not image:
        return (f"Only the metadata-only baseline was evaluated for task {task}; there is no image model "
                "to compare.")
    best = max(image, key=lambda r: float(r[metric]))
    bbest = max(base, key=lambda r: float(r[metric]))
    b_val, m_val = float(bbest[metric]), float(best[metric])
    lo, hi = best.get(f"{metric}_ci_low"), best.get(f"{metric}_ci_high")
    who = (f"Best image model: {model_name(best)}, {label} {with_ci(best, metric)}. "
           f"Best metadata-only baseline: {model_name(bbest)}, {label} {b_val:.3f}")
    if not (is_finite(lo) and is_finite(hi)):
        gap = m_val - b_val
        return (f"{who}. No interval is available, so only the point estimates can be compared "
                f"(image model minus baseline: {gap:+.3f}); without an interval a small gap is no evidence "
                "that the model sees more than the file metadata.")
    lo, hi = float(lo), float(hi)
    if baseline_matches(df, task, metric):
        where, verb = ("inside", "does as well as") if b_val <= hi else ("above", "does better than")
        return (f"{who}, {where} the image model's 95% interval. A head that never sees a pixel, only file "
                f"size, dimensions, format and colour mode, {verb} the image model: the dataset, not the "
                "model, is being measured. These scores cannot be read as evidence of detecting COVID-19 on "
                "a radiograph.")
    return (f"{who}, below the image model's 95% interval (by {lo - b_val:.3f}), so the "
            "image model uses more than the file metadata. That does not rule out other shortcuts that live "
            "in the pixels (source-specific borders, text markers, exposure), which only an external-source "
            "evaluation can check.")


def _rel(path: Path, base: Path) -> str:
    try:
        return Path(os.path.relpath(Path(path).resolve(), base.resolve())).as_posix()
    except ValueError:  # another drive on Windows
        return Path(path).resolve().as_uri()


def per_source_md(title: str, per_source: dict[str, dict[str, Any]]) -> str:
    """One model's metrics per source: source, n, accuracy, COVID recall, macro F1 (95% intervals)."""
    cells = [[source, str(int(m.get("n_test", 0))), with_ci(m, "accuracy"), with_ci(m, "covid_recall"),
              with_ci(m, "macro_f1")] for source, m in per_source.items()]
    return f"### {title}\n\n{md_table(('source', 'n', 'accuracy', 'COVID recall', 'macro F1'), cells)}\n"


def sources_md(per_source: dict[str, dict[str, int]], selections: dict[str, dict[str, Any]],
               cross_source_pairs: int) -> str:
    """The merged sources: images each brought (ok / set aside at ingest), what `fetch` left out of each
    (laterals, CT, other findings: its selection.json), and how many copies across sources were grouped."""
    cells = []
    for source, counts in per_source.items():
        left = selections.get(source, {}).get("left_out")
        left_text = ("; ".join(f"{why} {n}" for why, n in sorted(left.items(), key=lambda kv: -kv[1]))
                     if left else ("none" if left is not None else "n/a (not fetched)"))
        cells.append([source, str(counts.get("ok", 0)), str(counts.get("quarantined", 0)), left_text])
    table = md_table(("source", "images used", "set aside at ingest", "left out by fetch"), cells)
    return (f"{table}\n\nCopies of one radiograph in two sources (exact, near, cropped or rescaled) found "
            f"and grouped: {cross_source_pairs} pair(s); each group sits on one side of the split.\n")


def append_section(report: Path, heading: str, intro: str, blocks: list[str]) -> None:
    """Add a `## heading` section (an intro paragraph, then markdown blocks) to an existing report.md."""
    text = f"\n## {heading}\n\n{intro}\n\n" + "\n".join(blocks)
    report.write_text(report.read_text() + text)


def write_report(
    df: pd.DataFrame,
    out_dir: Path,
    *,
    context: dict[str, str],
    confusion_pngs: dict[str, Path],
    metric: str = "accuracy",
) -> Path:
    """report.md: context, per-task reference tables, the shortcut-baseline paragraph, links to the plots."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    md = ["# xray-spark evaluation report", "", f"Generated {stamp}.", "", "## Context", ""]
    md += [f"- **{html.escape(str(k))}**: {v}" for k, v in context.items()] or ["- (no context given)"]
    md.append("")
    tasks = list(dict.fromkeys(df["task"])) if not df.empty else []
    if not tasks:
        md += ["No results.", ""]
    for task in tasks:
        md += _md_task_section(df, task)
        md += [
            f"**Shortcut check ({metric.replace('_', ' ')}).** {baseline_comparison(df, task, metric)}",
            "",
        ]
    if (out / "comparison.png").is_file():
        md += ["## Comparison plot", "", "![Accuracy and macro F1 with 95% intervals](comparison.png)", ""]
    if confusion_pngs:
        md += ["## Confusion matrices", ""]
        for name, png in confusion_pngs.items():
            md += [f"### {name}", "", f"![confusion matrix {name}]({_rel(png, out)})", ""]
    path = out / "report.md"
    path.write_text("\n".join(md), encoding="utf-8")
    log.info("wrote %s", path)
    return path
