"""Fitting heads on a small synthetic feature table: the grouped CrossValidator path, class weights and
one-vs-rest heads without probabilities. (Real images go through these in test_train.py.)"""

from __future__ import annotations

import numpy as np
import pytest

from xray_spark.models.frames import WEIGHT, task_frame
from xray_spark.tasks import get_task
from xray_spark.train.fit import fit_head
from xray_spark.train.heads import get_head, head_params

LABELS = ("covid", "no_findings", "pneumonia")


@pytest.fixture(scope="module")
def table(spark):
    """150 rows, 3 separable classes (covid rarer), 30 groups of 5 rows; fold 0 = test, folds 1-4 = train."""
    from pyspark.ml.linalg import Vectors

    rng = np.random.default_rng(0)
    rows = []
    for g in range(30):
        label = LABELS[0] if g < 6 else LABELS[1 + g % 2]
        centre = np.eye(4)[LABELS.index(label)] * 3
        fold = g % 5
        for i in range(5):
            x = centre + rng.normal(size=4)
            rows.append((f"/img/{g}_{i}.png", f"sha{g}_{i}", label, "test" if fold == 0 else "train", fold,
                         f"g{g}", Vectors.dense(x.tolist())))
    columns = ["path", "sha256", "label", "split", "fold", "group_id", "features"]
    return spark.createDataFrame(rows, columns).cache()


def test_cross_validation_uses_the_grouped_folds_and_the_configured_metric(table) -> None:
    task = get_task("multiclass")
    spec = get_head("lr")
    frame = task_frame(table, task, weighted=False)
    fit = fit_head(spec, head_params(spec, {"maxIter": 20}, 7), frame, task, 4,
                   cv_grid={"regParam": [0.001, 100.0]}, cv_metric="accuracy")
    assert set(fit.cv_best) == {"regParam", "cv_accuracy"}
    assert fit.cv_best["regParam"] == 0.001  # 100.0 flattens the model to the majority class
    assert 0.8 <= fit.cv_best["cv_accuracy"] <= 1.0
    assert len(fit.y_true) == 30 and set(fit.groups) == {f"g{g}" for g in range(0, 30, 5)}
    np.testing.assert_allclose(fit.proba.sum(axis=1), 1.0, atol=1e-9)


def test_class_weights_are_inverse_frequency_on_the_train_side(table) -> None:
    task = get_task("multiclass")
    frame = task_frame(table, task, weighted=True).where("split = 'train'").toPandas()
    weights = frame.groupby("label")[WEIGHT].first()
    counts = frame["label"].value_counts()
    total = counts.sum()
    for label, n in counts.items():
        assert weights[label] == pytest.approx(total / (3 * n))
    assert weights["covid"] > weights["no_findings"]  # the rare class weighs more


FAST = {"lr": {"maxIter": 20}, "gbt": {"maxIter": 5}, "svc": {"maxIter": 10},
        "mlp": {"maxIter": 30, "hidden": 8}, "rf": {"numTrees": 10}}


@pytest.mark.parametrize("task_name", ["binary", "multiclass"])
@pytest.mark.parametrize("head", ["lr", "rf", "dt", "gbt", "svc", "mlp"])
def test_every_registered_head_fits_both_tasks(table, head: str, task_name: str) -> None:
    """The demo trains all six heads on both tasks: GBT and LinearSVC go one-vs-rest for three classes
    (no `probability` column there: scores are a softmax of rawPrediction), MLP ignores class weights."""
    task = get_task(task_name)
    spec = get_head(head)
    fit = fit_head(spec, head_params(spec, FAST.get(head), 7), task_frame(table, task, weighted=True),
                   task, 4, weighted=True)
    one_vs_rest = spec.binary_only and task.n_classes > 2
    assert (type(fit.model.stages[-1]).__name__ == "OneVsRestModel") == one_vs_rest
    assert fit.proba.shape == (len(fit.y_true), task.n_classes) and len(fit.y_true) > 0
    np.testing.assert_allclose(fit.proba.sum(axis=1), 1.0, atol=1e-9)
    assert (fit.y_pred == fit.y_true).mean() >= 0.8
