"""Metrics against hand-computed confusion matrices, intervals against known values and their properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from xray_spark.evaluation.metrics import (
    _group_codes,
    _resampled,
    bootstrap_intervals,
    compute_metrics,
    confusion,
    metrics_with_intervals,
    wilson_interval,
)

BIN = ["no_findings", "covid"]
TRI = ["covid", "no_findings", "pneumonia"]


# ------------------------------------------------------------------------------ hand-computed metrics


def test_binary_metrics_match_hand_computation():
    # true covid: 3 predicted covid, 1 missed; true no_findings: 2 called covid, 4 right
    y_true = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    y_pred = [1, 1, 1, 0, 1, 1, 0, 0, 0, 0]
    assert confusion(np.array(y_true), np.array(y_pred), 2).tolist() == [[4, 2], [1, 3]]
    m = compute_metrics(np.array(y_true), np.array(y_pred), None, BIN)
    assert m["accuracy"] == pytest.approx(0.7)
    assert m["covid_precision"] == pytest.approx(0.6)  # 3 / 5
    assert m["covid_recall"] == pytest.approx(0.75)  # 3 / 4
    assert m["covid_f1"] == pytest.approx(0.6666667)  # 6 / 9
    assert m["precision_no_findings"] == pytest.approx(0.8)  # 4 / 5
    assert m["recall_no_findings"] == pytest.approx(0.6666667)  # 4 / 6
    assert m["f1_no_findings"] == pytest.approx(0.7272727)  # 8 / 11
    assert m["macro_f1"] == pytest.approx(0.6969697)
    assert (m["precision_covid"], m["recall_covid"], m["f1_covid"]) == (
        m["covid_precision"], m["covid_recall"], m["covid_f1"],
    )
    assert math.isnan(m["roc_auc_macro"]) and math.isnan(m["brier"]) and math.isnan(m["ece"])


def test_three_class_metrics_match_hand_computation():
    y_true = np.array([0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 2])
    y_pred = np.array([0, 1, 2, 1, 1, 1, 0, 2, 2, 2, 1, 1])
    assert confusion(y_true, y_pred, 3).tolist() == [[1, 1, 1], [1, 3, 0], [0, 2, 3]]
    m = compute_metrics(y_true, y_pred, None, TRI)
    assert m["accuracy"] == pytest.approx(0.5833333)  # 7 / 12
    assert m["covid_precision"] == pytest.approx(0.5)  # 1 / 2
    assert m["covid_recall"] == pytest.approx(0.3333333)  # 1 / 3
    assert m["covid_f1"] == pytest.approx(0.4)
    assert m["precision_no_findings"] == pytest.approx(0.5)  # 3 / 6
    assert m["recall_no_findings"] == pytest.approx(0.75)  # 3 / 4
    assert m["f1_no_findings"] == pytest.approx(0.6)
    assert m["precision_pneumonia"] == pytest.approx(0.75)  # 3 / 4
    assert m["recall_pneumonia"] == pytest.approx(0.6)  # 3 / 5
    assert m["f1_pneumonia"] == pytest.approx(0.6666667)
    assert m["macro_f1"] == pytest.approx(0.5555556)


def test_zero_division_is_zero_and_absent_class_auc_is_nan():
    # covid never true and never predicted: its precision/recall/F1 are 0/0 -> 0.0 and drag macro F1 down
    y_true = np.array([1, 1, 2, 2])
    y_pred = np.array([1, 2, 2, 2])
    proba = np.array([[0.1, 0.6, 0.3], [0.1, 0.3, 0.6], [0.2, 0.2, 0.6], [0.0, 0.1, 0.9]])
    m = compute_metrics(y_true, y_pred, proba, TRI)
    assert (m["covid_precision"], m["covid_recall"], m["covid_f1"]) == (0.0, 0.0, 0.0)
    assert m["precision_no_findings"] == pytest.approx(1.0)
    assert m["recall_no_findings"] == pytest.approx(0.5)
    assert m["f1_pneumonia"] == pytest.approx(0.8)
    assert m["macro_f1"] == pytest.approx(0.4888889)  # (0 + 2/3 + 4/5) / 3
    assert math.isnan(m["roc_auc_covid"])
    assert m["roc_auc_no_findings"] == pytest.approx(1.0)
    assert m["roc_auc_macro"] == pytest.approx(np.mean([m["roc_auc_no_findings"], m["roc_auc_pneumonia"]]))


def test_model_that_never_predicts_covid():
    m = compute_metrics(np.array([1, 1, 0, 0]), np.array([0, 0, 0, 0]), None, BIN)
    assert m["covid_precision"] == 0.0 and m["covid_recall"] == 0.0 and m["covid_f1"] == 0.0
    assert m["accuracy"] == pytest.approx(0.5)


def test_brier_hand_cases():
    # row 1: (0.2-0)^2 + (0.8-1)^2 = 0.08; row 2: (0.4-1)^2 + (0.6-0)^2 = 0.72; mean 0.40
    proba = np.array([[0.2, 0.8], [0.4, 0.6]])
    assert compute_metrics(np.array([1, 0]), np.array([1, 1]), proba, BIN)["brier"] == pytest.approx(0.40)
    # 3 classes, true class 0: 0.5^2 + 0.3^2 + 0.2^2 = 0.38
    m = compute_metrics(np.array([0]), np.array([0]), np.array([[0.5, 0.3, 0.2]]), TRI)
    assert m["brier"] == pytest.approx(0.38)


def test_ece_hand_cases():
    # confidences .95 (right), .95 (wrong), .65 (right), .65 (right)
    proba = np.array([[0.05, 0.95], [0.95, 0.05], [0.35, 0.65], [0.65, 0.35]])
    y_true = np.array([1, 1, 1, 0])
    y_pred = proba.argmax(axis=1)
    # 10 bins: bin (0.9,1]: |0.5 - 0.95| * 2/4 = 0.225; bin (0.6,0.7]: |1 - 0.65| * 2/4 = 0.175
    assert compute_metrics(y_true, y_pred, proba, BIN)["ece"] == pytest.approx(0.40)
    # 1 bin: |accuracy 0.75 - mean confidence 0.80| = 0.05
    assert compute_metrics(y_true, y_pred, proba, BIN, n_bins=1)["ece"] == pytest.approx(0.05)


def test_ece_bins_are_right_closed():
    # conf 0.5 (wrong) belongs to (0, 0.5], conf 0.75 (right) to (0.5, 1]: 0.5*0.5 + 0.5*0.25 = 0.375.
    # Left-closed bins would put both in one bin and give |0.5 - 0.625| = 0.125.
    proba = np.array([[0.5, 0.5], [0.25, 0.75]])
    m = compute_metrics(np.array([1, 1]), np.array([0, 1]), proba, BIN, n_bins=2)
    assert m["ece"] == pytest.approx(0.375)


def test_roc_auc_equals_sklearn_on_random_case_with_ties():
    rng = np.random.default_rng(3)
    n = 300
    y = rng.integers(0, 3, n)
    proba = rng.dirichlet([1, 1, 1], n).round(1)  # rounding makes many ties
    proba[:, 2] = 1.0 - proba[:, 0] - proba[:, 1]
    m = compute_metrics(y, proba.argmax(axis=1), proba, TRI)
    for i, lab in enumerate(TRI):
        assert m[f"roc_auc_{lab}"] == pytest.approx(roc_auc_score(y == i, proba[:, i]), abs=1e-12)
    assert m["roc_auc_macro"] == pytest.approx(roc_auc_score(y, proba, multi_class="ovr"), abs=1e-12)

    yb = rng.integers(0, 2, n)
    pb = rng.random(n).round(2)
    binary = np.column_stack([1 - pb, pb])
    mb = compute_metrics(yb, (pb > 0.5).astype(int), binary, BIN)
    assert mb["roc_auc_macro"] == pytest.approx(roc_auc_score(yb, pb), abs=1e-12)
    assert mb["roc_auc_macro"] == mb["roc_auc_covid"]


def test_inputs_strings_and_spark_style_floats_give_same_result():
    y_true = np.array([0, 1, 2, 1, 0])
    y_pred = np.array([0, 1, 1, 1, 2])
    as_int = compute_metrics(y_true, y_pred, None, TRI)
    as_str = compute_metrics(np.array(TRI)[y_true], np.array(TRI)[y_pred], None, TRI)
    as_float = compute_metrics(y_true.astype(float), y_pred.astype(float), None, TRI)
    assert as_int == as_str == as_float


@pytest.mark.parametrize(
    ("y_true", "y_pred", "proba", "positive", "message"),
    [
        (["covid", "flu"], ["covid", "covid"], None, "covid", "not in"),
        ([0, 5], [0, 1], None, "covid", "outside"),
        ([0.0, 0.5], [0, 1], None, "covid", "non-integral"),
        ([0, 1], [0], None, "covid", "rows"),
        ([0, 1], [0, 1], np.ones((2, 2)), "covid", "shape"),
        ([0, 1], [0, 1], None, "tumour", "positive class"),
    ],
)
def test_bad_inputs_raise_readable_errors(y_true, y_pred, proba, positive, message):
    with pytest.raises(ValueError, match=message):
        compute_metrics(np.array(y_true), np.array(y_pred), proba, TRI, positive=positive)


# ---------------------------------------------------------------------------------------------- intervals


def test_wilson_known_values():
    iv = wilson_interval(8, 10)
    assert (iv.low, iv.high, iv.method) == (
        pytest.approx(0.4902, abs=5e-4),
        pytest.approx(0.9433, abs=5e-4),
        "wilson",
    )
    zero = wilson_interval(0, 10)
    assert zero.low == 0.0 and zero.high == pytest.approx(0.2775, abs=5e-4)
    full = wilson_interval(10, 10)
    assert full.low == pytest.approx(0.7225, abs=5e-4) and full.high == 1.0
    assert math.isnan(wilson_interval(0, 0).low)
    with pytest.raises(ValueError):
        wilson_interval(11, 10)


def _noisy(n: int, acc: float, seed: int, k: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    pred = np.where(rng.random(n) < acc, y, (y + rng.integers(1, k, n)) % k)
    proba = np.full((n, k), 0.2 / (k - 1))
    proba[np.arange(n), pred] = 0.8
    return y, pred, proba


def test_vectorised_resamples_equal_metrics_on_expanded_rows():
    """Each bootstrap resample must equal compute_metrics on the rows it stands for (groups repeated)."""
    y, pred, proba = _noisy(120, 0.7, seed=5)
    proba = np.random.default_rng(5).dirichlet([1, 1, 1], 120)
    groups = np.random.default_rng(6).integers(0, 40, 120)
    codes = _group_codes(groups)
    counts = np.random.default_rng(7).multinomial(
        codes.max() + 1, np.full(codes.max() + 1, 1 / (codes.max() + 1)), 5
    )
    wanted = [
        "accuracy",
        "covid_recall",
        "macro_f1",
        "f1_pneumonia",
        "brier",
        "ece",
        "roc_auc_covid",
        "roc_auc_macro",
    ]
    got = _resampled(y, pred, proba, TRI, "covid", codes, counts.astype(float), wanted, 10)
    for r in range(counts.shape[0]):
        rows = np.concatenate(
            [np.repeat(np.flatnonzero(codes == g), counts[r, g]) for g in range(counts.shape[1])]
        )
        expect = compute_metrics(y[rows], pred[rows], proba[rows], TRI)
        for m in wanted:
            assert got[m][r] == pytest.approx(expect[m], abs=1e-12), m


def test_bootstrap_contains_point_estimate_and_is_reproducible():
    y, pred, proba = _noisy(300, 0.8, seed=1)
    groups = np.arange(300) // 3
    point = compute_metrics(y, pred, proba, TRI)
    metrics = ("accuracy", "covid_recall", "macro_f1", "roc_auc_macro", "brier", "ece")
    a = bootstrap_intervals(y, pred, proba, TRI, groups, metrics=metrics, seed=11)
    for m in metrics:
        assert a[m].method == "bootstrap-groups"
        assert a[m].low < point[m] < a[m].high, m
    assert a == bootstrap_intervals(y, pred, proba, TRI, groups, metrics=metrics, seed=11)
    assert a != bootstrap_intervals(y, pred, proba, TRI, groups, metrics=metrics, seed=12)


def test_bootstrap_narrows_with_more_data():
    y, pred, proba = _noisy(100, 0.8, seed=2)
    small = bootstrap_intervals(y, pred, proba, TRI, np.arange(100))["accuracy"]
    big = bootstrap_intervals(np.tile(y, 4), np.tile(pred, 4), np.tile(proba, (4, 1)), TRI, np.arange(400))[
        "accuracy"
    ]  # same accuracy, four times as many independent groups
    assert (big.high - big.low) < 0.65 * (small.high - small.low)


def test_grouped_resampling_is_wider_when_groups_are_correlated():
    # 20 patients x 10 images; every image of a patient is right or every one is wrong
    y = np.tile([0, 1, 2, 0, 1], 40)
    patient = np.repeat(np.arange(20), 10)
    wrong_patients = np.isin(patient, [1, 4, 7, 11, 15, 18])
    pred = np.where(wrong_patients, (y + 1) % 3, y)
    grouped = bootstrap_intervals(y, pred, None, TRI, patient)["accuracy"]
    rows = bootstrap_intervals(y, pred, None, TRI, np.arange(200))["accuracy"]
    assert grouped.contains(0.7) and rows.contains(0.7)
    assert (grouped.high - grouped.low) > 2 * (rows.high - rows.low)


def test_bootstrap_rejects_unknown_metric_and_handles_missing_proba():
    y, pred, _ = _noisy(50, 0.8, seed=4)
    with pytest.raises(ValueError, match="unknown metrics"):
        bootstrap_intervals(y, pred, None, TRI, np.arange(50), metrics=("accuracy", "kappa"))
    iv = bootstrap_intervals(y, pred, None, TRI, np.arange(50), metrics=("brier",))["brier"]
    assert math.isnan(iv.low) and math.isnan(iv.high)


def test_missing_group_ids_become_their_own_groups():
    codes = _group_codes(np.array(["p1", "p1", None, "", float("nan"), "p2"], dtype=object))
    assert codes[0] == codes[1]
    assert len(set(codes.tolist())) == 5  # p1, p2 and three unknown rows on their own


def test_metrics_with_intervals_flat_dict():
    y, pred, proba = _noisy(90, 0.75, seed=8)
    groups = np.array([f"patient-{i // 2}" for i in range(90)])
    out = metrics_with_intervals(y, pred, proba, TRI, groups, n_resamples=200, seed=1)
    assert out["n_test"] == 90 and out["n_test_groups"] == 45
    for m in ("accuracy", "covid_recall", "macro_f1"):
        assert out[f"{m}_ci_low"] <= out[m] <= out[f"{m}_ci_high"]
    pos = y == 0
    wil = wilson_interval(int(np.sum(pred[pos] == 0)), int(pos.sum()))
    assert (out["covid_recall_wilson_low"], out["covid_recall_wilson_high"]) == (wil.low, wil.high)
    assert set(compute_metrics(y, pred, proba, TRI)) <= set(out)
    assert all(isinstance(v, int | float) for v in out.values())
