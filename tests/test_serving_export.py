"""Spark-free heads (xray_spark.serving): every head `train` offers, on both tasks, fitted as training fits
it, exported from the full logged pipeline, saved, loaded and compared with Spark's own columns on held-out
rows: the same `prediction` on every row, `probability` (or `rawPrediction` where Spark gives no
probability: LinearSVC, OneVsRest) within 1e-9. Measured on Spark 4.0.5: trees and MLP bit for bit, linear
heads within ~4e-15 (BLAS sums dot products in another order)."""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from xray_spark.models import heads_numpy
from xray_spark.models.frames import task_frame
from xray_spark.models.head_export import UnsupportedStageError, export_head
from xray_spark.models.heads_numpy import HeadFormatError, SparkFreeHead
from xray_spark.models.pipeline import full_pipeline
from xray_spark.tasks import get_task
from xray_spark.train.heads import HEADS, build_head, get_head, head_params

LABELS = ("covid", "no_findings", "pneumonia")
TASKS = ("binary", "multiclass")
N_FEATURES = 32
TOL = 1e-9
# small but real models: trees several levels deep, several trees/iterations, every layer of the MLP
FAST = {"lr": {"maxIter": 8}, "rf": {"numTrees": 5, "maxDepth": 5}, "dt": {"maxDepth": 5},
        "gbt": {"maxIter": 2, "maxDepth": 3}, "svc": {"maxIter": 4}, "mlp": {"maxIter": 15, "hidden": 6}}


@pytest.fixture(scope="module")
def table(spark):
    """~300 rows of 32 features: class signal in the first three, every feature with its own offset and
    scale (the StandardScaler matters), the last one constant (std 0). Every 4th row is held out, plus 15
    far-out rows where probabilities saturate."""
    from pyspark.ml.linalg import Vectors

    rng = np.random.default_rng(11)
    offset, scale = np.linspace(-20, 40, N_FEATURES), np.linspace(0.5, 8, N_FEATURES)
    rows = []
    for i in range(315):
        label = LABELS[i % 3]
        x = rng.normal(size=N_FEATURES)
        x[LABELS.index(label)] += 1.8
        if i >= 300:
            x *= 6
        x = offset + scale * x
        x[-1] = 5.0
        rows.append((f"/img/{i}.png", f"g{i // 2}", label, "test" if i % 4 == 0 or i >= 300 else "train",
                     Vectors.dense(x.tolist())))
    columns = ["path", "group_id", "label", "split", "features"]
    frame = spark.createDataFrame(rows, columns).repartition(2).cache()
    yield frame
    frame.unpersist()


def _fit(head: str, task_name: str, frame, weighted: bool):
    """The full pipeline as `train` logs it, and Spark's own output of its head on the held-out rows."""
    from pyspark.ml import PipelineModel

    task, spec = get_task(task_name), get_head(head)
    estimator, _ = build_head(spec, task.n_classes, N_FEATURES, head_params(spec, FAST[head], 7),
                              weighted=weighted)
    model = estimator.fit(frame.where("split = 'train'"))  # what fit_head does without cross-validation
    pipeline = full_pipeline("ResNet50", "none", model, task)
    # the held-out rows are features already: run everything after the featurizer
    spark_out = PipelineModel(stages=pipeline.stages[1:]).transform(frame.where("split = 'test'")).toPandas()
    return pipeline, spark_out


@pytest.fixture(scope="module")
def fitted(table):
    """(head, task) -> Future of _fit. Fitted side by side (Spark runs the small jobs concurrently), each
    failure surfacing in its own test. Binary without class weights (the default), multiclass with them
    (non-integer leaf counts)."""
    frames = {t: task_frame(table, get_task(t), weighted=t == "multiclass").cache() for t in TASKS}
    pool = ThreadPoolExecutor(max_workers=3)
    futures = {(h, t): pool.submit(_fit, h, t, frames[t], t == "multiclass") for t in TASKS for h in HEADS}
    yield futures
    pool.shutdown(wait=True, cancel_futures=True)
    for frame in frames.values():
        frame.unpersist()


def _matrix(column) -> np.ndarray:
    return np.stack([np.asarray(v.toArray(), dtype=float) for v in column])


def _expected_output(head: str, task_name: str) -> str:
    spec = get_head(head)
    one_vs_rest = spec.binary_only and get_task(task_name).n_classes > 2
    return "probability" if spec.probabilistic and not one_vs_rest else "rawPrediction"


