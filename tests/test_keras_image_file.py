"""KerasImageFileTransformer and KerasImageFileEstimator: sparkdl's Keras-image-file tests, ported.

From databricks/spark-deep-learning python/tests/transformers/keras_image_test.py and
python/tests/estimators/test_keras_estimators.py, written anew for Keras 3 and this project's engines:
- test_inceptionV3_vs_keras -> test_model_file_matches_keras_on_both_engines: a tiny user model saved by the
  test (`.keras` and `.h5`) instead of InceptionV3 with ImageNet weights (not downloadable here, and minutes
  of CPU), compared with Keras on the loader's own arrays; OpenVINO fp32 within 1e-4;
- test_loadImages -> test_image_output_mode: sparkdl checked its loaded image structs' shape; here the
  `image` outputMode's struct (shape, OpenCV type, float32 bytes) is checked against Keras;
- test_valid_workflow -> test_estimator_fits_on_the_finetune_machinery (e2e): a handful of real X-rays, a
  list of two param maps, one transformer per map, each predicting;
- test_keras_training_utils -> test_optimizer_and_loss_names; plus sparkdl's `_validateParams` rule.
Added where sparkdl had nothing: save/load round trips, the loader refused at save time, the model pin.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

import numpy as np
import pytest

import keras_image_file_loaders as loaders

ATOL = 1e-4


def _tiny_model(path: Path, *, head: bool = True):
    """Two conv layers on 16x16 RGB; with `head` a 3-way softmax, else the (H, W, C) feature map."""
    import keras

    keras.utils.set_random_seed(3)
    inputs = keras.Input((loaders.SIZE, loaders.SIZE, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    x = keras.layers.Conv2D(2, 3, activation="relu")(x)
    if head:
        x = keras.layers.Dense(3, activation="softmax")(keras.layers.Flatten()(x))
    model = keras.Model(inputs, x)
    model.save(str(path))
    return model


@pytest.fixture(scope="module")
def images(ozturk_dir: Path) -> list[str]:
    """Six real images: three COVID-19, three without findings (different sizes, JPEG and PNG)."""
    covid = sorted(glob.glob(str(ozturk_dir / "covid" / "*")))[:3]
    normal = sorted(glob.glob(str(ozturk_dir / "no_findings" / "*")))[:3]
    return covid + normal


@pytest.fixture(scope="module")
def shipped_loaders(spark):
    """The loaders' module on every Python worker, as --py-files would put it."""
    spark.sparkContext.addPyFile(loaders.__file__)
    return loaders


@pytest.fixture(scope="module")
def user_model(tmp_path_factory, weights_cache):
    folder = tmp_path_factory.mktemp("user-model")
    model = _tiny_model(folder / "model.keras")
    model.save(str(folder / "model.h5"))
    return model, folder


def _expected(model, uris: list[str]) -> np.ndarray:
    return np.asarray(model.predict(np.concatenate([loaders.load_rgb16(u) for u in uris]), verbose=0))


def test_model_file_matches_keras_on_both_engines(spark, shipped_loaders, user_model, images, weights_cache):
    from xray_spark import KerasImageFileTransformer

    model, folder = user_model
    missing = str(folder / "no-such-image.png")
    df = spark.createDataFrame([(u,) for u in [*images, missing]], ["uri"])
    expected = dict(zip(images, _expected(model, images), strict=True))
    for engine, name in (("keras", "model.h5"), ("openvino", "model.keras")):
        stage = KerasImageFileTransformer(inputCol="uri", outputCol="preds", modelFile=str(folder / name),
                                          imageLoader=loaders.load_rgb16, engine=engine, errorCol="err")
        rows = {r.uri: r for r in stage.transform(df).collect()}
        assert set(rows) == {*images, missing}
        worst = max(float(np.abs(rows[u].preds.toArray() - expected[u]).max()) for u in images)
        assert worst <= ATOL, f"{engine}: max abs diff {worst:.2e} vs Keras"
        assert rows[missing].preds is None and rows[missing].err.startswith("file_not_found")
    assert list((weights_cache / "openvino" / "user-model").glob("*/model.xml")), "OpenVINO did not run"


