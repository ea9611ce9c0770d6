"""The serving bundle: everything `xray-spark serve` needs to answer, in one local folder, without Spark.

Why a folder of its own beside the Spark PipelineModel: loading a PipelineModel needs a JVM, and the
featurizer stage names its weights by a spec (`imagenet`, `none`, a path) that the serving machine may not
be able to resolve (no internet, no Hadoop). The bundle pins all of it at train time:

    serving.json        format + version, backbone, weights file name + fingerprint + sha256, labels, task,
                        model name/version/uri, engine, baseline warning, how the head outputs scores
    head/               SparkFreeHead.save (numpy arrays + JSON)
    weights/<file>      the Keras weights file the featurizer ran with
    importances.npy     optional: tree heads' featureImportances (one row per class for one-vs-rest),
                        read from Spark at train time for the approximate heatmap
    shift_reference.txt optional: the pipeline's ShiftModel reference (models/shift.py Reference.to_text),
                        named by serving.json's `shift_reference`; without it (older models) answers carry
                        null shift fields
    calibration/<file>  optional: the int8 calibration sample (features/calibration.py) of a model whose int8
                        features passed train's gate (serving.json: `calibration_file`, `calibration_sha256`,
                        and `int8_gate`, the verdict, for every gated model); the serving machine quantises
                        from it once (features/quantize.py) and engine `auto` runs int8 where the CPU has it

`load_bundle` checks the format version and the weights' sha256, and fails with one line (BundleError, a
UserError: exit 2) on anything it cannot use. `bundle_from_pipeline` builds a bundle from a loaded Spark
PipelineModel; it is the only function here that touches pyspark (imported lazily: it runs at train time).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from xray_spark import __version__
from xray_spark.errors import UserError
from xray_spark.features.backbones import get_backbone
from xray_spark.features.calibration import load_calibration, resolve_calibration
from xray_spark.features.quantize import gate_passed
from xray_spark.features.weights import file_digest, resolve_weights, weights_fingerprint, weights_kind
from xray_spark.models.head_export import FEATURIZER, SHIFT_STAGE, export_head, flatten_stages
from xray_spark.models.heads_numpy import HeadFormatError, SparkFreeHead
from xray_spark.models.shift import Reference

FORMAT = "xray-spark/serving-bundle"
FORMAT_VERSION = 1
META_FILE = "serving.json"
HEAD_DIR = "head"
WEIGHTS_DIR = "weights"
IMPORTANCES_FILE = "importances.npy"
SHIFT_FILE = "shift_reference.txt"
CALIBRATION_DIR = "calibration"


class BundleError(UserError):
    """A folder that is not a usable serving bundle (missing, another format version, a damaged file)."""


@dataclass(frozen=True)
class BundleMeta:
    """What a bundle says about the model besides its arrays (all optional: a bare bundle still serves)."""

    task: str | None = None  # binary | multiclass
    model_name: str = ""
    model_version: str = ""
    model_uri: str = ""
    engine: str = "auto"  # the featurizer's engine Param: auto | keras | openvino
    precision: str | None = None  # None: the engine picks (as DeepImageFeaturizer with precision unset)
    baseline_as_good: bool | None = None  # the training report: metadata-only baseline as good as the model
    baseline_sentence: str | None = None  # the report's sentence saying so, shown by the page
    int8_gate: str | None = None  # train's int8 gate verdict (one line); None: not gated (older models)
    extra: dict[str, Any] = field(default_factory=dict)  # anything else worth keeping (run id, metrics)

    @classmethod
    def of(cls, meta: BundleMeta | Mapping[str, Any] | None) -> BundleMeta:
        """A BundleMeta from itself, a plain mapping of its fields (unknown keys go to `extra`), or None."""
        if meta is None or isinstance(meta, BundleMeta):
            return meta or cls()
        names = {f.name for f in fields(cls)}
        known = {k: v for k, v in meta.items() if k in names and k != "extra"}
        extra = {**dict(meta.get("extra") or {}), **{k: v for k, v in meta.items() if k not in names}}
        return cls(**known, extra=extra)


@dataclass(frozen=True)
class Bundle:
    """A loaded bundle: the head ready to predict, the weights file ready to load."""

    folder: Path
    backbone: str
    weights_path: Path
    weights_fingerprint: str
    labels: list[str]
    head: SparkFreeHead
    meta: BundleMeta
    importances: np.ndarray | None  # [1 or k, n_features] for tree heads, else None
    created: str = ""
    shift: Reference | None = None  # the training images' shift reference; None in older bundles
    calibration_path: Path | None = None  # the int8 calibration sample of a model that passed the gate

    @property
    def int8_ok(self) -> bool:
        """The model's int8 features passed train's gate and the bundle holds their calibration sample."""
        return self.calibration_path is not None and gate_passed(self.meta.int8_gate)


def write_bundle(
    folder: str | os.PathLike, *, head: SparkFreeHead, backbone: str, weights_file: str | os.PathLike,
    weights_fingerprint: str, meta: BundleMeta | Mapping[str, Any] | None = None,
    importances: np.ndarray | None = None, shift_reference: str | None = None,
    calibration_file: str | os.PathLike | None = None,
) -> Path:
    """Write a bundle to `folder` (which must not exist, or be empty); returns it. `shift_reference`: the
    ShiftModel's `reference` Param text (checked by parsing it), or None for a model without one.

    Written into a temp folder beside it and renamed into place, so a reader never sees half a bundle.
    """
    bb = get_backbone(backbone)
    meta = BundleMeta.of(meta)
    target = Path(folder)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise UserError(f"serving bundle folder {target} exists and is not empty")
    weights = Path(weights_file)
    if not weights.is_file():
        raise UserError(f"weights file not found: {weights}")
    if head.n_features != bb.feature_dim:
        raise UserError(f"the head reads {head.n_features} features, {bb.name} gives {bb.feature_dim}")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        head.save(tmp / HEAD_DIR)
        (tmp / WEIGHTS_DIR).mkdir()
        _link_or_copy(weights, tmp / WEIGHTS_DIR / weights.name)
        if importances is not None:
            imp = np.atleast_2d(np.asarray(importances, dtype=float))
            if imp.shape[1] != head.n_features:
                raise UserError(f"importances have {imp.shape[1]} features, the head {head.n_features}")
            np.save(tmp / IMPORTANCES_FILE, imp, allow_pickle=False)
        if shift_reference is not None:
            _parse_reference(shift_reference, "the shift reference")
            (tmp / SHIFT_FILE).write_text(shift_reference + "\n", encoding="ascii")
        calibration = None
        if calibration_file is not None:
            calibration = load_calibration(calibration_file)[0]
            (tmp / CALIBRATION_DIR).mkdir()
            _link_or_copy(calibration.path, tmp / CALIBRATION_DIR / calibration.path.name)
        doc = {
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "xray_spark_version": __version__, "backbone": bb.name, "input_size": bb.input_size,
            "weights_file": weights.name, "weights_fingerprint": weights_fingerprint,
            "weights_sha256": file_digest(weights, "sha256"), "labels": head.labels, "output": head.output,
            "classifier": head.classifier.kind,
            "shift_reference": SHIFT_FILE if shift_reference is not None else None,
            "calibration_file": calibration.path.name if calibration else None,
            "calibration_sha256": calibration.digest if calibration else None, **asdict(meta),
        }
        (tmp / META_FILE).write_text(json.dumps(doc, indent=1, default=str) + "\n")
        if target.exists():
            target.rmdir()  # empty (checked above)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def load_bundle(folder: str | os.PathLike, *, verify_weights: bool = True) -> Bundle:
    """Read and check a bundle. `verify_weights`: compare the weights file's sha256 with serving.json's."""
    root = Path(folder)
    try:
        doc = json.loads((root / META_FILE).read_text())
    except FileNotFoundError:
        raise BundleError(f"{root} is not a serving bundle (no {META_FILE})") from None
    except (OSError, ValueError) as exc:
        raise BundleError(f"{root}/{META_FILE} is unreadable: {exc}") from None
    if doc.get("format") != FORMAT or doc.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"{root}: format {doc.get('format')!r} version {doc.get('format_version')!r}; this "
                          f"xray-spark ({__version__}) reads {FORMAT!r} version {FORMAT_VERSION}")
    try:
        backbone = get_backbone(doc["backbone"]).name
        weights = root / WEIGHTS_DIR / Path(doc["weights_file"]).name
        if not weights.is_file():
            raise BundleError(f"{root}: weights file {weights.name} is missing")
        if verify_weights and file_digest(weights, "sha256") != doc["weights_sha256"]:
            raise BundleError(f"{root}: weights file {weights.name} does not match its sha256 in {META_FILE} "
                              "(damaged or replaced)")
        head = SparkFreeHead.load(root / HEAD_DIR)
        if head.labels != list(doc["labels"]):
            raise BundleError(f"{root}: labels {doc['labels']} in {META_FILE}, {head.labels} in the head")
        imp_file = root / IMPORTANCES_FILE
        importances = np.load(imp_file, allow_pickle=False) if imp_file.is_file() else None
        meta = BundleMeta.of({f.name: doc[f.name] for f in fields(BundleMeta) if f.name in doc})
        shift = _load_reference(root, doc.get("shift_reference"))
        calibration = _calibration(root, doc, verify_weights)
        return Bundle(root, backbone, weights, doc["weights_fingerprint"], list(doc["labels"]), head, meta,
                      importances, doc.get("created", ""), shift, calibration)
    except (HeadFormatError, ValueError, OSError) as exc:  # incl. a damaged importances.npy
        raise BundleError(f"{root}: {exc}") from None
    except KeyError as exc:
        raise BundleError(f"{root}: {META_FILE} has no {exc.args[0]!r}") from None


def bundle_from_pipeline(
    pipeline_model: Any, weights_path: str | os.PathLike | None, folder: str | os.PathLike,
    meta: BundleMeta | Mapping[str, Any] | None = None, calibration_path: str | os.PathLike | None = None,
) -> Path:
    """A bundle from a loaded Spark PipelineModel ([FileProperties, DeepImageFeaturizer, ShiftModel, head,
    IndexToString] as `train` logs it; the shift stages are optional). Train time only (uses Spark for the
    export). The ShiftModel's reference, found by class name, goes into the bundle as text.

    `weights_path`: the weights file the featurizer used (e.g. `resolve_weights(...).local_path`); None
    resolves the featurizer's `weights` Param here. The fingerprint comes from the Param as the feature
    cache computes it; for an `imagenet` Param the file must be the published one (its digest is checked).
    The bundle's engine and precision are the featurizer's own Params (what batch scoring runs); `serve
    --engine` can override them. Its int8 gate verdict is the featurizer's `int8Gate`; a model that passed
    gets a copy of its calibration sample: `calibration_path` (train's local file), else the featurizer's
    `calibration` Param resolved here (features/calibration.py).
    """
    stages = flatten_stages(pipeline_model)
    featurizer = next((s for s in stages if type(s).__name__ == FEATURIZER), None)
    if featurizer is None:
        names = [type(s).__name__ for s in stages]
        raise UserError(f"no {FEATURIZER} stage in the pipeline (stages: {names})")
    backbone = get_backbone(featurizer.getOrDefault("modelName")).name
    spec = featurizer.getOrDefault("weights")
    if weights_path is None:
        resolved = resolve_weights(backbone, spec)
        weights, fingerprint = resolved.local_path, resolved.fingerprint
    else:
        weights = Path(weights_path)
        fingerprint = _fingerprint_of(backbone, spec, weights)
    precision = (featurizer.getOrDefault("precision")
                 if featurizer.hasParam("precision") and featurizer.isSet("precision") else None)
    engine = featurizer.getOrDefault("engine") if featurizer.hasParam("engine") else "auto"
    gate = _param(featurizer, "int8Gate")
    merged = replace(BundleMeta.of(meta), engine=engine, precision=precision, int8_gate=gate)
    if calibration_path is None and gate_passed(gate) and _param(featurizer, "calibration"):
        calibration_path = resolve_calibration(_param(featurizer, "calibration"),
                                               _param(featurizer, "calibrationSha256")).path
    head = export_head(pipeline_model)
    shift = next((s for s in stages if type(s).__name__ == SHIFT_STAGE), None)
    return write_bundle(folder, head=head, backbone=backbone, weights_file=weights,
                        weights_fingerprint=fingerprint, meta=merged, importances=_importances(stages),
                        shift_reference=shift.getOrDefault("reference") if shift is not None else None,
                        calibration_file=calibration_path if gate_passed(gate) else None)


def _param(stage: Any, name: str) -> str | None:
    """A featurizer Param's value, None when unset or unknown (a pipeline saved before it existed)."""
    return stage.getOrDefault(name) if stage.hasParam(name) and stage.isDefined(name) else None


def _calibration(root: Path, doc: dict[str, Any], verify: bool) -> Path | None:
    """The bundle's int8 calibration sample, checked against serving.json's digest; None when it has none."""
    name = doc.get("calibration_file")
    if not name:
        return None
    path = root / CALIBRATION_DIR / Path(name).name
    if not path.is_file():
        raise BundleError(f"{root}: int8 calibration sample {path.name} is missing")
    if verify:
        try:
            load_calibration(path, doc.get("calibration_sha256"))
        except UserError as exc:
            raise BundleError(f"{root}: {exc}") from None
    return path


def _parse_reference(text: str, where: str) -> Reference:
    """A shift reference from its text form, or one line saying it is damaged."""
    try:
        return Reference.from_text(text.strip())
    except Exception as exc:  # base64, npz and JSON each raise their own kind
        raise BundleError(f"{where} is unreadable ({type(exc).__name__})") from None


def _load_reference(root: Path, name: str | None) -> Reference | None:
    """The bundle's shift reference, None when serving.json names none (a bundle from before the check)."""
    if not name:
        return None
    path = root / Path(name).name
    if not path.is_file():
        raise BundleError(f"{root}: shift reference {path.name} is missing")
    return _parse_reference(path.read_text(encoding="ascii"), f"{root}/{path.name}")


def _fingerprint_of(backbone: str, spec: str, weights: Path) -> str:
    """The fingerprint the feature cache uses for `spec`, checked against the file given for it."""
    if not weights.is_file():
        raise UserError(f"weights file not found: {weights}")
    kind = weights_kind(spec)
    if kind == "file":
        return f"file:{file_digest(weights, 'sha256')}"
    if kind == "imagenet":
        bb = get_backbone(backbone)
        if file_digest(weights, bb.hash_algorithm) != bb.weights_hash:
            raise UserError(f"{weights} is not the published ImageNet {bb.name} weights file "
                            f"({bb.hash_algorithm} differs from {bb.weights_hash})")
    return weights_fingerprint(backbone, spec)


def _importances(stages: list[Any]) -> np.ndarray | None:
    """featureImportances of the (first) tree classifier after the featurizer: one row, or one per class for
    a OneVsRest of trees. None for other heads (their heatmap weights come from the arrays themselves)."""
    for stage in stages:
        subs = getattr(stage, "models", None)
        if subs and type(stage).__name__ == "OneVsRestModel":
            rows = [s.featureImportances.toArray() for s in subs if hasattr(s, "featureImportances")]
            return np.vstack(rows) if len(rows) == len(subs) else None
        if hasattr(stage, "featureImportances"):  # DecisionTree, RandomForest, GBT classification models
            return np.atleast_2d(stage.featureImportances.toArray())
    return None


def _link_or_copy(src: Path, dest: Path) -> None:
    """A hard link where the filesystem allows (weights files are ~100 MB), else a copy."""
    try:
        os.link(src, dest)
    except OSError:
        shutil.copyfile(src, dest)
