"""A user's saved Keras model (`.keras` or `.h5`) as an engine: the file resolved and pinned on the driver,
shipped once, and run on executors by Keras or by OpenVINO converted from it.

Why not engines.py's `load_engine`: that one builds a registered backbone and loads a weights file into it,
and preprocesses with the backbone's own `preprocess_input`. A user's model carries its own graph, and its
input is whatever the user's image loader returns (sparkdl's contract: the loader preprocesses). The rest is
shared with the featurizer: the same engine choice (`resolve_engine`), the same IR cache, lock and atomic
publish (`ir_files.build_once` of `engines.save_ir`), the same thread caps, the same fallback to Keras with
one warning. OpenVINO runs fp32 here (its IR weights stay fp32): a user model's numbers match Keras' within
float rounding (the tests hold it to 1e-4).

Driver side: `resolve_model_file` copies the file through Hadoop (any scheme) or MLflow as weights.py does for
weights files, names it by content, and `ship_weights` adds it to the SparkContext; the pin is the file's
sha256 (`check_file_pinned` in pinning.py).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from xray_spark.errors import UserError
from xray_spark.features.engines import (
    _core,
    _warn_once,
    import_openvino,
    ir_cache_dir,
    resolve_engine,
    save_ir,
)
from xray_spark.features.ir_files import MODEL_XML, build_once, ir_folder
from xray_spark.features.weights import (
    ResolvedWeights,
    _local_copy,
    _stage,
    file_digest,
    keras_version,
    weights_cache_dir,
)

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

USER_MODEL = "user-model"  # the `backbone` of a ResolvedWeights that is a whole user model
MODEL_SUFFIXES = (".keras", ".h5", ".hdf5")
_MODELS: dict[str, Any] = {}
_USER_ENGINES: dict[tuple, UserEngine] = {}


@dataclass
class UserEngine:
    """A loaded user model: float32 batch (what the loader returned, stacked) -> float32 outputs."""

    label: str  # keras:fp32 | openvino:fp32
    run: Callable[[np.ndarray], np.ndarray]

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self.run(np.ascontiguousarray(batch, dtype=np.float32)), dtype=np.float32)


def resolve_model_file(spec: str, spark: SparkSession | None = None,
                       cache_dir: str | os.PathLike | None = None) -> ResolvedWeights:
    """Driver only: the user's model file as a local, content-named copy (a URI is read through Hadoop)."""
    if not str(spec).strip():
        raise UserError("modelFile is not set: give the path or URI of a saved Keras model (.keras or .h5)")
    if not str(spec).lower().endswith(MODEL_SUFFIXES) or str(spec).lower().endswith(".weights.h5"):
        raise UserError(f"modelFile {spec!r} is not a saved Keras model ({', '.join(MODEL_SUFFIXES)}; a "
                        "`.weights.h5` file holds weights only)")
    root = weights_cache_dir(cache_dir)
    local = _local_copy(str(spec), root, spark)
    sha = file_digest(local, "sha256")
    staged = _stage(local, root / "models", f"{sha[:16]}-{local.name}")
    return ResolvedWeights(USER_MODEL, str(spec), "file", staged, staged.name, f"file:{sha}")


def load_keras_model(path: str) -> Any:
    """The saved model, once per process (Python workers are reused); compile=False: inference only."""
    if path not in _MODELS:
        import keras  # lazy: loads TensorFlow, needed only where a model runs

        _MODELS[path] = keras.saving.load_model(path, compile=False)
    return _MODELS[path]


def load_user_engine(path: str, *, engine: str = "keras", fingerprint: str | None = None,
                     cache_dir: str | None = None, threads: int = 1) -> UserEngine:
    """Resolve `engine` on this machine (`auto` | `keras` | `openvino`, always fp32) and load the model,
    memoised per process; an OpenVINO failure falls back to Keras with one warning."""
    choice = resolve_engine(engine, "fp32")
    key = (path, choice.engine, max(1, int(threads)))
    if key in _USER_ENGINES:
        return _USER_ENGINES[key]
    loaded: UserEngine | None = None
    if choice.engine == "openvino":
        try:
            loaded = _openvino(path, fingerprint or f"file:{file_digest(path)}", ir_cache_dir(cache_dir),
                               key[2])
        except Exception as exc:  # a conversion or compile failure must not fail every task: run Keras
            _warn_once(f"openvino-failed-{path}", f"OpenVINO could not run the model {Path(path).name} in "
                       f"pid {os.getpid()} ({type(exc).__name__}: {str(exc).strip()[:300]}): falling back "
                       "to keras fp32")
    if loaded is None:
        loaded = UserEngine("keras:fp32", load_keras_model(path).predict_on_batch)
    log.info("%s engine for the model %s (%s)", loaded.label, Path(path).name, choice.reason)
    _USER_ENGINES[key] = loaded
    return loaded


def _openvino(path: str, fingerprint: str, root: Path, threads: int) -> UserEngine:
    ov, _ = import_openvino()
    key = {"backbone": USER_MODEL, "weights": fingerprint, "openvino": ov.__version__,
           "keras": keras_version(), "ir_weights": "f32"}
    folder = ir_folder(root, key)
    if build_once(folder, lambda tmp: save_ir(load_keras_model(path), tmp), key):
        log.info("converted the model %s to OpenVINO IR at %s", Path(path).name, folder)
    compiled = _core().compile_model(str(folder / MODEL_XML), "CPU", {
        "INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1,
        "ENABLE_CPU_PINNING": False,
    })
    request = compiled.create_infer_request()

    def run(x: np.ndarray) -> np.ndarray:
        return request.infer({0: x}, share_inputs=True, share_outputs=False)[0]

    return UserEngine("openvino:fp32", run)
