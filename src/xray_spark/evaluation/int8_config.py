"""int8 gate settings (config section `int8`), declared here and registered with xray_spark.config.

The gate (int8_gate.py) is switched by `int8.gate` (or `xray-spark train --int8-gate`):
- `auto` (default): measured where the driver's CPU runs int8 natively (AMX-INT8, AVX512-VNNI, AVX-VNNI) and
  nncf is installed: the machines where int8 pays. Elsewhere a train run does not pay for it (no calibration,
  no quantisation, no second featurizing), and its models keep bf16/fp32, saying why in one line;
- `on`: measured on any CPU (correct everywhere, slow where int8 is not native);
- `off`: never measured; no model uses int8.
Fewer than `min_gate_images` held-out images: not measured either (one disagreement in 200 is 0.5%, the
margin the gate decides on; on fewer images it could not see a change that size).
"""

from __future__ import annotations

from dataclasses import dataclass

from xray_spark.config import Ranges, register_section

GATE_MODES = ("auto", "on", "off")


@dataclass
class Int8Config:
    gate: str = "auto"  # auto | on | off (see the module docstring)
    calibration_images: int = 300  # NNCF calibration sample: training-split images, drawn on executors
    gate_images: int = 2000  # held-out (test split) images the gate measures, at most
    min_gate_images: int = 200  # fewer held-out images: not measured
    min_agreement: float = 0.995  # share of held-out labels int8 must leave unchanged
    seed: int = 29  # which training images calibrate and which test images are measured (when capped)


RANGES: Ranges = {
    "gate": (lambda v: v in GATE_MODES, f"one of {', '.join(GATE_MODES)}"),
    "calibration_images": (lambda v: 1 <= v <= 5000, "in [1, 5000]"),
    "gate_images": (lambda v: v >= 1, ">= 1"),
    "min_gate_images": (lambda v: v >= 1, ">= 1"),
    "min_agreement": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "seed": (lambda v: 0 <= v <= 2**31 - 1, "in [0, 2**31 - 1]"),
}

register_section("int8", Int8Config, RANGES)