@pytest.mark.parametrize("task_name", TASKS)
@pytest.mark.parametrize("head", list(HEADS))
def test_exported_head_reproduces_spark(fitted: dict[tuple[str, str], Future], head: str, task_name: str,
                                        tmp_path: Path, evidence) -> None:
    pipeline, spark_out = fitted[(head, task_name)].result()
    task = get_task(task_name)
    exported = export_head(pipeline)
    loaded = SparkFreeHead.load(exported.save(tmp_path / "head"))
    x = _matrix(spark_out["features"])
    column = _expected_output(head, task_name)
    assert loaded.output == column and loaded.labels == list(task.labels) and loaded.n_features == N_FEATURES
    assert loaded.info["featurizer"]["modelName"] == "ResNet50"

    labels, values = loaded.predict(x)
    indices, _ = loaded.predict_indices(x)
    assert labels == spark_out["predicted_label"].tolist()
    np.testing.assert_array_equal(indices, spark_out["prediction"].to_numpy(dtype=int))
    expected = _matrix(spark_out[column])
    np.testing.assert_allclose(values, expected, rtol=TOL, atol=TOL)
    np.testing.assert_array_equal(exported.predict(x)[1], values)  # save + load lose nothing
    one_label, one_row = loaded.predict(x[0])  # a single image's vector (BLAS may sum it in another order)
    assert one_label == labels[:1]
    np.testing.assert_allclose(one_row, values[:1], rtol=TOL, atol=TOL)
    # a meaningful comparison: the model tells the classes apart on the held-out rows
    assert len(set(labels)) == task.n_classes and len(labels) >= 50
    diff = float(np.max(np.abs(values - expected)))
    evidence(f"serving export {task_name}/{head}: {column} max |numpy - Spark| = {diff:.3g} "
             f"({np.mean(values == expected):.0%} of entries bit-identical), {len(labels)} rows")


@pytest.mark.parametrize("head", ["dt", "rf", "gbt"])
def test_values_on_a_split_and_nan_go_where_spark_sends_them(spark, fitted, head: str) -> None:
    """Spark goes left when x <= threshold and right on NaN. Fitted thresholds fall between training values,
    so held-out rows never test the boundary: these rows sit exactly on split thresholds, or hold a NaN."""
    from pyspark.ml import PipelineModel
    from pyspark.ml.linalg import Vectors

    pipeline, spark_out = fitted[(head, "multiclass")].result()
    exported = export_head(pipeline)
    trees = exported.classifier.models[0] if head == "gbt" else exported.classifier  # gbt: one-vs-rest
    inner = np.flatnonzero(trees.feature >= 0)[:6]  # breadth first: the root, then the levels below it
    x = _matrix(spark_out["features"])[: 2 * len(inner) + 2]
    for i, node in enumerate(inner):
        x[[2 * i, 2 * i + 1], trees.feature[node]] = trees.threshold[node]
        x[2 * i + 1, trees.feature[inner[0]]] = trees.threshold[inner[0]]  # ... and reach the root's left
    x[-2:, trees.feature[inner[0]]] = [np.nan, np.nextafter(trees.threshold[inner[0]], np.inf)]
    frame = spark.createDataFrame([(Vectors.dense(row.tolist()),) for row in x], ["features"])
    spark_rows = PipelineModel(stages=pipeline.stages[1:]).transform(frame).toPandas()
    labels, values = exported.predict(x)
    assert labels == spark_rows["predicted_label"].tolist()
    np.testing.assert_allclose(values, _matrix(spark_rows[exported.output]), rtol=TOL, atol=TOL)


