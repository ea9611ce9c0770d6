"""The featurizer's model side, without Spark: decode a batch, run the backbone, report what failed.

Why a module of its own: `DeepImageFeaturizer` (featurizer.py) is a Spark ML Transformer and imports pyspark,
while the same per-image work also runs where there is no Spark at all — `xray-spark serve` answers one
upload at a time from this class, so a served prediction and a batch-scored one share every step (decode,
resize, preprocess, engine). Nothing here imports pyspark at module level: inside a Spark task (where the
Python worker has imported pyspark already) `tf_threads` reads the task's cores, and `executor_weights_path`
is imported from weights.py, which imports SparkFiles only when called.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import numpy as np

from xray_spark.data.decode import DecodeError, decode_for_model
from xray_spark.features.backbones import get_backbone
from xray_spark.features.engines import keras_model, load_engine
from xray_spark.features.image_input import ImageInput
from xray_spark.features.weights import executor_weights_path

log = logging.getLogger(__name__)


def tf_threads() -> int:
    """Threads for TensorFlow and OpenVINO in this worker.

    XRAY_SPARK_TF_THREADS if set; else the task's `spark.task.cpus` when above 1 (a task that reserved k
    cores may use k threads); else TF_NUM_INTRAOP_THREADS (session.py sets 1); else 1. One thread per
    concurrent task because Spark already runs one task per core: the cores stay busy without TF's
    intra-op synchronisation, and threads x tasks never exceeds the cores.
    """
    explicit = os.environ.get("XRAY_SPARK_TF_THREADS", "").strip()
    if explicit.isdigit() and int(explicit) > 0:
        return int(explicit)
    task_cpus = _task_cpus()
    if task_cpus is not None and task_cpus > 1:
        return task_cpus
    value = os.environ.get("TF_NUM_INTRAOP_THREADS", "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else 1


def _task_cpus() -> int | None:
    """The running Spark task's cores, or None outside a task (a Spark Python worker has imported pyspark;
    a process that has not is not in a task, and must not pay for importing it)."""
    if "pyspark" not in sys.modules:
        return None
    try:
        from pyspark import TaskContext  # lazy: only inside Spark tasks, where pyspark is loaded already

        ctx = TaskContext.get()
        return int(ctx.cpus()) if ctx is not None else None
    except Exception:  # outside a task, or an old Spark without TaskContext.cpus()
        return None


def configure_tf_threads(n: int) -> None:
    """Cap TensorFlow's pools before its runtime starts (later calls raise; then the first setting stays)."""
    import tensorflow as tf  # lazy: loads TensorFlow, needed only where a model runs

    try:
        tf.config.threading.set_intra_op_parallelism_threads(n)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        log.debug("TensorFlow already initialised; thread caps unchanged")


def load_model(backbone: str, weights_path: str) -> Any:
    """Build the backbone and load a weights file, once per Python worker (workers are reused)."""
    configure_tf_threads(tf_threads())
    return keras_model(backbone, weights_path)


class WorkerFeaturizer:
    """Executor-side: decode a batch to uint8, run the model on the images that decoded, report the rest."""

    def __init__(
        self, backbone: str, ship_name: str, weights_path: str | None = None, *, engine: str = "keras",
        precision: str | None = None, fingerprint: str | None = None, cache_dir: str | None = None,
        calibration: str | None = None, int8_ok: bool = False,
    ) -> None:
        """`calibration`: the local int8 calibration file (engines.load_engine); `int8_ok`: the model passed
        train's int8 gate, so engine 'auto' may pick int8."""
        self.backbone = get_backbone(backbone)
        threads = tf_threads()
        configure_tf_threads(threads)  # before TensorFlow starts; OpenVINO gets the same cap
        self.engine = load_engine(
            self.backbone.name, weights_path or executor_weights_path(ship_name), engine=engine,
            precision=precision, fingerprint=fingerprint, cache_dir=cache_dir, threads=threads,
            calibration=calibration, int8_ok=int8_ok,
        )

    def infer(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N, S, S, 3) -> float32 (N, feature_dim), preprocessing included."""
        return self.engine(images)

    def _run(self, n: int, decode_one) -> dict[str, np.ndarray]:
        """Only a DecodeError (the image's own fault) becomes a row error, which scoring commits as that
        image's permanent `quarantined` row. Anything else (MemoryError, a lost file system, a bug) is the
        executor's fault, not the image's: it propagates, the Spark task fails and Spark retries it. The
        decoders turn every error the bytes can cause into DecodeError (decode.py, dicom.py)."""
        size = self.backbone.input_size
        batch = np.empty((n, size, size, 3), dtype=np.uint8)
        errors = np.full(n, None, dtype=object)
        for i in range(n):
            try:
                batch[i] = decode_one(i)
            except DecodeError as exc:  # bad input never fails the task: report it on the row
                errors[i] = str(exc)
        feats = np.full((n, self.backbone.feature_dim), np.nan, dtype=np.float32)
        ok = np.array([e is None for e in errors], dtype=bool)
        if ok.any():
            feats[ok] = self.infer(batch[ok] if not ok.all() else batch)
        engines = np.where(ok, self.engine.label, None).astype(object)
        return {"features": feats, "error": errors, "engine": engines}

    def featurize_bytes(self, contents: np.ndarray, image_input: ImageInput | None = None,
                        ) -> dict[str, np.ndarray]:
        """`image_input` (colorMode, scaleHint): None is the X-ray path (decode_for_model)."""
        size = self.backbone.input_size

        def one(i: int) -> np.ndarray:
            data = contents[i]
            if data is None:
                raise DecodeError("empty_file", "null content")
            if image_input is None:
                return decode_for_model(bytes(data), size)
            return image_input.from_bytes(bytes(data), size)

        return self._run(len(contents), one)

    def featurize_structs(self, height, width, n_channels, mode, data,
                          image_input: ImageInput | None = None) -> dict[str, np.ndarray]:
        size = self.backbone.input_size
        image_input = image_input or ImageInput()

        def one(i: int) -> np.ndarray:
            if data[i] is None or any(_isnan(f[i]) for f in (height, width, n_channels, mode)):
                raise DecodeError("corrupt_image", "null image struct field")
            return image_input.from_struct(int(height[i]), int(width[i]), int(n_channels[i]), int(mode[i]),
                                           bytes(data[i]), size)

        return self._run(len(data), one)


def _isnan(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))
