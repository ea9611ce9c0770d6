"""Typed, validated configuration layered base -> conf/local.yml -> --config FILE.

Why typed: a misspelt key in YAML silently does nothing; here it is an error naming the key and the file.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from xray_spark.errors import ConfigError

CANONICAL_LABELS = ("covid", "no_findings", "pneumonia")


@dataclass
class DecodeConfig:
    max_pixels: int = 100_000_000
    max_file_bytes: int = 256 * 1024 * 1024
    extensions: list[str] = field(default_factory=list)


@dataclass
class DedupConfig:
    phash_max_hamming: int = 8
    pixel_min_correlation: float = 0.95
    thumb_size: int = 128


@dataclass
class SplitConfig:
    seed: int = 42
    folds: int = 5
    test_fold: int = 0


@dataclass
class SparkConfig:
    master: str = "local[2]"
    app_name: str = "xray-spark"
    conf: dict[str, str] = field(default_factory=dict)


@dataclass
class TrainConfig:
    backbones: list[str] = field(default_factory=lambda: ["ResNet50", "InceptionV3"])
    heads: list[str] = field(default_factory=lambda: ["lr", "rf", "dt"])
    tasks: list[str] = field(default_factory=lambda: ["binary", "multiclass"])
    weights: str = "imagenet"
    select_metric: str = "macro_f1"
    class_weights: bool = False
    cross_validate: bool = False
    cv_metric: str = "f1"  # MulticlassClassificationEvaluator metricName used to pick a grid point
    bootstrap_resamples: int = 1000
    parallel_fits: int = 2  # head x task combinations fitted at once (threads sharing one SparkSession)
    seed: int = 7
    registered_model_prefix: str = "xray-spark"
    head_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    param_grids: dict[str, dict[str, list[Any]]] = field(default_factory=dict)


@dataclass
class Config:
    labels: dict[str, list[str]] = field(default_factory=dict)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    spark: SparkConfig = field(default_factory=SparkConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking_uri: str | None = None
    cache_dir: str | None = None

    def label_for(self, name: str) -> str | None:
        """Map a folder name or manifest label to a canonical label, or None when it is not configured."""
        key = _norm_label(name)
        for canonical, aliases in self.labels.items():
            if key == _norm_label(canonical) or key in {_norm_label(a) for a in aliases}:
                return canonical
        return None


def _norm_label(name: str) -> str:
    return re.sub(r"[\s_\-]+", "", str(name).strip().lower())


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k not in ("labels",):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _build(cls: type, data: dict[str, Any], where: str, path: str) -> Any:
    """Instantiate dataclass `cls` from `data`, rejecting unknown keys and wrong types with a named key."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: key '{path or '<root>'}' must be a mapping, got {type(data).__name__}")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        full = f"{path}.{key}" if path else str(key)
        if key not in names:
            raise ConfigError(f"{where}: unknown config key '{full}'")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value or {}, where, full)
        else:
            kwargs[key] = _check_type(value, hint, where, full)
    return cls(**kwargs)


def _check_type(value: Any, hint: Any, where: str, key: str) -> Any:
    origin = getattr(hint, "__origin__", None)
    text = str(hint)
    if value is None and "None" in text:
        return None
    if hint is int or text.startswith("int"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: key '{key}' must be an integer, got {value!r}")
    elif hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: key '{key}' must be a number, got {value!r}")
        return float(value)
    elif hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: key '{key}' must be true or false, got {value!r}")
    elif hint is str or text.startswith("str"):
        if not isinstance(value, str):
            raise ConfigError(f"{where}: key '{key}' must be a string, got {value!r}")
    elif origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: key '{key}' must be a list, got {value!r}")
    elif origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: key '{key}' must be a mapping, got {value!r}")
        if key.endswith("spark.conf") or key == "spark.conf":
            return {str(k): str(v).lower() if isinstance(v, bool) else str(v) for k, v in value.items()}
    return value


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{at}: invalid YAML") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of config keys")
    return data


def load_config(path: str | Path | None = None, local: str | Path | None = "conf/local.yml") -> Config:
    """Load package defaults, then `local` when it exists, then `path` (which must exist)."""
    base_text = resources.files("xray_spark").joinpath("conf/base.yml").read_text()
    merged: dict[str, Any] = yaml.safe_load(base_text) or {}
    where = "xray_spark/conf/base.yml"
    layers: list[Path] = []
    if local and Path(local).is_file():
        layers.append(Path(local))
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        layers.append(p)
    for layer in layers:
        data = _read_yaml(layer)
        # validate each layer on its own so the error names the file that holds the bad key
        _build(Config, _merge(merged, data), str(layer), "")
        merged = _merge(merged, data)
        where = str(layer)
    cfg = _build(Config, merged, where, "")
    for canonical in cfg.labels:
        if canonical not in CANONICAL_LABELS:
            raise ConfigError(f"{where}: labels.{canonical} is not one of {', '.join(CANONICAL_LABELS)}")
    return cfg
