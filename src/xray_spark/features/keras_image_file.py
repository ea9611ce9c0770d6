"""`KerasImageFileTransformer`: sparkdl's API for a user's saved Keras model applied to a column of image
URIs, rebuilt on `predict_batch_udf`, Hadoop reads and the featurizer's engines.

sparkdl's Params and call signature are kept: `inputCol` (image URIs), `outputCol`, `modelFile` (a saved
Keras model, `.keras` or `.h5`), `imageLoader` (a function file path -> numpy array that also preprocesses)
and `outputMode` (`vector`: an MLlib DenseVector of the flattened output; `image`: sparkdl's image struct of
an (H, W, C) output, float32). Differences, on purpose:
- files are read through Hadoop by Spark's binaryFile source on the executors (any scheme the cluster reads:
  `file:`, `dbfs:`, `s3a:`, viewfs...): the driver holds the distinct URIs (ids) only, never image bytes;
  the loader gets a local copy's path (image_loaders.py), not the URI;
- the model runs through the featurizer's engines (`engine` auto | keras | openvino, fp32; user_models.py),
  loaded once per Python worker; the model file is resolved once on the driver and shipped;
- `modelSha256` pins the model file: set by `KerasImageFileEstimator.fit` and, when unset, by `save` (the
  saved stage pins the file it was saved with), a replaced file is refused at transform;
- it persists (`ml_io.ParamsWritable`): the loader is saved by its importable name, and a lambda, closure
  or `__main__` function is refused at save time with one line (it still transforms);
- a URI that is missing, unreadable, or that the loader fails on yields a null output (as sparkdl's null
  image), and its reason in `errorCol` when that Param is set; `outputMode='image'` with an output that is
  not (H, W, C) fails the job with one line.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from pyspark import keyword_only
from pyspark.ml import Transformer
from pyspark.ml.functions import array_to_vector, predict_batch_udf
from pyspark.ml.param import TypeConverters
from pyspark.ml.param.shared import HasInputCol, HasOutputCol
from pyspark.ml.util import DefaultParamsReadable
from pyspark.sql import functions as F
from pyspark.sql.types import (
    ArrayType,
    BinaryType,
    FloatType,
    IntegerType,
    StringType,
    StructField,
    StructType,
)

from xray_spark import paths
from xray_spark.errors import UserError
from xray_spark.features import ENGINES
from xray_spark.features.engines import validate_engine
from xray_spark.features.image_loaders import call_loader, loader_name, resolve_loader, to_loader
from xray_spark.features.params import DeclaredParams, ParamSpec
from xray_spark.features.pinning import check_file_pinned
from xray_spark.features.user_models import load_user_engine, resolve_model_file
from xray_spark.features.weights import executor_weights_path, ship_weights, weights_cache_dir
from xray_spark.features.worker import configure_tf_threads, tf_threads
from xray_spark.ml_io import MetadataWriter, ParamsWritable
from xray_spark.spark_io import read_binary_files

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

OUTPUT_MODES = ("vector", "image")
UDF_RETURN = StructType([StructField("values", ArrayType(FloatType(), False), True),
                         StructField("shape", ArrayType(IntegerType(), False), True),
                         StructField("error", StringType(), True)])
_URI, _QUALIFIED, _CONTENT = "__xray_uri", "__xray_qualified", "__xray_content"


def _output_mode(value: Any) -> str:
    mode = TypeConverters.toString(value)
    if mode not in OUTPUT_MODES:
        raise TypeError(f"outputMode must be one of {', '.join(OUTPUT_MODES)}, got {mode!r} (sparkdl's 'sql' "
                        "mode belonged to its TF1 graph transformers)")
    return mode


class HasImageLoader(DeclaredParams):
    """sparkdl's `CanLoadImage`: the loader Param, persisted by its importable name."""

    PARAMS = (ParamSpec("imageLoader", "function: local file path -> numpy array (H, W, C) or (1, H, W, C), "
                        "preprocessing included; persisted by its importable name 'module:qualname'",
                        to_loader),)

    def getImageLoader(self) -> Any:
        """The loader function (imported when the Param holds its name, as after a load); None if unset."""
        value = self.getOrDefault(self.imageLoader) if self.isDefined(self.imageLoader) else None
        return None if value is None else resolve_loader(value)

    def write(self) -> MetadataWriter:
        """Persist a copy holding the loader's importable name (a UserError for a lambda, a closure or a
        `__main__` function), and, for a transformer not pinned yet, the model file's sha256."""
        return MetadataWriter(self._persistable())

    def _persistable(self) -> Any:
        copy = self.copy()
        if self.isDefined(self.imageLoader):
            copy._set(imageLoader=loader_name(self.getOrDefault(self.imageLoader)))
        return copy


