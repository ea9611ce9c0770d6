"""`DeepImageFeaturizer`: sparkdl's Transformer API, rebuilt on Spark's `predict_batch_udf` and Keras 3.

Why rebuild: sparkdl (Databricks' Deep Learning Pipelines) stopped at Spark 2.4 / TF 1.x. Users' pipelines
call `DeepImageFeaturizer(inputCol=..., outputCol=..., modelName=...)`; this class keeps those Param names
so such code ports by changing one import, and it persists with `ml_io.ParamsWritable` so a fitted
`PipelineModel` (and `mlflow.spark.log_model`) carries it.

Differences from sparkdl, on purpose:
- output is the global-average-pooled vector (`include_top=False, pooling="avg"`): 2048 for ResNet50,
  InceptionV3 and Xception, 512 for VGG16/VGG19, 1024 for DenseNet121. sparkdl's InceptionV3 returned
  the unpooled 8x8x2048 map flattened to 131072 values;
- input may be raw file bytes (binaryFile `content`) or a Spark image struct (ImageSchema), detected from
  the column type; both go through the same normalisation (one luminance channel, replicated to RGB);
- an image that cannot be decoded yields a null vector and its reason in `errorCol`, never a failed task;
- `colorMode` 'grey' (default, the X-ray path) or 'RGB' (sparkdl's: the image's own RGB pixels); `scaleHint`
  takes every value of sparkdl's and resizes as Java's AWT hint did, in RGB mode; in grey mode every source
  is resized by the one path training, the feature cache and serving use (features/image_input.py);
- an unknown `modelName`, `scaleHint` or `colorMode` is a ValueError when the stage is built, as in sparkdl;
- `weights` chooses ImageNet, a seeded random init, or a file (see weights.py) — resolved once on the
  driver and shipped to executors; `weightsSha256` pins them (see pinning.py): `train` sets it, and a
  transform whose weights resolve to other tensors is refused instead of silently predicting otherwise;
- `engine` ('auto' | 'keras' | 'openvino') and `precision` ('fp32' | 'bf16' | 'int8') choose how the Keras
  model runs (see engines.py): 'auto' is decided on each executor for its own hardware (OpenVINO int8 for a
  model whose int8 features passed train's gate on CPUs with native int8, else OpenVINO bf16 on CPUs with
  native bf16, else OpenVINO fp32; Keras where TensorFlow sees a GPU or openvino is missing). int8 needs the
  calibration Params (int8_params.py; the featurizer's only: DeepImagePredictor has no gate and no int8).
  `engineCol` (unset by default) records per row what really made the features, e.g. `openvino:fp32`.

Performance notes (measured, see benchmarks/featurize.py): the UDF is built once per instance and param
state (a new predict_batch_udf has a new cache key, so rebuilding it per transform() would reload the
model in every Python worker); the model is also cached per Python worker by (backbone, weights file,
engine, precision) so reloaded PipelineModels reuse it; TensorFlow's and OpenVINO's threads are capped per
worker (see `worker.tf_threads`) so concurrent tasks don't oversubscribe the cores. The effective batch is
min(batchSize, spark.sql.execution.arrow.maxRecordsPerBatch, rows in the partition): give the input at
least one partition per core and at least a few batches per partition (e.g. `df.repartition(k * cores)`
with k small), or the cores idle at the end and the model runs on slivers.
Only file bytes cross into Python (decoding happens there) and float32 features come back; no decoded
tensor crosses the JVM/Python boundary at all.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np
from pyspark import keyword_only
from pyspark.accumulators import _accumulatorRegistry
from pyspark.ml import Transformer
from pyspark.ml.functions import array_to_vector, predict_batch_udf
from pyspark.ml.param import TypeConverters
from pyspark.ml.param.shared import HasInputCol, HasOutputCol
from pyspark.ml.util import DefaultParamsReadable
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, BinaryType, FloatType, StringType, StructField, StructType

from xray_spark.errors import UserError
from xray_spark.features import ENGINES
from xray_spark.features.backbones import Backbone, backbone_names, get_backbone
from xray_spark.features.calibration import executor_file
from xray_spark.features.engines import (
    PRECISIONS,
    resolve_engine,
    validate_engine,
)
from xray_spark.features.image_input import (
    COLOR_MODES,
    SCALE_HINTS,
    ImageInput,
    to_color_mode,
    to_model_name,
    to_scale_hint,
)
from xray_spark.features.int8_params import Int8Plan, _Int8Params
from xray_spark.features.params import DeclaredParams, ParamSpec
from xray_spark.features.pinning import check_pinned
from xray_spark.features.weights import (
    resolve_weights,
    ship_weights,
    weights_cache_dir,
)
from xray_spark.features.worker import WorkerFeaturizer
from xray_spark.ml_io import ParamsWritable

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

log = logging.getLogger(__name__)

IMAGE_STRUCT_FIELDS = ("height", "width", "nChannels", "mode", "data")
UDF_RETURN = StructType([
    StructField("features", ArrayType(FloatType(), False), True), StructField("error", StringType(), True),
    StructField("engine", StringType(), True),
])


class _NamedImageParams(DeclaredParams, HasInputCol, HasOutputCol):
    """Params of sparkdl's named-image stages (featurizer, predictor), declared once (features/params.py)."""

    PARAMS = (
        ParamSpec("modelName", f"backbone: one of {', '.join(backbone_names())} (case-insensitive)",
                  to_model_name, "ResNet50"),
        ParamSpec("scaleHint", f"resize filter, sparkdl's names for Java AWT's hints: one of "
                  f"{', '.join(SCALE_HINTS)} (SCALE_AREA_AVERAGING, SCALE_SMOOTH: area average; the others: "
                  "pixel replication); applies with colorMode 'RGB' (grey: the one X-ray resize path)",
                  to_scale_hint, "SCALE_AREA_AVERAGING"),
        ParamSpec("colorMode", f"one of {', '.join(COLOR_MODES)}: 'grey' normalises to one luminance channel "
                  "replicated (the X-ray path); 'RGB' keeps the image's own RGB pixels", to_color_mode),
        ParamSpec("weights", "'imagenet', 'none' / 'none:seed=N' (seeded random init), or a path/URI to a "
                  "Keras weights file", default="imagenet"),
        ParamSpec("weightsSha256", "pin: sha256 of the weight tensors the model was trained with "
                  "(features/pinning.py); weights that resolve to other tensors are refused. Unset: "
                  "not pinned"),
        ParamSpec("batchSize", "images per model call; capped by "
                  "spark.sql.execution.arrow.maxRecordsPerBatch", TypeConverters.toInt, 32),
        ParamSpec("errorCol", "column for the decode error ('code: detail'); null when the image was "
                  "featurized", default="featurize_error"),
        ParamSpec("engine", f"inference engine: one of {', '.join(ENGINES)}; 'auto' is decided on each "
                  "executor (OpenVINO int8 for a featurizer whose int8 passed train's gate, on CPUs with "
                  "native int8; else OpenVINO bf16 with native bf16, else OpenVINO fp32; Keras with a GPU or "
                  "without openvino)", default="auto"),
        ParamSpec("precision", f"OpenVINO precision: one of {', '.join(PRECISIONS)} (int8: "
                  "DeepImageFeaturizer only, with train's int8 calibration; DeepImagePredictor refuses it); "
                  "with engine 'auto' it applies only when set explicitly (otherwise auto picks)",
                  default="fp32"),
        ParamSpec("engineCol", "optional column for the engine that made each row's features (e.g. "
                  "'openvino:fp32'); unset: none"),
    )

    def _requested_precision(self) -> str | None:
        """The precision the engine resolver gets: None lets 'auto' pick (precision left at its default)."""
        if self.getEngine() == "auto" and not self.isSet(self.precision):
            return None
        return self.getPrecision()