def test_image_output_mode(spark, shipped_loaders, tmp_path, images, weights_cache):
    from xray_spark import KerasImageFileTransformer

    model = _tiny_model(tmp_path / "maps.keras", head=False)
    df = spark.createDataFrame([(u,) for u in images[:2]], ["uri"])
    stage = KerasImageFileTransformer(inputCol="uri", outputCol="img", modelFile=str(tmp_path / "maps.keras"),
                                      imageLoader=loaders.load_rgb16, outputMode="image", engine="keras")
    out = {r.uri: r.img for r in stage.transform(df).collect()}
    for uri, want in zip(images[:2], _expected(model, images[:2]), strict=True):
        img = out[uri]
        assert (img.height, img.width, img.nChannels, img.mode) == (12, 12, 2, 5 + 8)  # CV_32FC2
        got = np.frombuffer(img.data, dtype=np.float32).reshape(12, 12, 2)
        np.testing.assert_allclose(got, want, atol=1e-5)
        assert img.origin == uri


def test_pipeline_round_trip_pins_the_model_file(spark, shipped_loaders, tmp_path, images, weights_cache):
    from pyspark.ml import Pipeline, PipelineModel

    from xray_spark import KerasImageFileTransformer
    from xray_spark.errors import UserError

    model = _tiny_model(tmp_path / "m.keras")
    stage = KerasImageFileTransformer(inputCol="uri", outputCol="preds", modelFile=str(tmp_path / "m.keras"),
                                      imageLoader=loaders.load_rgb16, engine="keras", batchSize=4)
    df = spark.createDataFrame([(u,) for u in images[:3]], ["uri"])
    fitted = Pipeline(stages=[stage]).fit(df)
    fitted.write().overwrite().save(str(tmp_path / "pipeline"))
    loaded = PipelineModel.load(str(tmp_path / "pipeline")).stages[0]
    assert loaded.uid == stage.uid and loaded.getImageLoader() is loaders.load_rgb16
    assert stage.getModelSha256() is None and len(loaded.getModelSha256()) == 64  # pinned by the save
    for p in ("inputCol", "outputCol", "modelFile", "engine", "batchSize", "outputMode"):
        assert loaded.getOrDefault(p) == stage.getOrDefault(p)
    got = {r.uri: r.preds.toArray() for r in loaded.transform(df).collect()}
    want = _expected(model, images[:3])
    np.testing.assert_allclose(np.stack([got[u] for u in images[:3]]), want, atol=1e-5)
    _tiny_model(tmp_path / "m.keras", head=False)  # the file replaced by another model
    with pytest.raises(UserError, match="refusing modelFile"):
        PipelineModel.load(str(tmp_path / "pipeline")).transform(df)


def _local_loader(path):
    return loaders.load_rgb16(path)


def _closure():
    def inner(path):
        return loaders.load_rgb16(path)
    return inner


@pytest.mark.parametrize("loader, why", [(lambda p: loaders.load_rgb16(p), "lambda"),
                                         (_closure(), "closure")])
def test_a_loader_that_cannot_be_imported_back_is_refused_at_save(loader, why) -> None:
    from xray_spark import KerasImageFileTransformer
    from xray_spark.errors import UserError

    stage = KerasImageFileTransformer(inputCol="uri", modelFile="/m.keras", imageLoader=loader)
    assert stage.getImageLoader() is loader  # sparkdl's call signature: a callable is accepted
    with pytest.raises(UserError, match=f"cannot save imageLoader .*{why}"):
        stage.write()


def test_loader_names_and_main_functions() -> None:
    from xray_spark.errors import UserError
    from xray_spark.features.image_loaders import import_loader, loader_name

    assert loader_name(loaders.load_rgb16) == "keras_image_file_loaders:load_rgb16"
    assert import_loader("keras_image_file_loaders:load_rgb16") is loaders.load_rgb16
    main_fn = type(_local_loader)(_local_loader.__code__, {"__name__": "__main__"}, "load")
    main_fn.__module__ = "__main__"
    with pytest.raises(UserError, match="__main__"):
        loader_name(main_fn)
    with pytest.raises(UserError, match="cannot be imported"):
        loader_name("no_such_module:load")


