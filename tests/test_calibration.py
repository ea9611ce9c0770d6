"""Temperature scaling (models/calibration*.py, train/calibrate.py): the fit finds a known temperature and
never moves the top class; the Spark stage equals the numpy function the Spark-free head runs, survives
save/load inside a PipelineModel, and `train`'s calibration is fitted on out-of-fold predictions of the
training side only, never the test split. The end-to-end checks (report, MLflow, champions, evaluate, serve)
ride on the shared `trained` run in test_train.py, test_external_eval.py and test_serving_export.py."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from xray_spark.models.calibration import TEMPERATURE_BOUNDS, fit_temperature, nll
from xray_spark.models.heads_numpy import (
    FORMAT_VERSION,
    HeadFormatError,
    LinearSVC,
    Logistic,
    SparkFreeHead,
    temperature_scale,
)


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _overconfident(n: int, k: int, temperature: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from softmax(z / T), probabilities reported as softmax(z): a head T times too sure."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, k)) * 4
    truth = _softmax(z / temperature)
    y = np.array([rng.choice(k, p=row) for row in truth])
    return _softmax(z), y


def test_fit_finds_the_temperature_and_never_moves_the_top_class() -> None:
    for k, true_t in ((2, 2.5), (3, 0.6)):
        proba, y = _overconfident(4000, k, true_t, seed=k)
        fit = fit_temperature(proba, y)
        assert fit.temperature == pytest.approx(true_t, rel=0.1), (k, fit)
        assert fit.nll_after < fit.nll_before and fit.n == 4000 and not fit.at_bound
        assert nll(proba, y, fit.temperature) == pytest.approx(fit.nll_after)
        scaled = temperature_scale(proba, fit.temperature)
        assert np.allclose(scaled.sum(axis=1), 1.0)
        np.testing.assert_array_equal(scaled.argmax(axis=1), proba.argmax(axis=1))
    # a head certain on every row it gets right (a pure tree leaf: exact 0 and 1) is softened, within bounds
    hard = np.eye(3)[[0, 1, 2, 0, 1, 2, 0, 1]]
    fit = fit_temperature(hard, np.array([0, 1, 2, 0, 1, 2, 1, 0]))
    assert 1.0 < fit.temperature <= TEMPERATURE_BOUNDS[1]
    assert 0.5 < temperature_scale(hard, fit.temperature).max(axis=1).mean() < 1.0
    with pytest.raises(ValueError, match="class indices"):
        fit_temperature(hard, np.array([0, 1, 2, 0, 1, 2, 3, 0]))


def test_a_head_with_a_temperature_saves_and_loads_it(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 4))
    plain = SparkFreeHead(Logistic(rng.normal(size=(3, 4)), rng.normal(size=3), True), ["a", "b", "c"], 4)
    hot = SparkFreeHead(plain.classifier, plain.labels, 4, temperature=1.7)
    loaded = SparkFreeHead.load(hot.save(tmp_path / "hot"))
    assert loaded.temperature == 1.7
    labels, values = loaded.predict(x)
    plain_labels, plain_values = plain.predict(x)
    assert labels == plain_labels  # the prediction is the classifier's
    np.testing.assert_array_equal(values, temperature_scale(plain_values, 1.7))
    import json

    assert json.loads((tmp_path / "hot" / "head.json").read_text())["format_version"] == FORMAT_VERSION == 2
    assert json.loads((plain.save(tmp_path / "plain") / "head.json").read_text())["format_version"] == 1
    assert SparkFreeHead.load(tmp_path / "plain").temperature is None
    with pytest.raises(HeadFormatError, match="head with probabilities"):
        SparkFreeHead(LinearSVC(np.ones(4), 0.0), ["a", "b"], 4, temperature=2.0)


def test_temperature_stage_equals_numpy_and_round_trips_in_a_pipeline(spark, tmp_path: Path) -> None:
    from pyspark.ml import PipelineModel
    from pyspark.ml.linalg import Vectors, VectorUDT
    from pyspark.sql.types import DoubleType, StructField, StructType

    from xray_spark.models.calibration_stage import TemperatureScaling, TemperatureScalingModel

    proba, y = _overconfident(300, 3, 2.0, seed=5)
    schema = StructType([StructField("probability", VectorUDT()), StructField("label_index", DoubleType()),
                         StructField("prediction", DoubleType())])
    rows = [(Vectors.dense(p.tolist()), float(t), float(p.argmax())) for p, t in zip(proba, y, strict=True)]
    df = spark.createDataFrame([*rows, (None, 1.0, None)], schema)
    estimator = TemperatureScaling()
    estimator.write().overwrite().save(str(tmp_path / "estimator"))
    assert TemperatureScaling.load(str(tmp_path / "estimator")).getLabelCol() == "label_index"
    model = estimator.fit(df)
    assert isinstance(model, TemperatureScalingModel) and model.fit_summary.n == 300
    assert model.getTemperature() == pytest.approx(fit_temperature(proba, y).temperature)

    PipelineModel(stages=[model]).write().overwrite().save(str(tmp_path / "pipe"))
    loaded = PipelineModel.load(str(tmp_path / "pipe"))
    assert loaded.stages[0].getTemperature() == model.getTemperature()
    out = loaded.transform(df).toPandas()
    assert out["probability"].iloc[-1] is None and math.isnan(out["prediction"].iloc[-1])
    got = np.stack([v.toArray() for v in out["probability"].iloc[:-1]])
    np.testing.assert_array_equal(got, temperature_scale(proba, model.getTemperature()))  # bit for bit
    np.testing.assert_array_equal(out["prediction"].iloc[:-1], proba.argmax(axis=1))  # untouched
    with pytest.raises(Exception, match="temperature must be > 0"):
        TemperatureScalingModel(temperature=0.0).transform(df)


@pytest.fixture(scope="module")
def folds_frame(spark):
    """120 rows of 6 features in 5 grouped folds; fold 0 is the test split, and its labels are the
    opposite of what its features say (a calibration that saw them would be pulled towards 'unsure')."""
    from pyspark.ml.linalg import Vectors

    rng = np.random.default_rng(3)
    rows = []
    for i in range(120):
        label, fold = i % 2, i % 5
        x = rng.normal(size=6)
        x[0] += 1.5 if label else -1.5
        shown = 1 - label if fold == 0 else label
        rows.append((f"/img/{i}.png", f"g{i}", "test" if fold == 0 else "train", fold, float(shown),
                     Vectors.dense(x.tolist())))
    frame = spark.createDataFrame(rows, ["path", "group_id", "split", "fold", "label_index", "features"])
    frame = frame.repartition(2).cache()
    yield frame
    frame.unpersist()


def test_calibration_is_fitted_out_of_fold_on_the_training_side_only(folds_frame, monkeypatch) -> None:
    """Every training row is predicted once, by a head fitted without its fold; no test row is fitted on
    or predicted; and the temperature `calibrate` puts in the model is the one those rows give."""
    from pyspark.sql import functions as F

    from xray_spark.config import load_config
    from xray_spark.models import calibration_stage
    from xray_spark.tasks import get_task
    from xray_spark.train import calibrate as calibrate_module
    from xray_spark.train.fit import fit_head
    from xray_spark.train.heads import get_head, head_params

    seen = []

    class Spy(calibration_stage.TemperatureScaling):
        """The estimator `calibrate` uses, recording the rows it is given to fit on."""

        def _fit(self, dataset):
            seen.append(dataset.toPandas())
            return super()._fit(dataset)

    monkeypatch.setattr(calibrate_module, "TemperatureScaling", Spy)
    task, spec = get_task("binary"), get_head("lr")
    params = head_params(spec, {"maxIter": 10}, 7)
    cfg = load_config(local=None)
    fit = fit_head(spec, params, folds_frame, task, 6)
    calibrated = calibrate_module.calibrate(fit, spec, params, folds_frame, task, 6, cfg)

    (oof,) = seen
    train = folds_frame.where(F.col("split") == "train").select("path").toPandas()
    assert set(oof["split"]) == {"train"} and set(oof["fold"]) == {1, 2, 3, 4}
    assert sorted(oof["path"]) == sorted(train["path"])  # every training row once, no test row
    expected = fit_temperature(np.stack([v.toArray() for v in oof["probability"]]),
                               oof["label_index"].to_numpy(dtype=int))
    assert calibrated.calibration.n == len(train) == 96
    assert calibrated.calibration.temperature == pytest.approx(expected.temperature, rel=1e-9)
    assert isinstance(calibrated.model.stages[-1], calibration_stage.TemperatureScalingModel)
    np.testing.assert_array_equal(calibrated.proba_uncalibrated, fit.proba)
    np.testing.assert_array_equal(calibrated.proba, temperature_scale(fit.proba, expected.temperature))
    cfg.section("calibration").method = "none"
    assert calibrate_module.calibrate(fit, spec, params, folds_frame, task, 6, cfg) is fit