class _KerasImageFileParams(HasImageLoader, HasInputCol, HasOutputCol):
    """sparkdl's Params of both Keras-image-file stages, plus the engine and the pin."""

    PARAMS = (
        ParamSpec("modelFile", "path or URI (any Hadoop scheme, or runs:/ models:/) of a saved Keras model, "
                  "'.keras' or '.h5'"),
        ParamSpec("outputMode", "'vector' (MLlib DenseVector of the flattened output) or 'image' (an image "
                  "struct of an (H, W, C) float32 output)", _output_mode, "vector"),
        ParamSpec("modelSha256", "pin: sha256 of the model file; another file is refused. Unset: pinned at "
                  "save time"),
        ParamSpec("engine", f"inference engine: one of {', '.join(ENGINES)} (fp32; 'auto': OpenVINO on CPUs, "
                  "Keras with a GPU or without openvino)", default="auto"),
        ParamSpec("batchSize", "images per model call; capped by "
                  "spark.sql.execution.arrow.maxRecordsPerBatch",
                  TypeConverters.toInt, 32),
        ParamSpec("errorCol", "optional column for why a row's output is null (missing file, loader error); "
                  "unset: none"),
    )


class KerasImageFileTransformer(Transformer, _KerasImageFileParams, DefaultParamsReadable,
                                ParamsWritable):
    """A saved Keras model applied to the images whose URIs are in `inputCol`.

    >>> KerasImageFileTransformer(inputCol="uri", outputCol="preds", modelFile="/models/m.keras",
    ...                           imageLoader=mypkg.loaders.load, outputMode="vector")
    """

    @keyword_only
    def __init__(self, **params: Any) -> None:
        """Any of the Params by keyword (see `explainParams()`)."""
        super().__init__()
        self._udf_cache: tuple[tuple, Any] | None = None
        self.setParams(**self._input_kwargs)

    @keyword_only
    def setParams(self, **params: Any) -> KerasImageFileTransformer:
        return self._set_params(self._input_kwargs)

    def _persistable(self) -> Any:
        copy = super()._persistable()
        if not self.getModelSha256() and self.getModelFile():
            spark = _active_spark()
            copy._set(modelSha256=resolve_model_file(self.getModelFile(), spark).fingerprint[len("file:"):])
        return copy

    def _validate(self, dataset: DataFrame) -> None:
        validate_engine(self.getEngine(), "fp32")
        if self.getBatchSize() < 1:
            raise UserError(f"batchSize must be >= 1, got {self.getBatchSize()}")
        name = self.getInputCol()
        if name not in dataset.columns:
            raise UserError(f"input column {name!r} not found; columns are {dataset.columns}")
        if not isinstance(dataset.schema[name].dataType, StringType):
            raise UserError(f"input column {name!r} must hold image URIs (string), got "
                            f"{dataset.schema[name].dataType.simpleString()}")
        resolve_loader(self.getOrDefault(self.imageLoader) if self.isDefined(self.imageLoader) else None)

    def _get_udf(self, spark: SparkSession) -> Any:
        """The predict_batch_udf, built once per Param state (a new one would reload the model per worker)."""
        loader = self.getOrDefault(self.imageLoader)
        key = (self.getModelFile(), self.getModelSha256(), self.getEngine(), self.getBatchSize(),
               id(loader) if callable(loader) else loader, spark.sparkContext.applicationId)
        if self._udf_cache is not None and self._udf_cache[0] == key:
            return self._udf_cache[1]
        resolved = resolve_model_file(self.getModelFile(), spark)
        if self.getModelSha256():
            check_file_pinned(resolved, self.getModelSha256())
        udf = make_model_udf(ship_weights(spark, resolved), loader, engine=self.getEngine(),
                             batch_size=self.getBatchSize(), fingerprint=resolved.fingerprint,
                             cache_dir=str(weights_cache_dir()))
        self._udf_cache = (key, udf)
        log.info("built the model UDF for %s (%s), engine %s", resolved.spec, resolved.fingerprint[:21],
                 self.getEngine())
        return udf

    def _transform(self, dataset: DataFrame) -> DataFrame:
        self._validate(dataset)
        spark = dataset.sparkSession
        udf = self._get_udf(spark)
        loaded = with_contents(spark, dataset, self.getInputCol())
        tmp = "__xray_model_out"
        out = loaded.withColumn(tmp, udf(F.col(_CONTENT), F.col(self.getInputCol())))
        ok = F.col(f"{tmp}.error") == ""
        if self.getOutputMode() == "vector":
            result = F.when(ok, array_to_vector(F.col(f"{tmp}.values")))
        else:
            result = F.when(ok, _image_struct(F.col(self.getInputCol()), F.col(f"{tmp}.shape"),
                                              F.col(f"{tmp}.values")))
        extra = [F.when(~ok, F.col(f"{tmp}.error")).alias(self.getErrorCol())] if self.getErrorCol() else []
        produced = {self.getOutputCol(), self.getErrorCol()}
        return out.select(*[F.col(c) for c in dataset.columns if c not in produced],
                          result.alias(self.getOutputCol()), *extra)


# ------------------------------------------------------------------------------------- reading the files


