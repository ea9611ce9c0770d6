"""The int8 calibration sample as one small file: decoded training images and their content hashes.

Why a file: NNCF's post-training quantisation (quantize.py) needs the same few hundred preprocessed images
wherever an int8 model is made — on every executor machine, on a serving machine — and the same inputs must
give the same int8 model. So `train` draws the sample once (calibrate.py: training split only, decoded on the
executors by the featurizer's own decode path), and this module writes it: the single luminance channel of
each image at the backbone's input size (uint8, the featurizer replicates it to RGB itself), bounded at
n x S x S bytes (15 MB for 300 ResNet50 images, 27 MB for InceptionV3), plus each image's sha256. The driver
ships that file as it ships the weights (SparkContext.addFile); `train` carries it in MLflow beside the
weights, and the serving bundle holds a copy. The int8 weights themselves are never shipped.

Identity: `digest` = sha256 over the format, the input size, every image's sha256 and the pixel bytes, in the
sample's order (sorted by sha256). It names the file, keys the int8 IR and the feature cache's int8 folder,
and pins the featurizer (`calibrationSha256`): a file whose content does not match is refused. It hashes the
content, not the `.npz` bytes, so a copy made by another tool still matches.

No Spark here (serving and executors read these files); calibrate.py draws the sample with Spark.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xray_spark import paths
from xray_spark.errors import UserError
from xray_spark.features.backbones import get_backbone
from xray_spark.features.weights import MLFLOW_SCHEMES, mlflow_copy, weights_cache_dir

log = logging.getLogger(__name__)

FORMAT = "xray-spark/int8-calibration/1"
SUFFIX = ".npz"


@dataclass(frozen=True)
class Calibration:
    """A calibration sample on this machine: its file, content digest and what it holds."""

    path: Path
    digest: str
    backbone: str
    size: int  # the backbone's input side: pixels are (n, size, size)
    hashes: tuple[str, ...]  # content sha256 of each image, in the file's order (sorted)

    @property
    def n(self) -> int:
        return len(self.hashes)

    def describe(self) -> dict[str, object]:
        """What MLflow and the int8 IR folder record (calibration.json)."""
        return {"format": FORMAT, "digest": self.digest, "backbone": self.backbone, "size": self.size,
                "images": self.n, "sha256": list(self.hashes)}


def calibration_digest(pixels: np.ndarray, hashes: list[str] | tuple[str, ...]) -> str:
    h = hashlib.sha256(f"{FORMAT};{pixels.shape};".encode())
    for sha in hashes:
        h.update(sha.encode() + b";")
    h.update(np.ascontiguousarray(pixels, dtype=np.uint8).tobytes())
    return h.hexdigest()


def file_name(backbone: str, digest: str) -> str:
    return f"calibration-{get_backbone(backbone).name}-{digest[:16]}{SUFFIX}"


def write_calibration(pixels: np.ndarray, hashes: list[str], backbone: str,
                      folder: str | os.PathLike | None = None) -> Calibration:
    """Write a sample (sorted by sha256) into `folder` (default: `<weights cache>/calibration`); the file is
    named by its digest, written to a temp file and renamed, so a reader never sees half of it."""
    bb = get_backbone(backbone)
    pixels = np.asarray(pixels, dtype=np.uint8)
    if pixels.ndim != 3 or pixels.shape[1:] != (bb.input_size, bb.input_size) or len(pixels) != len(hashes):
        raise ValueError(f"calibration pixels must be (n, {bb.input_size}, {bb.input_size}) with one sha256 "
                         f"each; got {pixels.shape} and {len(hashes)} hashes")
    if not len(hashes):
        raise UserError(f"no images to calibrate {bb.name} with (the training split has no decodable image)")
    order = np.argsort(np.asarray(hashes))
    pixels, hashes = pixels[order], [hashes[i] for i in order]
    digest = calibration_digest(pixels, hashes)
    root = Path(folder) if folder else weights_cache_dir() / "calibration"
    root.mkdir(parents=True, exist_ok=True)
    target = root / file_name(bb.name, digest)
    if not target.is_file():
        fd, tmp = tempfile.mkstemp(prefix=".calibration-", suffix=SUFFIX, dir=root)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, pixels=pixels, sha256=np.asarray(hashes), backbone=np.asarray(bb.name),
                         format=np.asarray(FORMAT))
            os.replace(tmp, target)
        finally:
            Path(tmp).unlink(missing_ok=True)
    log.info("calibration sample for %s: %d training images, digest %s (%s)", bb.name, len(hashes),
             digest[:16], target)
    return Calibration(target, digest, bb.name, bb.input_size, tuple(hashes))


def load_calibration(path: str | os.PathLike, expected: str | None = None) -> tuple[Calibration, np.ndarray]:
    """(the sample, its pixels) from a file; `expected` (a pinned digest) must match, else one clear line."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            if str(data["format"]) != FORMAT:
                raise UserError(f"{path} is not an xray-spark calibration sample ({data['format']})")
            pixels, hashes, backbone = data["pixels"], [str(s) for s in data["sha256"]], str(data["backbone"])
    except (OSError, KeyError, ValueError) as exc:
        raise UserError(f"calibration sample {path} is unreadable: {type(exc).__name__}: {exc}") from None
    digest = calibration_digest(pixels, hashes)
    if expected and digest != expected:
        raise UserError(f"refusing calibration sample {path}: its content has digest {digest[:16]}..., the "
                        f"model was approved with {expected[:16]}... (a replaced or damaged file)")
    return Calibration(path, digest, get_backbone(backbone).name, int(pixels.shape[1]), tuple(hashes)), pixels


def resolve_calibration(spec: str, expected: str | None = None,
                        cache_dir: str | os.PathLike | None = None) -> Calibration:
    """Driver or serving machine: a calibration spec (a local path, or the MLflow artifact URI `train`
    carries) as a checked local file. An MLflow copy is downloaded once per machine (runs:/ URIs are
    immutable; its digest is checked on every use anyway)."""
    spec = str(spec).strip()
    if spec.startswith(MLFLOW_SCHEMES):
        local = _mlflow_copy(spec, cache_dir)
    elif paths.is_local(spec):
        local = paths.local_path(spec)
        if not local.is_file():
            raise UserError(f"calibration sample not found: {local}")
    else:
        raise UserError(f"calibration {spec!r}: expected a local path or an MLflow artifact URI (runs:/...)")
    return load_calibration(local, expected)[0]


def _mlflow_copy(spec: str, cache_dir: str | os.PathLike | None) -> Path:
    name = spec.rstrip("/").rsplit("/", 1)[-1]
    return mlflow_copy(spec, name, weights_cache_dir(cache_dir) / "calibration", what="calibration sample")


def executor_file(ship_name: str) -> str:
    """Executor side: the shipped calibration file's local path (SparkContext.addFile on the driver)."""
    from pyspark import SparkFiles  # lazy: executors only; the serving process must not import pyspark

    path = SparkFiles.get(ship_name)
    if not os.path.isfile(path):
        raise RuntimeError(f"calibration sample {ship_name!r} was not shipped to this executor ({path})")
    return path
