"""Report files, the reference-style terminal table, PNG validity and the shortcut-baseline paragraph."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from xray_spark.evaluation.metrics import confusion, metrics_with_intervals
from xray_spark.evaluation.report_parts import plot_confusion
from xray_spark.train.report import (
    REFERENCE_HEADER,
    baseline_comparison,
    comparison_table,
    format_reference_table,
    write_comparison,
    write_report,
)

TASK_LABELS = {"binary": ["no_findings", "covid"], "multiclass": ["covid", "no_findings", "pneumonia"]}
COMBOS = [("image", "ResNet50", "lr"), ("image", "ResNet50", "rf"), ("image", "InceptionV3", "lr"),
          ("metadata-baseline", "metadata-only", "lr")]
MEASURED = "the dataset, not the model, is being measured"


def _evaluated_rows() -> list[dict]:
    """Real metrics_with_intervals() output for 2 tasks x 4 combinations on synthetic predictions."""
    rng = np.random.default_rng(0)
    rows = []
    for task, labels in TASK_LABELS.items():
        k = len(labels)
        y = rng.integers(0, k, 120)
        groups = rng.integers(0, 90, 120)
        for kind, backbone, head in COMBOS:
            pred = np.where(rng.random(120) < 0.85, y, rng.integers(0, k, 120))
            proba = np.full((120, k), 0.1 / (k - 1))
            proba[np.arange(120), pred] = 0.9
            m = metrics_with_intervals(y, pred, proba, labels, groups, n_resamples=200)
            rows.append({"task": task, "backbone": backbone, "head": head, "kind": kind, "weights": "none",
                         "run_id": f"run-{len(rows)}", "confusion": confusion(y, pred, k).tolist(),
                         "fit_seconds": 1.5, "featurize_seconds": 10.0, **m})
    return rows


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return comparison_table(_evaluated_rows())


def _is_png(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.load()
        return im.size


def test_comparison_table_one_row_per_combination(table):
    assert len(table) == 8
    assert list(table.columns[:5]) == ["task", "kind", "backbone", "head", "weights"]
    for col in ("accuracy_ci_low", "accuracy_ci_high", "covid_recall_ci_low", "macro_f1_ci_high", "brier",
                "ece", "roc_auc_macro", "fit_seconds", "featurize_seconds", "run_id"):
        assert col in table.columns
    # image models before the baseline within each task, caller's order otherwise
    assert table[table["task"] == "binary"]["kind"].tolist() == ["image"] * 3 + ["metadata-baseline"]
    assert table[table["task"] == "binary"]["backbone"].tolist()[:3] == [
        "ResNet50",
        "ResNet50",
        "InceptionV3",
    ]


def test_comparison_table_rejects_unknown_kind():
    with pytest.raises(ValueError, match="unknown kind"):
        comparison_table([{"task": "binary", "head": "lr", "backbone": "ResNet50", "kind": "vision"}])


def test_reference_table_layout(table):
    text = format_reference_table(table, "binary")
    lines = text.splitlines()
    assert [c.strip() for c in lines[0].split("|")] == list(REFERENCE_HEADER)
    assert lines[0].startswith("Model ") and lines[0].endswith("| Accuracy")
    assert set(lines[1]) <= {"-", "+"}
    body = lines[2:6]
    assert [c.split("|")[0].strip() for c in body] == [
        "ResNet50 + lr", "ResNet50 + rf", "InceptionV3 + lr", "metadata-only + lr",
    ]
    with_ci = re.compile(r"^\d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\]$")
    first = table.iloc[0]
    cells = [c.strip() for c in body[0].split("|")]
    assert with_ci.match(cells[2]) and with_ci.match(cells[4])  # recall and accuracy carry intervals
    assert cells[4] == f"{first.accuracy:.3f} [{first.accuracy_ci_low:.3f}, {first.accuracy_ci_high:.3f}]"
    assert cells[1] == f"{first.covid_precision:.3f}"
    # the columns line up: every '|' at the same offsets on every row
    bars = {tuple(m.start() for m in re.finditer(r"\|", line)) for line in [lines[0], *body]}
    assert len(bars) == 1
    assert "no results" in format_reference_table(table, "nonexistent")


def test_plot_confusion_writes_a_png(tmp_path):
    cm = np.array([[50, 3, 2], [4, 40, 6], [0, 5, 45]])
    path = plot_confusion(
        cm, TASK_LABELS["multiclass"], "multiclass\nResNet50 + lr", tmp_path / "a" / "cm.png"
    )
    width, height = _is_png(path)
    assert width > 300 and height > 300
    with pytest.raises(ValueError, match="does not match"):
        plot_confusion(cm, ["a", "b"], "x", tmp_path / "bad.png")


def test_write_comparison_files(table, tmp_path):
    files = write_comparison(table, tmp_path / "out")
    assert [p.name for p in files] == ["comparison.csv", "comparison.md", "comparison.html", "comparison.png"]
    assert all(p.is_file() and p.stat().st_size > 0 for p in files)
    csv = pd.read_csv(files[0])
    assert len(csv) == len(table) == 8
    assert {"accuracy_ci_low", "accuracy_ci_high", "covid_recall_ci_low", "macro_f1_ci_low"} <= set(
        csv.columns
    )
    assert csv["accuracy"].tolist() == pytest.approx(table["accuracy"].tolist())
    md = files[1].read_text()
    assert "| " + " | ".join(REFERENCE_HEADER) + " |" in md and "## Task: multiclass" in md
    assert "<table" in files[2].read_text()
    _is_png(files[3])


def test_write_report_content_and_links(table, tmp_path):
    out = tmp_path / "out"
    write_comparison(table, out)
    cm_png = plot_confusion(
        np.array([[5, 1], [2, 7]]), TASK_LABELS["binary"], "binary", out / "plots" / "cm.png"
    )
    context = {"dataset": "ozturk, 1124 images", "split hash": "abc123", "seeds": "split 42, train 7",
               "weights": "none (random init)", "what could not be measured here": "ImageNet weights offline"}
    path = write_report(table, out, context=context, confusion_pngs={"binary/ResNet50/lr": cm_png})
    text = path.read_text()
    for key, value in context.items():
        assert f"**{key}**: {value}" in text
    assert text.count("| " + " | ".join(REFERENCE_HEADER) + " |") == 2  # one per task
    assert text.count("**Shortcut check") == 2
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert "plots/cm.png" in links and "comparison.png" in links
    assert all((out / link).is_file() for link in links)


def _row(kind: str, backbone: str, head: str, acc: float, low: float, high: float) -> dict:
    return {"task": "binary", "kind": kind, "backbone": backbone, "head": head, "accuracy": acc,
            "accuracy_ci_low": low, "accuracy_ci_high": high}


def test_baseline_paragraph_when_baseline_matches_the_model():
    df = comparison_table([
        _row("image", "ResNet50", "lr", 0.97, 0.94, 0.99),
        _row("image", "InceptionV3", "lr", 0.93, 0.89, 0.96),
        _row("metadata-baseline", "metadata-only", "rf", 0.96, 0.93, 0.98),
        _row("metadata-baseline", "metadata-only", "lr", 0.60, 0.50, 0.70),
    ])
    text = baseline_comparison(df, "binary")
    assert "ResNet50 + lr" in text and "metadata-only + rf" in text  # the best of each kind
    assert "0.970 [0.940, 0.990]" in text and "0.960" in text
    assert "inside the image model's 95% interval" in text
    assert MEASURED in text


def test_baseline_paragraph_when_baseline_beats_the_model():
    df = comparison_table([_row("image", "ResNet50", "lr", 0.80, 0.75, 0.85),
                           _row("metadata-baseline", "metadata-only", "rf", 0.95, 0.92, 0.98)])
    text = baseline_comparison(df, "binary")
    assert "above the image model's 95% interval" in text and MEASURED in text


def test_baseline_paragraph_when_baseline_is_far_below():
    df = comparison_table([_row("image", "ResNet50", "lr", 0.95, 0.92, 0.97),
                           _row("metadata-baseline", "metadata-only", "rf", 0.55, 0.45, 0.65)])
    text = baseline_comparison(df, "binary")
    assert "below the image model's 95% interval (by 0.370)" in text
    assert MEASURED not in text


def test_baseline_paragraph_without_baseline():
    df = comparison_table([_row("image", "ResNet50", "lr", 0.95, 0.92, 0.97)])
    assert "No metadata-only baseline" in baseline_comparison(df, "binary")


def test_empty_table_still_writes_files(tmp_path):
    df = comparison_table([])
    files = write_comparison(df, tmp_path)
    _is_png(files[3])
    report = write_report(df, tmp_path, context={}, confusion_pngs={})
    assert "No results." in report.read_text()