class _NamedImageStage(Transformer, _NamedImageParams):
    """What the featurizer and the predictor share: validation, the predict_batch_udf built once per param
    state, and running it over bytes or image structs. Subclasses say which model runs (`_backbone`) and
    how its output becomes the output column (`_output`)."""

    def __init__(self) -> None:
        super().__init__()
        self._udf_cache: tuple[tuple, Any] | None = None
        self._progress: Any = None  # optional Spark accumulator (not a Param: never persisted)

    def _backbone(self) -> Backbone:
        return get_backbone(self.getModelName())

    def _output(self, result: Any) -> Any:
        """The UDF's `features` field (a float array column) -> the output column."""
        return _array_to_vector(result)

    # int8 hooks: only the featurizer has int8 (its _Int8Params override these); any other stage refuses it
    def int8Approved(self) -> bool:
        return False

    def _int8_key(self) -> tuple[str | None, ...]:
        return ()

    def _check_int8(self, requested: str | None) -> None:
        if requested == "int8":
            raise UserError(f"precision 'int8' is for DeepImageFeaturizer models whose int8 features passed "
                            f"train's gate; {type(self).__name__} runs fp32 or bf16")

    def _int8_plan(self, spark: Any, requested: str | None, engine: str) -> Int8Plan:
        return Int8Plan()

    def _image_input(self) -> ImageInput | None:
        """None in grey mode: the worker's X-ray path (worker.decode_for_model), as serving runs it."""
        if self.getColorMode() == "grey":
            return None
        return ImageInput(self.getColorMode(), self.getScaleHint())

    def resolvedEngine(self) -> str:
        """The engine this machine (the driver) would run, e.g. 'openvino:fp32'.

        Executors decide for their own hardware (same rules); `engineCol` records what each row really used,
        including the precision OpenVINO actually ran (fp32 where bf16 is not native).
        """
        self._validate()
        choice = resolve_engine(self.getEngine(), self._requested_precision(), int8_ok=self.int8Approved())
        log.info("engine %s -> %s (%s)", self.getEngine(), choice.label, choice.reason)
        return choice.label

    # ------------------------------------------------------------------------------------------ transform

    def _validate(self) -> None:
        get_backbone(self.getModelName())
        if self.getBatchSize() < 1:
            raise UserError(f"batchSize must be >= 1, got {self.getBatchSize()}")
        validate_engine(self.getEngine(), self.getPrecision())
        self._check_int8(self._requested_precision())

    def _input_kind(self, dataset: DataFrame) -> str:
        name = self.getInputCol()
        if name not in dataset.columns:
            raise UserError(f"input column {name!r} not found; columns are {dataset.columns}")
        dtype = dataset.schema[name].dataType
        if isinstance(dtype, BinaryType):
            return "bytes"
        if isinstance(dtype, StructType) and set(IMAGE_STRUCT_FIELDS) <= set(dtype.names):
            return "struct"
        raise UserError(
            f"input column {name!r} must be binary (file bytes) or a Spark image struct "
            f"({', '.join(IMAGE_STRUCT_FIELDS)}), got {dtype.simpleString()}"
        )

    def _get_udf(self, spark, kind: str) -> Any:
        """Build the predict_batch_udf once per param state and SparkContext; reuse it afterwards."""
        key = (
            self._backbone().name, self.getWeights(), self.getBatchSize(), kind, self._image_input(),
            spark.sparkContext.applicationId, str(weights_cache_dir()), id(self._progress),
            self.getEngine(), self._requested_precision(), self.getWeightsSha256(), *self._int8_key(),
        )
        if self._udf_cache is not None and self._udf_cache[0] == key:
            return self._udf_cache[1]
        resolved = resolve_weights(self._backbone().name, self.getWeights(), spark=spark)
        pinned = self.getWeightsSha256()
        if pinned:
            check_pinned(resolved, pinned)
        ship_name = ship_weights(spark, resolved)
        int8 = self._int8_plan(spark, self._requested_precision(), self.getEngine())
        udf = make_featurize_udf(
            resolved.backbone, ship_name, kind, self.getBatchSize(),
            progress_aid=None if self._progress is None else self._progress.aid,
            progress=self._progress, engine=self.getEngine(), precision=self._requested_precision(),
            fingerprint=resolved.fingerprint, cache_dir=str(weights_cache_dir()),
            image_input=self._image_input(), calibration=int8.ship_name, int8_ok=int8.int8_ok,
        )
        self._udf_cache = (key, udf)
        log.info("built featurize UDF: %s, weights %s (%s), engine %s", resolved.backbone, resolved.spec,
                 resolved.fingerprint, self.getEngine())
        return udf

    def _transform(self, dataset: DataFrame) -> DataFrame:
        self._validate()
        kind = self._input_kind(dataset)
        spark = dataset.sparkSession
        arrow_cap = int(spark.conf.get("spark.sql.execution.arrow.maxRecordsPerBatch", "10000"))
        if arrow_cap < self.getBatchSize():
            log.info("batchSize %d is capped by arrow.maxRecordsPerBatch=%d", self.getBatchSize(), arrow_cap)
        udf = self._get_udf(spark, kind)
        src = F.col(self.getInputCol())
        args = [src] if kind == "bytes" else [src.getField(f) for f in IMAGE_STRUCT_FIELDS]
        tmp = "__xray_featurize"
        out = dataset.withColumn(tmp, udf(*args))
        engine_col = self.getEngineCol()
        produced = (self.getOutputCol(), self.getErrorCol(), engine_col)
        return out.select(
            *[F.col(c) for c in dataset.columns if c not in produced],
            F.when(F.col(f"{tmp}.error").isNull(), self._output(F.col(f"{tmp}.features")))
            .alias(self.getOutputCol()),
            F.col(f"{tmp}.error").alias(self.getErrorCol()),
            *([F.col(f"{tmp}.engine").alias(engine_col)] if engine_col else []),
        )