@pytest.mark.e2e
def test_predict_and_load_need_neither_pyspark_nor_the_package(fitted, tmp_path: Path) -> None:
    """The serving side: heads_numpy.py alone, in a process where importing pyspark (or xray_spark itself)
    fails, loads and predicts exactly as in-process: the head file format needs nothing but numpy."""
    script = """
import importlib.abc, importlib.util, json, sys
import numpy as np

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("pyspark", "py4j", "xray_spark"):
            raise ImportError("blocked: " + name)

sys.meta_path.insert(0, Block())
spec = importlib.util.spec_from_file_location("heads_numpy", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
out = {}
for folder in sys.argv[2:]:
    labels, values = module.SparkFreeHead.load(folder).predict(np.load(folder + "/x.npy"))
    out[folder] = [labels, values.tolist()]
print(json.dumps(out))
"""
    expected = {}
    for head, task_name in [("lr", "multiclass"), ("gbt", "multiclass"), ("rf", "binary"), ("mlp", "binary")]:
        pipeline, spark_out = fitted[(head, task_name)].result()
        folder = export_head(pipeline).save(tmp_path / f"{head}-{task_name}")
        x = _matrix(spark_out["features"])
        np.save(folder / "x.npy", x)
        expected[str(folder)] = (spark_out["predicted_label"].tolist(),
                                 _matrix(spark_out[_expected_output(head, task_name)]))
    proc = subprocess.run([sys.executable, "-c", script, heads_numpy.__file__, *expected],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    for folder, (labels, values) in expected.items():
        assert got[folder][0] == labels
        np.testing.assert_allclose(np.array(got[folder][1]), values, rtol=TOL, atol=TOL)


def test_a_calibrated_head_serves_spark_s_calibrated_probabilities(spark, table, fitted, tmp_path: Path,
                                                                  evidence) -> None:
    """A TemperatureScalingModel after the head (as train/calibrate.py saves it) becomes the exported head's
    temperature: served probabilities equal the Spark pipeline's, bit for bit where the head's are; the
    prediction stays the head's. A temperature after a head without probabilities is refused."""
    from pyspark.ml import PipelineModel

    from xray_spark.models.calibration_stage import TemperatureScalingModel

    for head, task_name in (("lr", "multiclass"), ("rf", "binary")):
        pipeline, spark_out = fitted[(head, task_name)].result()
        held_out = task_frame(table, get_task(task_name), weighted=False).where("split = 'test'")
        featurizer, head_model, decode = pipeline.stages
        stage = TemperatureScalingModel(temperature=1.7)
        calibrated = PipelineModel(stages=[featurizer, PipelineModel(stages=[head_model, stage]), decode])
        spark_cal = PipelineModel(stages=calibrated.stages[1:]).transform(held_out).toPandas()
        loaded = SparkFreeHead.load(export_head(calibrated).save(tmp_path / f"{head}-{task_name}"))
        assert loaded.temperature == 1.7 and "TemperatureScalingModel" in loaded.info["source_stages"]
        labels, values = loaded.predict(_matrix(spark_cal["features"]))
        assert labels == spark_cal["predicted_label"].tolist() == spark_out["predicted_label"].tolist()
        expected = _matrix(spark_cal["probability"])
        np.testing.assert_allclose(values, expected, rtol=TOL, atol=TOL)
        assert not np.allclose(expected, _matrix(spark_out["probability"]))  # the temperature did something
        evidence(f"serving export {task_name}/{head} + temperature 1.7: max |numpy - Spark| = "
                 f"{float(np.max(np.abs(values - expected))):.3g}")
    pipeline, _ = fitted[("svc", "multiclass")].result()  # one-vs-rest: no probability column
    featurizer, head_model, decode = pipeline.stages
    unfit = PipelineModel(stages=[featurizer, head_model, TemperatureScalingModel(temperature=2.0), decode])
    with pytest.raises(UnsupportedStageError, match="gives no probability to calibrate"):
        export_head(unfit)


def test_an_unsupported_stage_is_named(fitted) -> None:
    from pyspark.ml import PipelineModel
    from pyspark.ml.feature import Normalizer

    pipeline, _ = fitted[("lr", "binary")].result()
    featurizer, head, decode = pipeline.stages
    normalizer = Normalizer(inputCol="features", outputCol="normed")
    with pytest.raises(UnsupportedStageError, match=r"stage 1 Normalizer \(Normalizer_"):
        export_head(PipelineModel(stages=[featurizer, normalizer, head, decode]))


def test_a_setting_without_a_spark_free_form_is_refused(fitted) -> None:
    """Per-class `thresholds` change Spark's prediction; exporting without them would silently differ."""
    from pyspark.ml import PipelineModel

    pipeline, _ = fitted[("rf", "multiclass")].result()
    featurizer, head, decode = pipeline.stages
    forest = head.stages[-1].copy()
    forest.setThresholds([0.2, 0.5, 0.3])
    with pytest.raises(UnsupportedStageError, match=r"RandomForestClassificationModel .*thresholds"):
        export_head(PipelineModel(stages=[featurizer, PipelineModel(stages=[forest]), decode]))


def test_the_saved_format_is_checked(tmp_path: Path) -> None:
    """No pickle, a versioned head.json: another version or a missing array is a clear error."""
    head = SparkFreeHead(heads_numpy.Logistic(np.array([[1.0, -2.0]]), np.array([0.5]), multinomial=False),
                         ["no_findings", "covid"], 2, heads_numpy.Scaler(np.zeros(2), np.array([1.0, 0.0])))
    folder = head.save(tmp_path / "head")
    doc = json.loads((folder / "head.json").read_text())
    assert doc["format_version"] == 1 and doc["classifier"]["kind"] == "logistic_regression"
    labels, proba = SparkFreeHead.load(folder).predict(np.array([[1.0, 100.0], [-3.0, 7.0]]))
    assert labels == ["covid", "no_findings"]  # the zero-std feature scales to 0: margins 1.5 and -2.5
    np.testing.assert_allclose(proba[:, 1], 1 / (1 + np.exp([-1.5, 2.5])), rtol=1e-12)
    (folder / "head.json").write_text(json.dumps({**doc, "format_version": 99}))
    with pytest.raises(HeadFormatError, match="version 99"):
        SparkFreeHead.load(folder)
    (folder / "head.json").write_text(json.dumps(doc))
    with np.load(folder / "arrays.npz") as npz:
        arrays = {k: npz[k] for k in npz.files if k != "classifier.intercept"}
    np.savez(folder / "arrays.npz", **arrays)
    with pytest.raises(HeadFormatError, match="classifier.intercept"):
        SparkFreeHead.load(folder)