def with_contents(spark: SparkSession, dataset: DataFrame, uri_col: str) -> DataFrame:
    """`dataset` plus `__xray_content`: each URI's bytes, read through Hadoop by Spark on the executors
    (null where the file is missing or unreadable). The driver handles the distinct URIs (ids) only."""
    uris = [r[0] for r in dataset.select(uri_col).where(F.col(uri_col).isNotNull()).distinct().collect()]
    qualified = qualify_uris(spark, uris)
    contents = (read_binary_files(spark, sorted(set(qualified.values())))  # missing files: no row
                .select(F.col("path").alias(_QUALIFIED), F.col("content").alias(_CONTENT)))
    mapping = spark.createDataFrame(list(qualified.items()), [_URI, _QUALIFIED])
    return (dataset.join(mapping, dataset[uri_col].eqNullSafe(mapping[_URI]), "left").drop(_URI)
            .join(contents, _QUALIFIED, "left").drop(_QUALIFIED))


def qualify_uris(spark: SparkSession, uris: list[str]) -> dict[str, str]:
    """URI -> its Hadoop-qualified form as binaryFile names it, asking Hadoop once per folder."""
    folders: dict[str, str] = {}
    out = {}
    for uri in uris:
        parent = paths.parent(uri) if "/" in uri else "."
        if parent not in folders:
            folders[parent] = paths.qualify(spark, parent or "/")
        out[uri] = paths.join(folders[parent], paths.file_name(uri))
    return out


def _active_spark() -> SparkSession | None:
    from pyspark.sql import SparkSession  # lazy: only saving a stage with a URI modelFile needs it

    return SparkSession.getActiveSession()


# ------------------------------------------------------------------------------------------ executor side


def make_model_udf(ship_name: str, loader: Any, *, engine: str, batch_size: int, fingerprint: str,
                   cache_dir: str) -> Any:
    """(content, uri) -> struct<values, shape, error>: the loader on each file, the model on each batch of
    images of one shape. `error` is '' where the row has an output (predict_batch_udf's rows of dicts
    cannot start with a null scalar)."""

    def make_predict_fn():
        configure_tf_threads(tf_threads())  # before TensorFlow starts; OpenVINO gets the same cap
        model = load_user_engine(executor_weights_path(ship_name), engine=engine, fingerprint=fingerprint,
                                 cache_dir=cache_dir, threads=tf_threads())
        load = resolve_loader(loader)

        def predict(contents: np.ndarray, uris: np.ndarray) -> list[dict[str, Any]]:
            return predict_rows(model, load, contents, uris)
        return predict

    udf = predict_batch_udf(make_predict_fn, return_type=UDF_RETURN, batch_size=batch_size)
    return udf.asNondeterministic()


def predict_rows(model: Any, load: Any, contents: np.ndarray, uris: np.ndarray) -> list[dict[str, Any]]:
    """One dict per row; the images are grouped by shape so a loader that keeps sizes still batches."""
    rows: list[dict[str, Any]] = [_failed("") for _ in range(len(contents))]
    images: dict[int, np.ndarray] = {}
    for i, (content, uri) in enumerate(zip(contents, uris, strict=True)):
        if content is None:
            rows[i] = _failed(f"file_not_found: {uri} is missing or unreadable")
            continue
        try:
            images[i] = call_loader(load, str(uri), bytes(content))
        except Exception as exc:  # the user's loader on this file: a null row with its reason (sparkdl: null)
            rows[i] = _failed(f"loader_error: {type(exc).__name__}: {str(exc).strip()[:200]}")
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, image in images.items():
        by_shape.setdefault(image.shape, []).append(i)
    for idx in by_shape.values():
        out = model(np.stack([images[i] for i in idx]))
        for k, i in enumerate(idx):
            rows[i] = {"values": out[k].reshape(-1), "shape": np.asarray(out[k].shape, np.int32), "error": ""}
    return rows


def _failed(reason: str) -> dict[str, Any]:
    return {"values": np.zeros(0, np.float32), "shape": np.zeros(0, np.int32), "error": reason or "no_output"}


# --------------------------------------------------------------------------------------- image outputMode


@F.pandas_udf(BinaryType())
def _float_bytes(values: pd.Series) -> pd.Series:
    return values.map(lambda v: None if v is None else np.asarray(v, dtype=np.float32).tobytes())


def _image_struct(origin, shape, values):
    """sparkdl's image struct (Spark's ImageSchema fields) of an (H, W, C) float32 output; OpenCV's type code
    CV_32FC(n) = 5 + 8 (n - 1). An output of another rank has no image form: the job fails with one line."""
    rank3 = F.size(shape) == 3
    return F.when(rank3, F.struct(
        origin.alias("origin"), shape[0].alias("height"), shape[1].alias("width"),
        shape[2].alias("nChannels"), (F.lit(5) + F.lit(8) * (shape[2] - 1)).alias("mode"),
        _float_bytes(values).alias("data"))).otherwise(F.raise_error(F.concat(
            F.lit("outputMode 'image' needs a model output of shape (H, W, C); got shape "),
            F.array_join(shape.cast("array<string>"), ", "), F.lit(": use outputMode 'vector'"))))
