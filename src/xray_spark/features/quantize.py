"""int8 features: the backbone's fp32 OpenVINO IR quantised by NNCF on a calibration sample, once per machine.

Why: featurizing is the bill at scale, and int8 runs ResNet50 1.7-3.6x faster than fp32/bf16 on CPUs with
int8 dot-product instructions (benchmarks/featurize.py). Quantisation changes the features, so a model uses
them only after `train`'s gate (evaluation/int8_gate.py) found its decisions unchanged.

How: NNCF post-training quantisation (`nncf.quantize`: per-tensor activation ranges and per-channel weight
ranges from the calibration images, fast bias correction; settings in SETTINGS, pinned so that no machine
picks its own) on the fp32 IR engines.py converted from Keras, written beside it in the same cache:
`<weights cache>/openvino/<Backbone>/<key digest>/` with model.xml/.bin, key.json and calibration.json (the
sample's image hashes). The key is everything that changes the int8 model: the fp32 IR's key (backbone,
weights fingerprint, openvino and keras versions), the nncf version, the settings and the calibration
sample's digest — so the same inputs give the same int8 model, and any other input another folder. Each
machine that runs int8 (an executor, a serving machine) makes it there from the weights file and the
calibration file the driver ships (calibration.py): the int8 weights are never shipped, and the first Python
worker of a machine makes them while the others wait (ir_files.build_once).

CPU support (`int8_support`): AMX-INT8 (Sapphire Rapids and later), AVX512-VNNI (Cascade Lake, Ice Lake,
AMD Zen 4), AVX-VNNI (Alder Lake, Zen 5) run int8 dot products natively; elsewhere OpenVINO still runs the
int8 model correctly (AVX2 integer arithmetic), slower, and engine `auto` does not pick it there.

nncf is imported only here and only when a model is quantised (`xray-spark --help` and every other command
never load it).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from xray_spark.features.backbones import get_backbone
from xray_spark.features.calibration import load_calibration
from xray_spark.features.ir_files import MODEL_XML, build_once, ir_folder

log = logging.getLogger(__name__)

# cpuinfo flag -> the name benchmarks and logs use, strongest first
INT8_FLAGS = (("amx_int8", "AMX-INT8"), ("avx512_vnni", "AVX512-VNNI"), ("avx_vnni", "AVX-VNNI"))
# nncf.quantize arguments, part of the key; target_device CPU pins NNCF's CPU rules (incl. its overflow fix
# for CPUs without VNNI), so every machine quantises alike
SETTINGS = {"preset": "performance", "target_device": "CPU", "fast_bias_correction": "true"}

# train's int8 gate verdict (evaluation/int8_gate.py writes it, one line starting with one of these): the
# featurizer's `int8Gate` Param and the serving bundle keep it; only `passed: ...` lets `auto` pick int8
GATE_PASSED, GATE_REFUSED, GATE_NOT_MEASURED = "passed", "refused", "not measured"


def gate_passed(verdict: str | None) -> bool:
    return bool(verdict) and str(verdict).startswith(f"{GATE_PASSED}:")


def int8_support(flags: Iterable[str]) -> str:
    """The CPU's native int8 dot product: 'AMX-INT8', 'AVX512-VNNI', 'AVX-VNNI' or 'none'."""
    have = set(flags)
    return next((name for flag, name in INT8_FLAGS if flag in have), "none")


def has_native_int8(flags: Iterable[str]) -> bool:
    return int8_support(flags) != "none"


def nncf_version() -> str | None:
    """The installed nncf's version without importing it (None: not installed)."""
    try:
        return importlib.metadata.version("nncf")
    except importlib.metadata.PackageNotFoundError:
        return None


def int8_key(fp32_key: dict[str, str], calibration_digest: str, nncf: str) -> dict[str, str]:
    """Everything that changes the int8 IR (see the module docstring)."""
    return {**fp32_key, "precision": "int8", "nncf": nncf, "calibration": calibration_digest, **SETTINGS}


def int8_ir(fp32_xml: Path, fp32_key: dict[str, str], calibration_path: str | os.PathLike,
            root: Path) -> tuple[Path, bool]:
    """(the int8 IR's model.xml on this machine, whether this call made it): quantised from `fp32_xml` on
    the calibration file at first use, read from the cache afterwards."""
    version = nncf_version()
    if version is None:
        raise RuntimeError("nncf is not installed: int8 models cannot be made on this machine")
    calibration, pixels = load_calibration(calibration_path)
    key = int8_key(fp32_key, calibration.digest, version)
    folder = ir_folder(root, key)

    def build(tmp: Path) -> None:
        quantize_ir(fp32_xml, pixels, key["backbone"], tmp / MODEL_XML)
        (tmp / "calibration.json").write_text(json.dumps(calibration.describe(), indent=1))

    built = build_once(folder, build, key)
    if built:
        log.info("quantised %s to int8 on %d calibration images (digest %s) at %s", key["backbone"],
                 calibration.n, calibration.digest[:16], folder)
    return folder / MODEL_XML, built


def quantize_ir(fp32_xml: Path, pixels: np.ndarray, backbone: str, out_xml: Path) -> None:
    """NNCF post-training quantisation of an fp32 IR on single-channel uint8 images (n, S, S), each
    replicated to RGB and put through the backbone's own preprocess_input, as the featurizer does."""
    import nncf  # lazy: 1-2 s and a large import graph, needed only where a model is quantised

    ov = importlib.import_module("openvino")  # as engines.import_openvino: only where a model runs

    nncf.set_log_level(logging.WARNING)  # one INFO line per layer otherwise
    bb = get_backbone(backbone)

    def transform(i: int) -> np.ndarray:
        rgb = np.repeat(pixels[i:i + 1, :, :, None], 3, axis=-1)
        return np.ascontiguousarray(bb.preprocess(rgb), dtype=np.float32)

    model = ov.Core().read_model(str(fp32_xml))
    quantized = nncf.quantize(
        model, nncf.Dataset(list(range(len(pixels))), transform), subset_size=len(pixels),
        preset=nncf.QuantizationPreset.PERFORMANCE, target_device=nncf.TargetDevice.CPU,
        fast_bias_correction=True,
    )
    ov.save_model(quantized, str(out_xml), compress_to_fp16=False)
