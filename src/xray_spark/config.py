"""Typed, validated configuration layered base -> conf/local.yml -> --config FILE.

Why typed: a misspelt key in YAML silently does nothing; here it is an error naming the key and the file.
The same goes for a key given twice (YAML keeps the last one without a word) and for a value out of its
range (which would otherwise fail deep inside a Spark job, exit 1, instead of here, exit 2).

A section that belongs to one package (`finetune`) is declared in that package and registered here
(`register_section`); this module imports nothing above the core. A registered section is validated with the
rest at load time; a section whose package was not imported yet is kept as its YAML layers and validated, with
the same key-and-file errors, when it is first read (`Config.section`).

The command-line layer is here too (`add_spark_arguments`: --config, --master, --conf over config `spark`),
with the scoring chunk constants that `--chunk-size`'s help quotes: this module imports no pyspark, so
`xray-spark --help` can build its parser from it without starting anything heavy.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from xray_spark.errors import ConfigError, UserError

CANONICAL_LABELS = ("covid", "no_findings", "pneumonia")
BASE_CONFIG = "xray_spark/conf/base.yml"  # the package defaults, as errors name them

# A range check: key -> (test, the range in words); the error names the key, the range and the file.
Ranges = Mapping[str, tuple[Callable[[Any], bool], str]]


@dataclass(frozen=True)
class PackageSection:
    """A config section declared by the package that reads it: its dataclass (defaults and types) and the
    ranges of its keys (relative to the section)."""

    cls: type
    ranges: Ranges


_PACKAGE_SECTIONS: dict[str, PackageSection] = {}


def register_section(name: str, cls: type, ranges: Ranges) -> None:
    """Declare config section `name` (a top-level key) as read into dataclass `cls`, with `ranges` checked.

    Called by the owning package when its config module is imported; from then on every load validates the
    section with the core sections."""
    _PACKAGE_SECTIONS[name] = PackageSection(cls, ranges)


@dataclass
class DecodeConfig:
    max_pixels: int = 100_000_000
    max_file_bytes: int = 256 * 1024 * 1024
    extensions: list[str] = field(default_factory=list)


# The banded pHash search (data/dedup.py, data/copies.py) cuts a 64-bit hash into PHASH_BANDS bands and
# matches band values up to 2 bits apart, so by pigeonhole it finds every pair up to MAX_HAMMING_COVERED bits
# apart: the largest dedup.phash_max_hamming and dedup.copy_max_hamming it can honour.
PHASH_BANDS = 3
MAX_HAMMING_COVERED = PHASH_BANDS * 3 - 1


@dataclass
class DedupConfig:
    phash_max_hamming: int = 8
    pixel_min_correlation: float = 0.95
    thumb_size: int = 128
    # copies across sources, even cropped (data/copies.py): window grid, candidate radius, pixel check
    copy_window_step: float = 0.0375  # 8 steps to copy_max_trim: 45 trims per axis, 2025 windows
    copy_max_trim: float = 0.3
    copy_max_hamming: int = 5
    copy_thumb_size: int = 256
    copy_min_inliers: int = 10
    copy_min_inlier_ratio: float = 0.25
    copy_min_correlation: float = 0.95


@dataclass
class SplitConfig:
    seed: int = 42
    folds: int = 5
    test_fold: int = 0


@dataclass
class ScoringConfig:
    min_age_seconds: float = 5.0  # younger files may still be being copied in: left for the next run
    lease_seconds: float = 120.0  # a run's lease ends this long after its last renewal (every quarter of it)
    lease_settle_seconds: float = 2.0  # non-local outputs: wait, then re-read a new lease (racy create)


@dataclass
class ShiftConfig:
    """The shift check fitted at train time (models/shift.py): is an image like the training images?"""

    components: int = 16  # top principal components of the features (Mahalanobis signal)
    quantile: float = 0.99  # training quantile: each signal's unit and the in-distribution threshold
    drift_psi: float = 0.25  # score: a categorical property's PSI above this is named in the warning line
    drift_z: float = 3.0  # score: the robust z of a run's typical size above this is named too


# Scoring's (scoring/run.py, and evaluation/external.py, which featurizes as scoring does; the feature cache
# sizes its own tasks), here because the CLI's --chunk-size help quotes them and scoring imports pyspark.
IMAGES_PER_TASK = 32  # small tasks within a chunk: no core idles while the last one finishes
# Default images per committed chunk: this many waves of IMAGES_PER_TASK-image tasks on every core (512 on
# 2 cores). The size is a trade-off: a kill loses at most one uncommitted chunk, so smaller is safer; but
# every chunk pays a fixed amount of Spark work (its jobs and its commit) whatever its size, so smaller
# chunks score fewer images per second (benchmarks/score.py measures scoring against the bare featurizer).
# Counting in waves per core keeps that fixed cost the same share of a chunk's work on any cluster size.
WAVES_PER_CHUNK = 8


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
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    shift: ShiftConfig = field(default_factory=ShiftConfig)
    spark: SparkConfig = field(default_factory=SparkConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking_uri: str | None = None
    cache_dir: str | None = None
    # package sections (register_section): name -> the section as merged after each layer, with the layer's
    # name, for validation on first read; and the sections read so far
    package_layers: dict[str, list[tuple[str, Any]]] = field(default_factory=dict, repr=False,
                                                             metadata={"internal": True})
    package_sections: dict[str, Any] = field(default_factory=dict, repr=False, metadata={"internal": True})

    def section(self, name: str) -> Any:
        """Package section `name` as its registered dataclass, validated (once) against every layer that set
        it; the same object on every read, so a change made to it is seen by every reader."""
        if name not in self.package_sections:
            if name not in _PACKAGE_SECTIONS:
                raise KeyError(f"config section {name!r} is read but no package registered it")
            layers = self.package_layers.get(name) or [(BASE_CONFIG, {})]
            self.package_sections[name] = _build_section(name, _PACKAGE_SECTIONS[name], layers)
        return self.package_sections[name]

    def __getattr__(self, name: str) -> Any:
        """`cfg.finetune` and every other registered package section (see `section`)."""
        if name.startswith("_") or name not in _PACKAGE_SECTIONS:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return self.section(name)

    def label_for(self, name: str) -> str | None:
        """Map a folder name or manifest label to a canonical label, or None when it is not configured."""
        key = _norm_label(name)
        for canonical, aliases in self.labels.items():
            if key == _norm_label(canonical) or key in {_norm_label(a) for a in aliases}:
                return canonical
        return None


# Numeric keys with an obvious range: key -> (test, the range in words). Cross-key rules: _check_values.
_RANGES: Ranges = {
    "decode.max_pixels": (lambda v: v >= 1, ">= 1"),
    "decode.max_file_bytes": (lambda v: v >= 1, ">= 1"),
    "dedup.phash_max_hamming": (lambda v: 0 <= v <= MAX_HAMMING_COVERED,
                                f"in [0, {MAX_HAMMING_COVERED}], what the banded pHash search covers"),
    "dedup.pixel_min_correlation": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "dedup.thumb_size": (lambda v: v >= 8, ">= 8 (pixels a side)"),
    "dedup.copy_window_step": (lambda v: 0 < v <= 0.5, "in (0, 0.5] (a fraction of a side)"),
    "dedup.copy_max_trim": (lambda v: 0 <= v < 1, "in [0, 1) (a fraction of a side)"),
    "dedup.copy_max_hamming": (lambda v: 0 <= v <= MAX_HAMMING_COVERED,
                               f"in [0, {MAX_HAMMING_COVERED}], what the banded window search covers"),
    "dedup.copy_thumb_size": (lambda v: v >= 64, ">= 64 (pixels on the long side)"),
    "dedup.copy_min_inliers": (lambda v: v >= 3, ">= 3 (keypoint matches)"),
    "dedup.copy_min_inlier_ratio": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "dedup.copy_min_correlation": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "split.seed": (lambda v: 0 <= v <= 2**32 - 1, "in [0, 2**32 - 1] (scikit-learn's random_state)"),
    "split.folds": (lambda v: v >= 2, ">= 2"),
    "scoring.min_age_seconds": (lambda v: v >= 0, ">= 0"),
    "scoring.lease_seconds": (lambda v: v > 0, "> 0"),
    "scoring.lease_settle_seconds": (lambda v: v >= 0, ">= 0"),
    "shift.components": (lambda v: v >= 1, ">= 1"),
    "shift.quantile": (lambda v: 0.5 <= v < 1, "in [0.5, 1)"),
    "shift.drift_psi": (lambda v: v > 0, "> 0"),
    "shift.drift_z": (lambda v: v > 0, "> 0"),
    "train.bootstrap_resamples": (lambda v: v >= 1, ">= 1"),
    "train.parallel_fits": (lambda v: v >= 1, ">= 1"),
    "train.seed": (lambda v: 0 <= v <= 2**63 - 1, "in [0, 2**63 - 1] (a Spark seed is a long)"),
}


class _DuplicateKey(yaml.YAMLError):
    """A mapping key given twice; `key` is dotted from the document root."""

    def __init__(self, key: str, line: int, first: int) -> None:
        super().__init__(f"duplicate key '{key}'")
        self.key, self.line, self.first = key, line, first


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a mapping key given twice, at any depth (plain PyYAML keeps the last)."""

    def construct_document(self, node: yaml.Node) -> Any:
        self._check_unique(node, "", set())
        return super().construct_document(node)

    def _check_unique(self, node: yaml.Node, path: str, seen: set[int]) -> None:
        if id(node) in seen:  # an alias: checked where its anchor was defined (and no endless recursion)
            return
        seen.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self._check_unique(item, f"{path}[{i}]", seen)
        if not isinstance(node, yaml.MappingNode):
            return
        first: dict[Any, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # keys merged by `<<: *x` may be overridden
                self._check_unique(value_node, path, seen)
                continue
            key = self.construct_object(key_node) if isinstance(key_node, yaml.ScalarNode) else id(key_node)
            full = f"{path}.{key}" if path else str(key)
            line = key_node.start_mark.line + 1
            if key in first:
                raise _DuplicateKey(full, line, first[key])
            first[key] = line
            self._check_unique(value_node, full, seen)


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
    names = {f.name for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
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
    if text in ("int | str", "str | int"):  # e.g. finetune.unfreeze: a count or a word; its ranges check it
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ConfigError(f"{where}: key '{key}' must be an integer or a string, got {value!r}")
    elif hint is int or text.startswith("int"):
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


def _parse_yaml(text: str, where: str) -> dict[str, Any]:
    """YAML text -> a mapping, refusing duplicate keys; every problem is a ConfigError naming `where`."""
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader) or {}
    except _DuplicateKey as exc:
        raise ConfigError(f"{where} line {exc.line}: duplicate key '{exc.key}' (first given at line "
                          f"{exc.first}); give each key once") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{where}{at}: invalid YAML") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: top level must be a mapping of config keys")
    return data


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    return _parse_yaml(text, str(path))