class DeepImageFeaturizer(_Int8Params, _NamedImageStage, DefaultParamsReadable, ParamsWritable):
    """Image bytes or image structs -> pooled ImageNet-backbone features (MLlib DenseVector).

    >>> DeepImageFeaturizer(inputCol="content", outputCol="features", modelName="InceptionV3", weights="none")
    """

    DEFAULTS = {"inputCol": "content", "outputCol": "features", "colorMode": "grey"}

    @keyword_only
    def __init__(self, **params: Any) -> None:
        """Any of the Params by keyword (see `explainParams()`); the others keep their defaults."""
        super().__init__()
        self.setParams(**self._input_kwargs)

    @keyword_only
    def setParams(self, **params: Any) -> DeepImageFeaturizer:
        return self._set_params(self._input_kwargs)


def _array_to_vector(col):
    return array_to_vector(col)


# ------------------------------------------------------------------------------------------- executor side

def make_featurize_udf(
    backbone: str, ship_name: str, kind: str, batch_size: int, *,
    progress_aid: int | None = None, progress: Any = None, engine: str = "keras",
    precision: str | None = None, fingerprint: str | None = None, cache_dir: str | None = None,
    image_input: ImageInput | None = None, calibration: str | None = None, int8_ok: bool = False,
) -> Any:
    """The Spark UDF: (bytes | image-struct fields) -> struct<features: array<float>, error: string,
    engine: string>.

    `engine`/`precision` are resolved in each Python worker (its machine's CPU, GPU and openvino);
    `fingerprint` and `cache_dir` (the driver's weights cache dir) place the OpenVINO IR cache.
    `image_input` (colorMode, scaleHint) turns each image into the model's input; None: the X-ray path.
    `calibration` names the shipped int8 calibration file (None: no int8); `int8_ok` lets 'auto' pick int8.

    Marked non-deterministic so the optimizer never duplicates it when both struct fields are selected.
    `progress` (an accumulator) is captured only so each task deserializes its own copy; see _add_progress.
    """

    def make_predict_fn():
        _ = progress  # keep the accumulator in the pickled closure (registered per task on deserialize)
        featurizer = WorkerFeaturizer(backbone, ship_name, engine=engine, precision=precision,
                                      fingerprint=fingerprint, cache_dir=cache_dir,
                                      calibration=executor_file(calibration) if calibration else None,
                                      int8_ok=int8_ok)
        if kind == "bytes":
            def predict(contents: np.ndarray) -> dict[str, np.ndarray]:
                out = featurizer.featurize_bytes(contents, image_input)
                _add_progress(progress_aid, len(contents))
                return out
        else:
            def predict(height, width, n_channels, mode, data) -> dict[str, np.ndarray]:
                out = featurizer.featurize_structs(height, width, n_channels, mode, data, image_input)
                _add_progress(progress_aid, len(data))
                return out
        return predict

    udf = predict_batch_udf(make_predict_fn, return_type=UDF_RETURN, batch_size=batch_size)
    return udf.asNondeterministic()


def _add_progress(aid: int | None, n: int) -> None:
    """Count images on the current task's accumulator instance.

    predict_batch_udf caches the predict function per worker across tasks, while PySpark re-creates
    accumulators per task (its registry is cleared when a task starts): look up the live instance by id.
    """
    if aid is None:
        return

    acc = _accumulatorRegistry.get(aid)
    if acc is not None:
        acc.add(n)
