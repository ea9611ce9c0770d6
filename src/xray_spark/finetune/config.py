"""Fine-tune settings (config section `finetune`), declared here and registered with xray_spark.config.

The settings belong to the fine-tune package, whose modules read them (also inside the TensorFlow workers,
from the payload): config.py validates the section with the others but imports nothing from here. Defaults
are the source report's preset (Adam, learning rate 3e-5, 10 epochs). There is deliberately no flip setting:
chest anatomy is not left-right symmetric (the heart sits left), so a mirrored film is not a plausible
training example.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from xray_spark.config import Ranges, register_section

OPTIMIZERS = ("adam", "adamw", "sgd")
PRECISIONS = ("auto", "bf16", "fp32")


@dataclass
class FinetuneConfig:
    optimizer: str = "adam"
    learning_rate: float = 3e-5
    epochs: int = 10
    batch_size: int = 16  # global: split evenly across the workers
    unfreeze: int | str = "all"  # "all", or how many of the backbone's last layers train (0: head only)
    augment: bool = True
    rotation_degrees: float = 5.0  # uniform in [-r, r]
    scale: float = 0.05  # zoom uniform in [1 - s, 1 + s]
    contrast: float = 0.1  # contrast factor uniform in [1 - c, 1 + c]
    class_weights: bool = True  # weight the loss by inverse class frequency of the training rows
    precision: str = "auto"  # auto: bf16 only on CPUs with native bf16 (AMX / AVX512-BF16), else fp32
    patience: int = 3  # early stopping: epochs without a better validation loss
    workers: int = 2  # barrier tasks (one TensorFlow worker each); --workers overrides
    seed: int = 7


def unfreeze_count(value: int | str) -> int | None:
    """`all` -> None (every layer trains), a count -> that count; anything else is a ValueError."""
    if isinstance(value, str):
        if value.strip().lower() == "all":
            return None
        raise ValueError(f"unfreeze must be 'all' or a number of layers >= 0, got {value!r}")
    if isinstance(value, bool) or value < 0:
        raise ValueError(f"unfreeze must be 'all' or a number of layers >= 0, got {value!r}")
    return int(value)


def _unfreeze_ok(value: Any) -> bool:
    try:
        unfreeze_count(value)
    except (TypeError, ValueError):
        return False
    return True


# key (within the section) -> (test, the range in words), checked by xray_spark.config on every load
RANGES: Ranges = {
    "optimizer": (lambda v: v in OPTIMIZERS, f"one of {', '.join(OPTIMIZERS)}"),
    "learning_rate": (lambda v: v > 0, "> 0"),
    "epochs": (lambda v: v >= 1, ">= 1"),
    "batch_size": (lambda v: v >= 1, ">= 1"),
    "unfreeze": (_unfreeze_ok, "'all' or a number of layers >= 0"),
    "rotation_degrees": (lambda v: 0 <= v <= 45, "in [0, 45] (mild: a film is never upside down)"),
    "scale": (lambda v: 0 <= v < 0.5, "in [0, 0.5)"),
    "contrast": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "precision": (lambda v: v in PRECISIONS, f"one of {', '.join(PRECISIONS)}"),
    "patience": (lambda v: v >= 1, ">= 1"),
    "workers": (lambda v: v >= 1, ">= 1"),
    "seed": (lambda v: 0 <= v <= 2**31 - 1, "in [0, 2**31 - 1]"),
}

register_section("finetune", FinetuneConfig, RANGES)