def _check_ranges(obj: Any, ranges: Ranges, where: str, prefix: str = "") -> None:
    """Every key of `ranges` (dotted, read from `obj`) within its range, else a ConfigError naming it."""
    for key, (ok, allowed) in ranges.items():
        value = functools.reduce(getattr, key.split("."), obj)
        if not ok(value):
            raise ConfigError(f"{where}: key '{prefix}{key}' must be {allowed}, got {value!r}")


def _build_section(name: str, section: PackageSection, layers: list[tuple[str, Any]]) -> Any:
    """A package section from its merged mapping after each layer: each state is validated naming its layer
    (as the core sections are), the last one is the value."""
    value = None
    for where, data in layers:
        value = _build(section.cls, data if data is not None else {}, where, name)
        _check_ranges(value, section.ranges, where, f"{name}.")
    return value


def _split_sections(merged: dict[str, Any], packages: set[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(core keys, package sections) of a merged config mapping."""
    core = {k: v for k, v in merged.items() if k not in packages}
    return core, {k: v for k, v in merged.items() if k in packages}


def _check_values(cfg: Config, where: str) -> None:
    """Ranges (_RANGES) and the rules between keys; the error names the key, the range and `where`."""
    _check_ranges(cfg, _RANGES, where)
    folds, test_fold = cfg.split.folds, cfg.split.test_fold
    if not 0 <= test_fold < folds:
        raise ConfigError(f"{where}: key 'split.test_fold' must be in [0, {folds - 1}] "
                          f"(split.folds is {folds}), got {test_fold!r}")
    if cfg.train.cross_validate and folds < 3:
        raise ConfigError(f"{where}: key 'split.folds' must be >= 3 when train.cross_validate is true "
                          f"(one fold is the test side; cross-validation needs 2 more), got {folds!r}")


def _check_layer(merged: dict[str, Any], packages: set[str], where: str) -> Config:
    """The config as merged up to layer `where`, every core and registered section validated naming it."""
    core, sections = _split_sections(merged, packages)
    cfg = _build(Config, core, where, "")
    _check_values(cfg, where)
    for name, section in _PACKAGE_SECTIONS.items():
        _build_section(name, section, [(where, sections.get(name))])
    return cfg


def load_config(path: str | Path | None = None, local: str | Path | None = "conf/local.yml") -> Config:
    """Load package defaults, then `local` when it exists, then `path` (which must exist)."""
    where = BASE_CONFIG
    merged = _parse_yaml(resources.files("xray_spark").joinpath("conf/base.yml").read_text(), where)
    # package sections: the registered ones and those the defaults declare (their package not imported yet)
    core_keys = {f.name for f in dataclasses.fields(Config)}
    packages = set(_PACKAGE_SECTIONS) | {key for key in merged if key not in core_keys}
    layers: list[Path] = []
    if local and Path(local).is_file():
        layers.append(Path(local))
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        layers.append(p)
    states: list[tuple[str, dict[str, Any]]] = []  # (layer, the config as merged up to it)
    for layer in layers:
        merged = _merge(merged, _read_yaml(layer))
        # validate each layer on its own so the error names the file that holds the bad key or value
        _check_layer(merged, packages, str(layer))
        states.append((str(layer), merged))
        where = str(layer)
    cfg = _check_layer(merged, packages, where)
    for canonical in cfg.labels:
        if canonical not in CANONICAL_LABELS:
            raise ConfigError(f"{where}: labels.{canonical} is not one of {', '.join(CANONICAL_LABELS)}")
    states = states or [(where, merged)]
    cfg.package_layers = {name: [(w, m.get(name)) for w, m in states] for name in packages}
    for name in _PACKAGE_SECTIONS:  # validated now; the others when their package reads them
        cfg.section(name)
    return cfg


def add_spark_arguments(parser: argparse.ArgumentParser) -> None:
    """Add --config, --master and --conf k=v to any parser (CLI subcommands and jobs/*.py)."""
    parser.add_argument("--config", metavar="FILE", help="YAML config layered over the defaults")
    parser.add_argument("--master", metavar="URL", help="Spark master (default: config spark.master)")
    parser.add_argument(
        "--conf",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="extra Spark setting, repeatable (e.g. --conf spark.driver.memory=8g)",
    )


def parse_conf_pairs(pairs: Sequence[str]) -> dict[str, str]:
    """Turn ['k=v', ...] into a dict; a pair without '=' is a user error."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--conf expects KEY=VALUE, got {pair!r}")
        out[key.strip()] = value.strip()
    return out
