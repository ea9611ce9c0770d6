"""Inference engines for the featurizer: one backbone + weights file -> a callable `images -> features`.

Why: the Keras/TensorFlow fp32 model is the source of truth (weights, layer graph, ImageNet files), but
OpenVINO runs the same graph 1.3-1.8x faster on this project's AVX2 CPU (benchmarks/featurize.py), and bf16
can be faster again on CPUs with native bf16 (AMX / AVX512-BF16; not measured here). So the Keras model is
converted once per executor machine and cached there as OpenVINO IR; the driver never ships a second copy of
the weights.

Engines:
- `keras` — `model.predict_on_batch`; the caller caps TensorFlow's threads first (the featurizer
  does, with `worker.tf_threads`), and OpenVINO gets the same cap (`INFERENCE_NUM_THREADS`).
- `openvino` — `openvino.convert_model(keras_model)`, saved as IR (`.xml`/`.bin`, weights kept fp32) under
  `<weights cache>/openvino/<Backbone>/<key>/`, key = sha256 of (weights fingerprint, backbone, openvino
  version, keras version, IR weight type). The IR does not depend on the precision: `fp32` / `bf16` is
  `INFERENCE_PRECISION_HINT` at compile time, so one conversion serves both. Writes go to a temp folder
  renamed into place, so two Python workers converting at once both succeed and neither reads half an IR;
  a lock file beside it makes the other workers of a machine wait for the first conversion instead of
  repeating it (where the filesystem has no locks, they convert too and the first rename wins).
- `openvino` at `int8` — the fp32 IR quantised by NNCF on a calibration sample (quantize.py), cached beside
  it; needs the calibration file (`calibration`, shipped by the driver like the weights).
- `auto` — see `choose_engine`: a pure function of (CPU flags, openvino importable, GPU present, whether the
  model's int8 features passed train's gate).

Both engines get exactly the same input: the featurizer's uint8 batch through the backbone's own Keras
`preprocess_input` (`Backbone.preprocess`), here, once, for either engine.

If `import openvino` fails (or converting/compiling fails), an `openvino` engine falls back to Keras with one
warning per Python process; the engine label (`keras:fp32`, `openvino:bf16`, ...) returned with every batch
says what really ran, with the precision OpenVINO actually chose (it runs fp32 when the CPU lacks bf16).

Cache dir on an executor: `$XRAY_SPARK_CACHE` there if set, else the driver's weights cache dir if it can be
written here (always true in local mode), else `~/.cache/xray-spark/weights`, else the temp dir.
"""

from __future__ import annotations

import importlib
import logging
import os
import tempfile
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from xray_spark.errors import UserError
from xray_spark.features import ENGINES
from xray_spark.features.backbones import Backbone, get_backbone
from xray_spark.features.ir_files import MODEL_XML, build_once, ir_folder
from xray_spark.features.quantize import has_native_int8, int8_ir, int8_support
from xray_spark.features.weights import file_digest, weights_cache_dir

if TYPE_CHECKING:
    import keras  # lazy: loads TensorFlow, needed only where a model runs

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "int8")
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
IR_WEIGHTS = "f32"  # IR weights stay fp32 (save_model would compress them to fp16 by default)
_OV_HINT = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}  # int8: the ops left unquantised run fp32
_OV_TYPE_TO_PRECISION = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}

_KERAS_MODELS: dict[tuple[str, str], Any] = {}
_ENGINES: dict[tuple, Engine] = {}
_WARNED: set[str] = set()
_CORE: list[Any] = []


# -------------------------------------------------------------------------------------------- choosing


@dataclass(frozen=True)
class EngineChoice:
    """What to run: engine `keras` | `openvino`, precision `fp32` | `bf16` | `int8`, and why (for logs)."""

    engine: str
    precision: str
    reason: str
    fallback: bool = False  # True when `openvino` was asked for and Keras must stand in

    @property
    def label(self) -> str:
        return f"{self.engine}:{self.precision}"


def validate_engine(engine: str, precision: str) -> None:
    """Bad values are a user error with one line (checked on the driver before any job runs)."""
    if engine not in ENGINES:
        raise UserError(f"engine must be one of {', '.join(ENGINES)}; got {engine!r}")
    if precision not in PRECISIONS:
        raise UserError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if engine == "keras" and precision != "fp32":
        raise UserError(f"precision {precision!r} needs engine 'openvino' or 'auto' "
                        "(the Keras engine runs fp32)")


