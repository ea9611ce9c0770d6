"""`registerKerasImageUDF`: a user's Keras image model as a Spark SQL function over image columns.

Why: sparkdl let SQL users write `SELECT my_model(image) FROM images` after
`registerKerasImageUDF("my_model", model_or_path, preprocessor)`. This rebuilds it on Spark 4 and Keras 3
with `pyspark.ml.functions.predict_batch_udf`, so rows reach the model in batches and each Python worker
loads the model once (predict_batch_udf's cache), with TensorFlow's threads capped as the featurizer caps
them (worker.configure_tf_threads).

What it does, as sparkdl's did:
- the argument is a Spark image struct (`spark.read.format("image")`'s `image` column: origin, height, width,
  nChannels, mode, data); its pixels go to the model as float RGB 0-255 (BGR order reversed, grey
  replicated, alpha onto black), with no resizing and no preprocessing: the model gets what it was built
  for, so a struct of another size than the model's input fails the task, naming both sizes;
- the result is the model's output for the row, flattened: `array<float>`;
- `kerasModelOrFilePath`: a Keras model, or a saved model file (`.keras`, `.h5`): a local path, or any
  URI the weights resolver reads (dbfs:/, hdfs://, s3a://, runs:/ ...). A model object is saved once on the
  driver; either way executors load the file Spark ships them and never download;
- `preprocessor(path) -> array`: as sparkdl, each image is written losslessly (PNG) to a temp file, the
  function loads it (e.g. with `keras.utils.load_img(path, target_size=...)`) and its uint8 array is what
  the model gets. sparkdl also registered the two halves (`<name>__preprocess`, `<name>__model_predict`);
  here only `<name>` is registered.
Differences, on purpose: the model runs with Keras only (the featurizer's OpenVINO engine converts the
registry's backbones, not arbitrary user graphs); a null image gives a row of NaN.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pyspark.ml.functions import predict_batch_udf
from pyspark.sql import SparkSession
from pyspark.sql.types import ArrayType, FloatType

from xray_spark.data.colour import image_struct_to_rgb
from xray_spark.errors import UserError
from xray_spark.features.weights import _local_copy, _stage, file_digest, weights_cache_dir
from xray_spark.features.worker import configure_tf_threads, tf_threads

log = logging.getLogger(__name__)

MODEL_SUFFIXES = (".keras", ".h5", ".hdf5")


def registerKerasImageUDF(udfName: str, kerasModelOrFilePath: Any,  # noqa: N802,N803 - sparkdl's names
                          preprocessor: Callable[[str], np.ndarray] | None = None, *,
                          batchSize: int = 32) -> Any:  # noqa: N803
    """Register `udfName` as a SQL function: image struct -> the model's flattened output (array<float>).
    Returns the UDF, usable from the DataFrame API too."""
    spark = SparkSession.getActiveSession()
    if spark is None:
        raise UserError("registerKerasImageUDF needs an active SparkSession")
    path = _model_file(kerasModelOrFilePath, spark)
    spark.sparkContext.addFile(path.resolve().as_uri())
    udf = make_image_udf(path.name, preprocessor, batchSize)
    spark.udf.register(udfName, udf)
    log.info("registered Keras image UDF %s (%s)", udfName, path.name)
    return udf


def _model_file(model: Any, spark: SparkSession) -> Path:
    """The model as a local file under a content-derived name (shipped with addFile)."""
    root = weights_cache_dir() / "keras-udf"
    if isinstance(model, (str, Path)):
        spec = str(model)
        if not spec.lower().endswith(MODEL_SUFFIXES):
            raise UserError(f"{spec!r} is not a saved Keras model ({', '.join(MODEL_SUFFIXES)})")
        local = _local_copy(spec, root, spark)
        return _stage(local, root, f"{file_digest(local)[:16]}-{local.name}")
    if not hasattr(model, "save") or not hasattr(model, "predict_on_batch"):
        raise UserError(f"kerasModelOrFilePath must be a Keras model or a file path, "
                        f"got {type(model).__name__}")
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        saved = Path(tmp) / "model.keras"
        model.save(saved)
        digest = hashlib.sha256(saved.read_bytes()).hexdigest()[:16]
        return _stage(saved, root, f"{digest}-{model.name}.keras")


def make_image_udf(ship_name: str, preprocessor: Callable[[str], np.ndarray] | None,
                   batch_size: int) -> Any:
    """predict_batch_udf over the six ImageSchema fields: SQL passes the struct, the UDF receives its
    columns."""

    def make_predict_fn():
        model = _load(ship_name)
        size = tuple(int(d) if d else 0 for d in model.inputs[0].shape[1:3])

        dim = int(np.prod(model.outputs[0].shape[1:]))

        def predict(origin, height, width, n_channels, mode, data) -> np.ndarray:
            images = [_pixels(height[i], width[i], n_channels[i], mode[i], data[i], preprocessor)
                      for i in range(len(data))]
            ok = [i for i, x in enumerate(images) if x is not None]
            for i in ok:
                if size[0] and images[i].shape[:2] != size:
                    raise ValueError(f"image {origin[i]!r} is {images[i].shape[1]}x{images[i].shape[0]}, the "
                                     f"model takes {size[1]}x{size[0]}: resize it, or pass a preprocessor")
            out = np.full((len(data), dim), np.nan, dtype=np.float32)
            if ok:
                batch = np.stack([images[i] for i in ok]).astype(np.float32)
                out[ok] = np.asarray(model.predict_on_batch(batch)).reshape(len(ok), -1)
            return out

        return predict

    return predict_batch_udf(make_predict_fn, return_type=ArrayType(FloatType()), batch_size=batch_size)


def _load(ship_name: str) -> Any:
    from pyspark import SparkFiles  # lazy: executors only

    configure_tf_threads(tf_threads())
    import keras  # lazy: loads TensorFlow, needed only where a model runs

    return keras.models.load_model(SparkFiles.get(ship_name), compile=False)


def _pixels(height: Any, width: Any, n_channels: Any, mode: Any, data: Any,
            preprocessor: Callable[[str], np.ndarray] | None) -> np.ndarray | None:
    """One struct -> (H, W, C) array for the model; None for a null image."""
    if data is None or height is None or (isinstance(height, float) and np.isnan(height)):
        return None
    rgb = image_struct_to_rgb(int(height), int(width), int(n_channels), int(mode), bytes(data))
    if preprocessor is None:
        return rgb
    with tempfile.NamedTemporaryFile(suffix=".png") as tmp:
        Image.fromarray(rgb).save(tmp.name, "PNG")  # lossless, as sparkdl: the preprocessor reads a file
        return np.asarray(preprocessor(tmp.name)).astype(np.uint8)
