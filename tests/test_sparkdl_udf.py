"""sparkdl's SQL UDF tests (python/tests/udf/keras_sql_udf_test.py, databricks/spark-deep-learning) ported to
registerKerasImageUDF (#28), written anew. A small Keras model the test builds stands in for sparkdl's
ImageNet InceptionV3 (no ImageNet download here; the path is the same for any model). sparkdl's
map_rows/map_blocks tests register raw TensorFlow graphs (IsolatedSession), which Keras 3 has no
counterpart for: not ported."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.usefixtures("weights_cache")
SIDE = 32


@pytest.fixture(scope="module")
def small_model(tmp_path_factory: pytest.TempPathFactory):
    import keras

    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((SIDE, SIDE, 3)), keras.layers.Conv2D(4, 3, activation="relu"),
                              keras.layers.Flatten(), keras.layers.Dense(10, activation="softmax")],
                             name="small")
    path = tmp_path_factory.mktemp("model") / "small.keras"
    model.save(path)
    return model, path


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("udf-images")
    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate([(SIDE, SIDE), (48, 40), (SIDE, SIDE)]):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(out / f"u{i}.png")
    return out


def test_keras_udf_in_sql_matches_keras(spark, small_model, folder) -> None:
    """simple_keras_udf + composite_udf: a model object and its saved file, registered, are SQL functions
    (listed in the catalog); with a preprocessor every image works; without one, images at the model's size
    give Keras' output on their raw RGB pixels."""
    from xray_spark import registerKerasImageUDF

    def load_32(path: str) -> np.ndarray:  # sparkdl's keras_load_img (local: pickled by value to workers)
        import keras

        return np.asarray(keras.utils.load_img(path, target_size=(32, 32)), dtype=np.uint8)

    model, path = small_model
    registerKerasImageUDF("small_pre", model, load_32)
    registerKerasImageUDF("small_file", str(path))
    assert {"small_pre", "small_file"} <= {f.name for f in spark.catalog.listFunctions()}
    spark.read.format("image").load(str(folder)).coalesce(1).createOrReplaceTempView("udf_images")
    rows = spark.sql("SELECT image.origin AS origin, small_pre(image) AS pre FROM udf_images").collect()
    by_name = {Path(r.origin).name: r.pre for r in rows}
    names = sorted(by_name)
    pre = model.predict(np.stack([load_32(str(folder / n)) for n in names]).astype(np.float32), verbose=0)
    np.testing.assert_allclose(np.stack([by_name[n] for n in names]), pre, rtol=1e-5, atol=1e-6)
    raw = spark.sql("SELECT image.origin AS origin, small_file(image) AS raw FROM udf_images "
                    "WHERE image.width = 32").collect()  # at the model's size: no preprocessor needed
    assert len(raw) == 2
    for r in raw:
        np.testing.assert_allclose(r.raw, pre[names.index(Path(r.origin).name)], rtol=1e-5, atol=1e-6)


def test_a_bad_model_argument_is_a_user_error(spark) -> None:
    from xray_spark import registerKerasImageUDF
    from xray_spark.errors import UserError

    with pytest.raises(UserError, match="saved Keras model"):
        registerKerasImageUDF("nope", "/tmp/model.txt")
    with pytest.raises(UserError, match="Keras model or a file path"):
        registerKerasImageUDF("nope", 42)