def has_native_bf16(cpu_flags: Iterable[str]) -> bool:
    return any(flag in set(cpu_flags) for flag in NATIVE_BF16_FLAGS)


def choose_engine(
    engine: str, precision: str | None, *, cpu_flags: Iterable[str], openvino_importable: bool,
    gpu_present: bool, int8_ok: bool = False,
) -> EngineChoice:
    """The engine decision, pure so every row of the table is unit-tested.

    `precision` None means "not chosen by the user": `auto` then takes int8 only for a model whose int8
    features passed train's gate (`int8_ok`) on a CPU with native int8, else bf16 only where the CPU has it
    natively.
    - keras -> keras fp32;
    - openvino -> openvino at `precision` (fp32 if None); Keras fp32 if openvino cannot be imported;
    - auto -> Keras when TensorFlow sees a GPU (OpenVINO's CPU plugin would leave it idle); else OpenVINO,
      int8 when `int8_ok` and the CPU has native int8 (amx_int8 / avx512_vnni / avx_vnni), else bf16 when
      the CPU has native bf16 (amx_bf16 / avx512_bf16), else fp32; else Keras.
    """
    flags = frozenset(cpu_flags)
    native = has_native_bf16(flags)
    if engine == "keras":
        return EngineChoice("keras", "fp32", "engine='keras'")
    if engine == "openvino":
        if not openvino_importable:
            return EngineChoice("keras", "fp32", "engine='openvino' but openvino cannot be imported", True)
        return EngineChoice("openvino", precision or "fp32", "engine='openvino'")
    if engine != "auto":
        raise UserError(f"engine must be one of {', '.join(ENGINES)}; got {engine!r}")
    if gpu_present:
        return EngineChoice("keras", "fp32", "auto: TensorFlow sees a GPU")
    if not openvino_importable:
        return EngineChoice("keras", "fp32", "auto: openvino cannot be imported")
    if precision is not None:
        return EngineChoice("openvino", precision, f"auto: CPU, precision {precision!r} chosen by the user")
    if int8_ok and has_native_int8(flags):
        return EngineChoice("openvino", "int8", "auto: the model passed the int8 gate, CPU with native int8 "
                                                f"({int8_support(flags)})")
    if native:
        return EngineChoice("openvino", "bf16", "auto: CPU with native bf16")
    return EngineChoice("openvino", "fp32", "auto: CPU without native bf16")


