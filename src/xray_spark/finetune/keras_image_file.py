"""`KerasImageFileEstimator`: sparkdl's estimator that trains a user's saved Keras model over a DataFrame of
image URIs and labels, on the fine-tune machinery instead of sparkdl's collect-to-the-driver.

sparkdl collected every loaded image to the driver, broadcast the array, and fitted one model per param map in
one Spark task each. Here: one Spark job reads the files through Hadoop on the executors and writes them with
their labels as Parquet shards (one per worker; `features.keras_image_file.with_contents`); the driver holds
URIs (ids) and counts only. Each param map is one barrier stage of `numWorkers` TensorFlow workers
(distributed.py) running keras_image_file_worker.py's loop: the user's loader on each file, the user's
optimizer and loss, gradients all-reduced, a checkpoint per epoch, the chief saving `model.keras`. The result
is a `KerasImageFileTransformer` on that file, pinned by its sha256 (`modelSha256`).

sparkdl's Params are kept (inputCol, outputCol, labelCol, imageLoader, modelFile, kerasOptimizer, kerasLoss,
kerasFitParams, outputMode), with sparkdl's rule that a param map may tune only kerasOptimizer, kerasLoss,
kerasFitParams, outputCol and outputMode. `fit(df, [maps])` returns one transformer per map (Spark ML's
`fitMultiple`), the shards written once for all. Added: `numWorkers` and `workDir` (shards, checkpoints and
the trained models; a folder every executor sees at the same path, a temporary folder when unset). Labels:
one-hot MLlib vectors (sparkdl's contract) or numbers (for `sparse_*` losses). `kerasFitParams` keys:
`epochs`, `batch_size` (global, split across workers), `verbose` (ignored); others are refused.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyspark import cloudpickle, keyword_only
from pyspark.ml import Estimator
from pyspark.ml.functions import vector_to_array
from pyspark.ml.linalg import VectorUDT
from pyspark.ml.param import TypeConverters
from pyspark.ml.param.shared import HasLabelCol
from pyspark.ml.util import DefaultParamsReadable
from pyspark.sql import functions as F
from pyspark.sql.types import NumericType

from xray_spark import paths
from xray_spark.errors import UserError
from xray_spark.features.image_loaders import loader_name
from xray_spark.features.keras_image_file import (
    _CONTENT,
    KerasImageFileTransformer,
    _KerasImageFileParams,
    with_contents,
)
from xray_spark.features.params import ParamSpec
from xray_spark.features.pinning import check_file_pinned
from xray_spark.features.user_models import resolve_model_file
from xray_spark.features.weights import ship_weights
from xray_spark.finetune.data import steps_for
from xray_spark.finetune.distributed import NotShared, run_barrier
from xray_spark.finetune.trainer import MODEL_FILE
from xray_spark.ml_io import ParamsWritable

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

TUNABLE = ("kerasOptimizer", "kerasLoss", "kerasFitParams", "outputCol", "outputMode")  # sparkdl's rule
FIT_KEYS = ("epochs", "batch_size", "verbose")
WORKER_MODULE = "xray_spark.finetune.keras_image_file_worker"


def _fit_params(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TypeError(f"kerasFitParams must be a dict such as {{'epochs': 5, 'batch_size': 64}}, got "
                        f"{value!r}")
    unknown = sorted(set(value) - set(FIT_KEYS))
    if unknown:
        raise TypeError(f"kerasFitParams {unknown} are not supported by the distributed training loop (it "
                        f"takes {', '.join(FIT_KEYS)})")
    return dict(value)


class KerasImageFileEstimator(Estimator, _KerasImageFileParams, HasLabelCol, DefaultParamsReadable,
                              ParamsWritable):
    """Trains the Keras model saved at `modelFile` on (image URI, label) rows; returns a
    KerasImageFileTransformer per param map."""

    PARAMS = (
        ParamSpec("kerasOptimizer", "a Keras optimizer name, e.g. 'adam' (keras.optimizers.get)",
                  default="adam"),
        ParamSpec("kerasLoss", "a Keras loss name, e.g. 'categorical_crossentropy' (keras.losses.get)",
                  default="categorical_crossentropy"),
        ParamSpec("kerasFitParams", f"dict of {', '.join(FIT_KEYS)} (Keras' defaults: 1 epoch, batch 32)",
                  _fit_params, {}),
        ParamSpec("numWorkers", "TensorFlow workers (barrier tasks) per fit", TypeConverters.toInt, 2),
        ParamSpec("workDir", "folder every executor sees at the same path, for shards, checkpoints and the "
                  "trained models; unset: a temporary folder on the driver (local mode, one host)"),
    )

    @keyword_only
    def __init__(self, **params: Any) -> None:
        """Any of the Params by keyword (see `explainParams()`)."""
        super().__init__()
        self.setParams(**self._input_kwargs)

    @keyword_only
    def setParams(self, **params: Any) -> KerasImageFileEstimator:
        return self._set_params(self._input_kwargs)

    def _validateParams(self, paramMap: dict | None = None) -> bool:
        """sparkdl's check on the driver: required Params set, and a param map tunes only TUNABLE."""
        missing = [n for n in ("inputCol", "labelCol", "modelFile", "imageLoader")
                   if not self.isDefined(getattr(self, n)) or self.getOrDefault(getattr(self, n)) is None]
        tuned = [p.name for p in (paramMap or {}) if p.name not in TUNABLE]
        if missing or tuned:
            raise ValueError("Following Params must be" + (f" defined: {missing}" if missing else "")
                             + (f" not tuned: {tuned} (tunable: {', '.join(TUNABLE)})" if tuned else ""))
        return True

    def fitMultiple(self, dataset: DataFrame, paramMaps: Sequence[dict]) -> Iterator[tuple[int, Any]]:
        """(index, KerasImageFileTransformer) per param map; the shards are written once for all maps."""
        for pm in paramMaps:
            self._validateParams(pm)
        spark = dataset.sparkSession
        work = self._work_dir()
        shards = write_file_shards(spark, dataset, self.getInputCol(), self.getLabelCol(),
                                   self.getNumWorkers(), work / "data")
        resolved = resolve_model_file(self.getModelFile(), spark)
        for index, pm in enumerate(paramMaps):
            yield index, self.copy(pm)._train(spark, shards, resolved, work)

    def _fit(self, dataset: DataFrame) -> KerasImageFileTransformer:
        return dict(self.fitMultiple(dataset, [{}]))[0]

    def _work_dir(self) -> Path:
        if self.getWorkDir():
            folder = paths.local_path(self.getWorkDir())
        else:
            folder = Path(tempfile.mkdtemp(prefix="xray-keras-image-file-"))
            log.info("KerasImageFileEstimator workDir unset: training under %s", folder)
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def _train(self, spark: SparkSession, shards: dict[str, Any], resolved: Any,
               work: Path) -> KerasImageFileTransformer:
        """One barrier stage for this estimator's Params; the transformer on the model it saved."""
        _check_names(self.getKerasOptimizer(), self.getKerasLoss())
        if self.getModelSha256():
            check_file_pinned(resolved, self.getModelSha256())
        fit = {"epochs": 1, "batch_size": 32, **self.getKerasFitParams()}
        workers = self.getNumWorkers()
        key = hashlib.sha256(json.dumps([shards["key"], resolved.fingerprint, self.getKerasOptimizer(),
                                         self.getKerasLoss(), fit, workers]).encode()).hexdigest()[:16]
        out = work / f"fit-{key}"
        batch = -(-int(fit["batch_size"]) // workers)
        payload = {
            "child_module": WORKER_MODULE, "data_root": shards["root"], "out_dir": str(out), "run_key": key,
            "optimizer": self.getKerasOptimizer(), "loss": self.getKerasLoss(), "epochs": int(fit["epochs"]),
            "per_worker_batch": batch, "steps": steps_for(max(shards["counts"]), batch), "seed": 7,
            "weights_path": str(resolved.local_path), "weights_ship_name": ship_weights(spark, resolved),
            **_loader_payload(self.getOrDefault(self.imageLoader)),
        }
        log.info("training %s on %d images: %d workers x batch %d, %d epochs", resolved.spec,
                 sum(shards["counts"]), workers, batch, payload["epochs"])
        try:
            results = run_barrier(spark, workers, payload)
        except NotShared as exc:
            raise UserError(f"{exc} (set workDir)") from None
        history = results[0]["history"] or []
        if history:
            log.info("trained: loss %.4f after %d epochs", history[-1]["loss"], history[-1]["epoch"])
        model_file = str(out / MODEL_FILE)
        return KerasImageFileTransformer(
            inputCol=self.getInputCol(), outputCol=self.getOutputCol(), modelFile=model_file,
            imageLoader=self.getOrDefault(self.imageLoader), outputMode=self.getOutputMode(),
            engine=self.getEngine(), batchSize=self.getBatchSize(), errorCol=self.getErrorCol(),
            modelSha256=resolve_model_file(model_file, spark).fingerprint.removeprefix("file:"))


def write_file_shards(spark: SparkSession, dataset: DataFrame, uri_col: str, label_col: str, workers: int,
                      folder: Path) -> dict[str, Any]:
    """(uri, label array<float>, content) as Parquet under `folder`/shard=k, the URIs dealt round-robin in
    sorted order so every shard has images; rows whose file is missing are left out (and counted)."""
    slots = spark.sparkContext.defaultParallelism
    if workers > slots:
        raise UserError(f"numWorkers {workers} needs {workers} concurrent task slots; the cluster has "
                        f"{slots}")
    label = _label_array(dataset, label_col)
    listed = dataset.select(uri_col).where(F.col(uri_col).isNotNull()).distinct().collect()
    uris = sorted(r[0] for r in listed)
    if len(uris) < workers:
        raise UserError(f"{len(uris)} images for numWorkers {workers}: every worker needs at least one")
    key = hashlib.sha256(json.dumps([uris, workers, label_col]).encode()).hexdigest()[:16]
    root = folder / key
    deal = spark.createDataFrame([(u, i % workers) for i, u in enumerate(uris)], ["__uri", "shard"])
    rows = (with_contents(spark, dataset.select(uri_col, label.alias("label")), uri_col)
            .where(F.col(_CONTENT).isNotNull())
            .join(deal, F.col(uri_col) == F.col("__uri"))
            .select(F.col(uri_col).alias("uri"), "label", F.col(_CONTENT).alias("content"), "shard"))
    rows.repartition("shard").write.mode("overwrite").partitionBy("shard").parquet(root.resolve().as_uri())
    counts = [0] * workers
    for r in spark.read.parquet(root.resolve().as_uri()).groupBy("shard").count().collect():
        counts[int(r["shard"])] = int(r["count"])
    if min(counts) == 0:
        raise UserError(f"a worker got no readable image ({counts} per shard): check the URIs in {uri_col!r}")
    log.info("wrote %d training images in %d shards (%d rows with a missing file left out)", sum(counts),
             workers, len(uris) - sum(counts))
    return {"root": str(root), "counts": counts, "key": key}


def _label_array(dataset: DataFrame, label_col: str) -> Any:
    if label_col not in dataset.columns:
        raise UserError(f"label column {label_col!r} not found; columns are {dataset.columns}")
    dtype = dataset.schema[label_col].dataType
    if isinstance(dtype, VectorUDT):
        return vector_to_array(F.col(label_col), "float32")
    if isinstance(dtype, NumericType):
        return F.array(F.col(label_col).cast("float"))
    raise UserError(f"label column {label_col!r} must be a one-hot vector or a number, got "
                    f"{dtype.simpleString()}")


def _loader_payload(loader: Any) -> dict[str, str]:
    """The loader for the TensorFlow workers: its importable name, else the function pickled by value."""
    try:
        return {"loader_name": loader_name(loader)}
    except UserError:
        return {"loader_pickle": base64.b64encode(cloudpickle.dumps(loader)).decode()}


def _check_names(optimizer: str, loss: str) -> None:
    """Unknown optimizer or loss names fail on the driver with one line, before any worker starts."""
    if not valid_optimizer(optimizer):
        raise UserError(f"kerasOptimizer {optimizer!r} is not a Keras optimizer (keras.optimizers.get)")
    if not valid_loss(loss):
        raise UserError(f"kerasLoss {loss!r} is not a Keras loss (keras.losses.get)")


def valid_optimizer(name: str) -> bool:
    import keras  # lazy: loads TensorFlow, needed only to check the name

    try:
        keras.optimizers.get(name)
    except (ValueError, TypeError):
        return False
    return True


def valid_loss(name: str) -> bool:
    import keras  # lazy: loads TensorFlow, needed only to check the name

    try:
        return keras.losses.get(name) is not None
    except (ValueError, TypeError):
        return False