def test_sparkdl_param_rules() -> None:
    """sparkdl's Params and defaults; a param map may tune only the Keras and output Params."""
    from xray_spark import KerasImageFileEstimator, KerasImageFileTransformer

    stage = KerasImageFileTransformer(inputCol="uri", outputCol="out", modelFile="m.h5")
    assert stage.getOutputMode() == "vector" and stage.getImageLoader() is None
    with pytest.raises(TypeError, match="outputMode"):
        stage.setOutputMode("sql")
    est = KerasImageFileEstimator(inputCol="uri", outputCol="out", labelCol="y", modelFile="m.h5",
                                  imageLoader=loaders.load_rgb16, kerasFitParams={"epochs": 2})
    assert est._validateParams({est.kerasOptimizer: "sgd", est.kerasFitParams: {"epochs": 3}})
    with pytest.raises(ValueError, match=r"not tuned: \['modelFile'\]"):
        est._validateParams({est.modelFile: "other.h5"})
    with pytest.raises(ValueError, match=r"defined: \['labelCol', 'modelFile', 'imageLoader'\]"):
        KerasImageFileEstimator(inputCol="uri", labelCol=None)._validateParams()
    with pytest.raises(TypeError, match="validation_split"):
        est.setKerasFitParams({"validation_split": 0.1})


def test_optimizer_and_loss_names() -> None:
    from xray_spark.finetune.keras_image_file import valid_loss, valid_optimizer

    assert valid_optimizer("adam") and not valid_optimizer("noSuchOptimizer")
    assert valid_loss("mse") and not valid_loss("noSuchLossFunction")


def test_estimator_round_trip(spark, tmp_path) -> None:
    from xray_spark import KerasImageFileEstimator

    est = KerasImageFileEstimator(inputCol="uri", outputCol="out", labelCol="y", modelFile="/m.h5",
                                  imageLoader=loaders.load_rgb16, kerasLoss="mse", numWorkers=1,
                                  kerasFitParams={"epochs": 2, "batch_size": 4})
    est.write().save(str(tmp_path / "est"))
    back = KerasImageFileEstimator.load(str(tmp_path / "est"))
    assert back.uid == est.uid and back.getImageLoader() is loaders.load_rgb16
    assert back.getKerasFitParams() == {"epochs": 2, "batch_size": 4} and back.getKerasLoss() == "mse"


@pytest.mark.e2e
def test_estimator_fits_on_the_finetune_machinery(spark, shipped_loaders, tmp_path, images, weights_cache):
    """Barrier TensorFlow workers (distributed.py) run keras_image_file_worker.py; one model per param map."""
    from pyspark.ml.linalg import Vectors

    from xray_spark import KerasImageFileEstimator, KerasImageFileTransformer

    _tiny_model(tmp_path / "start.h5")
    start = (tmp_path / "start.h5").read_bytes()
    rows = [(u, Vectors.dense([1.0, 0.0, 0.0] if "/covid/" in u else [0.0, 1.0, 0.0])) for u in images]
    df = spark.createDataFrame(rows, ["uri", "label"])
    est = KerasImageFileEstimator(inputCol="uri", outputCol="preds", labelCol="label",
                                  modelFile=str(tmp_path / "start.h5"), imageLoader=loaders.load_rgb16,
                                  kerasOptimizer="adam", kerasLoss="categorical_crossentropy",
                                  kerasFitParams={"epochs": 2, "batch_size": 6}, numWorkers=1,
                                  workDir=str(tmp_path / "work"))
    models = est.fit(df, [{}, {est.kerasOptimizer: "sgd", est.outputCol: "p2"}])
    assert len(models) == 2 and all(isinstance(m, KerasImageFileTransformer) for m in models)
    assert models[0].getModelFile() != models[1].getModelFile() and models[1].getOutputCol() == "p2"
    assert (tmp_path / "start.h5").read_bytes() == start  # the user's file is never written
    for model in models:
        assert os.path.isfile(model.getModelFile()) and len(model.getModelSha256()) == 64
        out = model.transform(df).collect()
        preds = np.stack([r[model.getOutputCol()].toArray() for r in out])
        assert preds.shape == (6, 3) and np.allclose(preds.sum(axis=1), 1, atol=1e-5)