def cpu_flags(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> frozenset[str]:
    """The `flags` of the first CPU in /proc/cpuinfo (empty where there is none: macOS, some containers)."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("flags", "Features"):  # x86 | arm64
            return frozenset(value.split())
    return frozenset()


def import_openvino() -> tuple[Any, str | None]:
    """(the openvino module, None), or (None, 'ImportError: ...') where it cannot be imported."""
    try:
        return importlib.import_module("openvino"), None  # lazy: 0.4 s and a C++ runtime; workers only
    except ImportError as exc:
        return None, f"{type(exc).__name__}: {exc}"


def gpu_present() -> bool:
    import tensorflow as tf  # lazy: loads TensorFlow, needed only where a model runs

    return bool(tf.config.list_physical_devices("GPU"))


def resolve_engine(engine: str, precision: str | None, int8_ok: bool = False) -> EngineChoice:
    """`choose_engine` with this machine's facts; the fallback from `openvino` warns once per process."""
    ov, error = import_openvino()
    gpu = gpu_present() if engine == "auto" else False
    choice = choose_engine(engine, precision, cpu_flags=cpu_flags(), openvino_importable=ov is not None,
                           gpu_present=gpu, int8_ok=int8_ok)
    if choice.fallback:
        _warn_once("import", f"openvino cannot be imported in this Python process (pid {os.getpid()}: "
                             f"{error}): DeepImageFeaturizer engine 'openvino' falls back to keras fp32")
    return choice


def _warn_once(key: str, message: str) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        log.warning(message)


# ----------------------------------------------------------------------------------------------- engines


@dataclass
class Engine:
    """A loaded model: `engine(uint8 or 0-255 float (N, S, S, 3)) -> float32 (N, feature_dim)`."""

    label: str  # what really runs, e.g. keras:fp32, openvino:bf16 (OpenVINO's effective precision)
    backbone: Backbone
    run: Callable[[np.ndarray], np.ndarray]  # preprocessed float32 batch -> features
    converted: bool = False  # this call converted Keras -> IR (False: IR read from the cache, or Keras)
    ir_path: Path | None = None

    def __call__(self, images: np.ndarray) -> np.ndarray:
        x = self.backbone.preprocess(images)  # the same preprocess_input for every engine
        return np.asarray(self.run(x), dtype=np.float32)


def keras_model(backbone: str, weights_path: str) -> keras.Model:
    """Build the backbone and load a weights file, once per Python worker (workers are reused).

    Cap TensorFlow's threads before the first call (worker.configure_tf_threads): it cannot change later.
    """
    key = (get_backbone(backbone).name, str(weights_path))
    if key not in _KERAS_MODELS:
        model = get_backbone(backbone).build(weights=None)
        model.load_weights(str(weights_path))
        _KERAS_MODELS[key] = model
    return _KERAS_MODELS[key]


def load_engine(
    backbone: str, weights_path: str, *, engine: str = "keras", precision: str | None = None,
    fingerprint: str | None = None, cache_dir: str | os.PathLike | None = None, threads: int = 1,
    calibration: str | None = None, int8_ok: bool = False,
) -> Engine:
    """Resolve `engine` on this machine and load it, memoised per process by (backbone, weights, engine,
    precision, threads, calibration): a reused Python worker loads each model once.

    `fingerprint` names the weights in the IR cache key (the driver's weights fingerprint); without it the
    file's sha256 is used. `cache_dir` is the driver's weights cache dir (a hint, see `ir_cache_dir`).
    `threads` is OpenVINO's thread cap; TensorFlow's must already be set to the same (see keras_model).
    `calibration` is the local calibration file int8 is quantised on; `int8_ok` lets `auto` pick int8 (the
    model passed train's int8 gate). An int8 engine that cannot be made here (no nncf, no calibration) falls
    back to the precision `auto` would pick without int8, with one warning; its label says so.
    """
    bb = get_backbone(backbone)
    n = max(1, int(threads))
    choice = resolve_engine(engine, precision, int8_ok=int8_ok and calibration is not None)
    key = (bb.name, str(weights_path), choice.engine, choice.precision, n,
           calibration if choice.precision == "int8" else None)
    if key in _ENGINES:
        return _ENGINES[key]
    loaded: Engine | None = None
    if choice.engine == "openvino" and choice.precision == "int8":
        loaded = _int8_or_fallback(bb, str(weights_path), n, fingerprint, cache_dir, calibration)
    if choice.engine == "openvino" and loaded is None:
        try:
            loaded = _openvino_engine(bb, str(weights_path), _no_int8(choice.precision), n,
                                      fingerprint or f"file:{file_digest(weights_path)}",
                                      ir_cache_dir(cache_dir))
        except Exception as exc:  # a conversion or compile failure must not fail every task: run Keras
            _warn_once(f"openvino-failed-{bb.name}",
                       f"OpenVINO could not run {bb.name} in pid {os.getpid()} "
                       f"({type(exc).__name__}: {str(exc).strip()[:300]}): falling back to keras fp32")
    if loaded is None:
        model = keras_model(bb.name, str(weights_path))
        loaded = Engine("keras:fp32", bb, model.predict_on_batch)
    log.info("%s engine for %s: %s (%s)", loaded.label, bb.name, weights_path, choice.reason)
    _ENGINES[key] = loaded
    return loaded


# ----------------------------------------------------------------------------------------------- openvino


def ir_cache_dir(driver_dir: str | os.PathLike | None = None) -> Path:
    """`<weights cache>/openvino` on this machine: $XRAY_SPARK_CACHE here, else the driver's dir when it is
    writable here, else the default weights cache, else the temp dir (an executor may not own the driver's
    home)."""
    candidates: list[Callable[[], Path]] = []
    if os.environ.get("XRAY_SPARK_CACHE"):
        candidates.append(weights_cache_dir)
    if driver_dir:
        candidates.append(lambda: weights_cache_dir(driver_dir))
    candidates += [lambda: weights_cache_dir(Path.home() / ".cache" / "xray-spark" / "weights"),
                   lambda: weights_cache_dir(Path(tempfile.gettempdir()) / "xray-spark-weights")]
    for candidate in candidates:
        try:
            root = candidate() / "openvino"
            root.mkdir(parents=True, exist_ok=True)
            if os.access(root, os.W_OK):
                return root
        except OSError:
            continue
    raise RuntimeError("no writable folder for the OpenVINO cache (tried $XRAY_SPARK_CACHE, the driver's "
                       "weights cache, ~/.cache/xray-spark/weights and the temp dir)")


def ir_key(backbone: str, fingerprint: str, openvino_version: str, keras_version: str) -> dict[str, str]:
    """Everything that changes the converted IR (not the precision: that is a compile-time hint)."""
    return {"backbone": get_backbone(backbone).name, "weights": fingerprint, "openvino": openvino_version,
            "keras": keras_version, "ir_weights": IR_WEIGHTS}


def save_ir(model: keras.Model, folder: Path) -> None:
    """Convert a Keras model and write its IR (model.xml + model.bin) into `folder`, an unpublished temp
    folder of ir_files.build_once, which publishes it whole."""
    ov, error = import_openvino()
    if ov is None:
        raise RuntimeError(error)
    with warnings.catch_warnings():  # Keras 3 warns about the input structure of a traced functional model
        warnings.simplefilter("ignore", UserWarning)
        ov_model = ov.convert_model(model)
    ov.save_model(ov_model, str(folder / MODEL_XML), compress_to_fp16=False)


def _core() -> Any:
    if not _CORE:
        ov, error = import_openvino()
        if ov is None:
            raise RuntimeError(error)
        _CORE.append(ov.Core())
    return _CORE[0]


def _openvino_engine(bb: Backbone, weights_path: str, precision: str, threads: int, fingerprint: str,
                     root: Path, calibration: str | None = None) -> Engine:
    import keras  # lazy: loads TensorFlow, needed only where a model runs

    ov, _ = import_openvino()
    key = ir_key(bb.name, fingerprint, ov.__version__, keras.__version__)
    folder = ir_folder(root, key)
    xml = folder / MODEL_XML

    def build(tmp: Path) -> None:
        model = _KERAS_MODELS.get((bb.name, weights_path))
        if model is None:  # not memoised: only the IR is kept in memory afterwards
            model = bb.build(weights=None)
            model.load_weights(weights_path)
        save_ir(model, tmp)

    converted = build_once(folder, build, key)
    if converted:
        log.info("converted %s to OpenVINO IR at %s", bb.name, folder)
    if precision == "int8":  # the int8 IR beside the fp32 one, quantised here at first use
        xml, quantised = int8_ir(xml, key, calibration, root)
        converted = converted or quantised
    compiled = _core().compile_model(str(xml), "CPU", {
        "INFERENCE_PRECISION_HINT": _OV_HINT[precision],
        "INFERENCE_NUM_THREADS": threads,  # the same cap as TensorFlow's (worker.tf_threads)
        "NUM_STREAMS": 1,
        "ENABLE_CPU_PINNING": False,  # several Python workers share the cores: never pin them all to one
    })
    effective = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    effective = "int8" if precision == "int8" else _OV_TYPE_TO_PRECISION.get(effective, effective)
    if effective != precision:
        _warn_once(f"precision-{precision}-{effective}",
                   f"OpenVINO runs {effective}, not {precision}, on this CPU (native bf16 needs "
                   f"{' or '.join(NATIVE_BF16_FLAGS)})")
    request = compiled.create_infer_request()

    def run(x: np.ndarray) -> np.ndarray:
        return request.infer({0: np.ascontiguousarray(x, dtype=np.float32)}, share_inputs=True,
                             share_outputs=False)[0]

    return Engine(f"openvino:{effective}", bb, run, converted=converted, ir_path=xml)


def _no_int8(precision: str) -> str:
    """The precision an int8 request falls back to where int8 cannot be made: what `auto` picks without
    it (bf16 with native bf16, else fp32)."""
    if precision != "int8":
        return precision
    return "bf16" if has_native_bf16(cpu_flags()) else "fp32"


def _int8_or_fallback(bb: Backbone, weights_path: str, threads: int, fingerprint: str | None,
                      cache_dir: str | os.PathLike | None, calibration: str | None) -> Engine | None:
    """The int8 engine, or None (after one warning) where it cannot be made: the caller loads `_no_int8`."""
    try:
        if calibration is None:
            raise RuntimeError("no calibration sample was given")
        return _openvino_engine(bb, weights_path, "int8", threads,
                                fingerprint or f"file:{file_digest(weights_path)}", ir_cache_dir(cache_dir),
                                calibration)
    except Exception as exc:  # no nncf, a damaged calibration: the model still runs, at another precision
        _warn_once(f"int8-failed-{bb.name}",
                   f"int8 {bb.name} cannot be made in pid {os.getpid()} ({type(exc).__name__}: "
                   f"{str(exc).strip()[:300]}): running {_no_int8('int8')} instead")
        return None
