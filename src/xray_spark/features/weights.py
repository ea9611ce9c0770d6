"""Resolve a backbone's weights on the driver, once, and ship the file to executors.

Why: an executor that downloads weights hammers the origin once per Python worker, fails on air-gapped
clusters, and can end up with a different file than the driver. Here the driver turns the `weights` string
into one verified local file; Spark ships it with `SparkContext.addFile`; executors read it with
`SparkFiles.get` and never touch the network.

`weights` strings:
- `imagenet` — Keras' notop file (see backbones.py), downloaded once into the cache dir, verified with the
  digest Keras publishes (MD5 for all six backbones, because that is what Keras publishes). A valid copy
  in Keras' own cache (`$KERAS_HOME/models` or `~/.keras/models`) is used as is.
- `none` or `none:seed=N` — seeded random init, built ON THE DRIVER with `keras.utils.set_random_seed(N)`
  and saved to a cached `.weights.h5`, so every executor loads bit-identical weights (random init on each
  executor would differ per worker). Note: `set_random_seed` also seeds Python's and NumPy's global RNGs.
- a path to a Keras weights file (`.h5`, `.hdf5`, `.weights.h5`, `.keras`): a local path (also Databricks'
  FUSE paths `/Volumes/...`, `/dbfs/...`), or a URI with a scheme (`dbfs:/`, `hdfs://`, `s3a://`,
  `abfss://`, `file:/`, ...) that is copied to a local temp file through the Hadoop FileSystem of the active
  Spark session (so any scheme the cluster's Hadoop config can read works), or an MLflow artifact URI
  (`runs:/`, `models:/`, `mlflow-artifacts:/`) downloaded through MLflow: how a registered model names the
  weights it carries (see pinning.py).

Cache dir: `$XRAY_SPARK_CACHE` if set (used as is), else `~/.cache/xray-spark/weights`.
Base URL for downloads: `$XRAY_SPARK_WEIGHTS_BASE_URL` (e.g. an internal mirror), else Keras' bucket.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import os
import re
import shutil
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from xray_spark import paths
from xray_spark.errors import UserError
from xray_spark.features.backbones import KERAS_WEIGHTS_BASE_URL, Backbone, get_backbone

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".weights.h5", ".h5", ".hdf5", ".keras")
MLFLOW_SCHEMES = ("runs:", "models:", "mlflow-artifacts:")
_NONE = re.compile(r"^(none|random)(?::seed=(-?\d+))?$", re.IGNORECASE)
_digest_memo: dict[tuple[str, str, int, int], str] = {}


@dataclass(frozen=True)
class ResolvedWeights:
    """A weights choice turned into one local file on the driver."""

    backbone: str
    spec: str  # the user's string
    kind: str  # imagenet | none | file
    local_path: Path  # verified file on the driver
    ship_name: str  # file name executors ask SparkFiles for; unique per content
    fingerprint: str  # stable id for cache keys and MLflow


def weights_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where weights files live on the driver; created on demand."""
    root = Path(cache_dir or os.environ.get("XRAY_SPARK_CACHE")
                or Path.home() / ".cache" / "xray-spark" / "weights")
    root = root.expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root


def weights_base_url() -> str:
    base = os.environ.get("XRAY_SPARK_WEIGHTS_BASE_URL") or KERAS_WEIGHTS_BASE_URL
    return base if base.endswith("/") else base + "/"


def imagenet_url(backbone: Backbone) -> str:
    return weights_base_url() + backbone.weights_url_path


def parse_none_seed(spec: str) -> int | None:
    """`none` -> 0, `none:seed=7` -> 7, anything else -> None."""
    m = _NONE.match(spec.strip())
    if not m:
        return None
    return int(m.group(2)) if m.group(2) is not None else 0


def weights_kind(spec: str) -> str:
    s = spec.strip()
    if s.lower() == "imagenet":
        return "imagenet"
    if parse_none_seed(s) is not None:
        return "none"
    return "file"


def file_digest(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    """Hex digest of a file, memoised by (path, size, mtime) so re-resolving a 100 MB file is free."""
    st = os.stat(path)
    key = (str(Path(path).resolve()), algorithm, st.st_size, st.st_mtime_ns)
    if key not in _digest_memo:
        h = hashlib.new(algorithm)
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _digest_memo[key] = h.hexdigest()
    return _digest_memo[key]


def keras_version() -> str:
    """The installed Keras distribution's version, without importing keras: that loads TensorFlow, seconds a
    driver whose seeded weights file is already cached would spend on nothing else."""
    return importlib.metadata.version("keras")


def none_fingerprint(seed: int) -> str:
    return f"none:seed={seed}:keras={keras_version()}"


def weights_fingerprint(
    backbone: str, weights: str, *, spark: SparkSession | None = None,
    cache_dir: str | os.PathLike | None = None
) -> str:
    """`imagenet:<published digest>`, `none:seed=N:keras=X.Y.Z` or `file:<sha256>` — without downloading.

    Only a file spec needs its bytes (to hash them); imagenet and none are known from the spec alone.
    """
    kind = weights_kind(weights)
    if kind == "imagenet":
        return f"imagenet:{get_backbone(backbone).weights_hash}"
    if kind == "none":
        return none_fingerprint(parse_none_seed(weights) or 0)
    return resolve_weights(backbone, weights, spark=spark, cache_dir=cache_dir).fingerprint


def resolve_weights(
    backbone: str, weights: str, *, spark: SparkSession | None = None,
    cache_dir: str | os.PathLike | None = None
) -> ResolvedWeights:
    """Driver only: turn `weights` into a verified local file (downloading or building it at most once)."""
    bb = get_backbone(backbone)
    spec = str(weights).strip()
    kind = weights_kind(spec)
    root = weights_cache_dir(cache_dir)
    if kind == "imagenet":
        path = _imagenet_file(bb, root)
        return ResolvedWeights(bb.name, spec, kind, path, path.name, f"imagenet:{bb.weights_hash}")
    if kind == "none":
        seed = parse_none_seed(spec) or 0
        path = _random_init_file(bb, seed, root)
        return ResolvedWeights(bb.name, spec, kind, path, path.name, none_fingerprint(seed))
    local = _local_copy(spec, root, spark)
    sha = file_digest(local, "sha256")
    staged = _stage(local, root / "files", f"{sha[:16]}-{local.name}")
    return ResolvedWeights(bb.name, spec, kind, staged, staged.name, f"file:{sha}")


def ship_weights(spark: SparkSession, resolved: ResolvedWeights) -> str:
    """Add the file to the SparkContext (a no-op if already added) and return the name executors ask for."""
    sc = spark.sparkContext
    uri = resolved.local_path.resolve().as_uri()
    listed = {Path(f).name for f in _listed_files(sc)}
    if resolved.ship_name not in listed:
        sc.addFile(uri)
        log.info("shipping weights %s to executors", resolved.local_path)
    return resolved.ship_name


def executor_weights_path(ship_name: str) -> str:
    """Executor side: the shipped file's local path. Never downloads; a missing file is a driver bug."""
    from pyspark import SparkFiles  # lazy: executors only; the serving process must not import pyspark

    path = SparkFiles.get(ship_name)
    if not os.path.isfile(path):
        raise RuntimeError(
            f"weights file {ship_name!r} was not shipped to this executor (looked at {path}); "
            "the driver must call xray_spark.features.weights.ship_weights before the job runs"
        )
    return path


# ---------------------------------------------------------------------------------------------- helpers


def _listed_files(sc) -> list[str]:
    try:
        return list(sc.listFiles)
    except Exception:  # older Spark: no listFiles; addFile of the same path twice is harmless there
        return []


def _imagenet_file(bb: Backbone, root: Path) -> Path:
    keras_home = Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras") / "models"
    target = root / bb.weights_file
    for candidate in (target, keras_home / bb.weights_file):
        if candidate.is_file():
            got = file_digest(candidate, bb.hash_algorithm)
            if got == bb.weights_hash:
                return candidate
            log.warning("%s has %s %s, expected %s: ignoring it", candidate, bb.hash_algorithm, got,
                        bb.weights_hash)
            if candidate == target:
                target.unlink()  # a corrupt file must not stay where the next run would find it
    _download(imagenet_url(bb), target, bb)
    return target


def _download(url: str, target: Path, bb: Backbone) -> None:
    """Stream to a temp file beside the target, verify, then rename: the cache never holds a bad file."""
    log.info("downloading %s weights from %s", bb.name, url)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    tmp = Path(tmp_name)
    h = hashlib.new(bb.hash_algorithm)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as resp:
            for chunk in iter(lambda: resp.read(1 << 20), b""):
                h.update(chunk)
                out.write(chunk)
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        tmp.unlink(missing_ok=True)
        raise UserError(
            f"ImageNet weights for {bb.name} are not cached and could not be downloaded: {bb.weights_file} "
            f"from {url} ({exc}). On a machine with internet download that file, then pass "
            f"--weights /path/to/{bb.weights_file} (weights='/path/...'), or place it in {target.parent}/, "
            "or set XRAY_SPARK_WEIGHTS_BASE_URL to a mirror."
        ) from None
    got = h.hexdigest()
    if got != bb.weights_hash:
        tmp.unlink(missing_ok=True)
        raise UserError(
            f"refusing {bb.weights_file} downloaded from {url}: {bb.hash_algorithm} {got} does not match the "
            f"published {bb.weights_hash} (corrupt or tampered file; nothing was cached)"
        )
    os.replace(tmp, target)
    log.info("cached %s (%s verified)", target, bb.hash_algorithm)


def _random_init_file(bb: Backbone, seed: int, root: Path) -> Path:
    """Build the seeded random model once on the driver and save its weights; reuse the file afterwards."""
    target = root / "none" / f"{bb.name.lower()}-seed{seed}-keras{keras_version()}.weights.h5"
    if target.is_file():
        return target
    import keras  # lazy: loads TensorFlow, needed only to build the file once

    target.parent.mkdir(parents=True, exist_ok=True)
    log.info("building seeded random-init %s (seed %d) on the driver", bb.name, seed)
    keras.utils.set_random_seed(seed)
    model = bb.build(weights=None)
    fd, tmp_name = tempfile.mkstemp(prefix=".tmp-", suffix=".weights.h5", dir=target.parent)
    os.close(fd)
    try:
        model.save_weights(tmp_name, overwrite=True)
        os.replace(tmp_name, target)
    finally:
        Path(tmp_name).unlink(missing_ok=True)
    return target


def _local_copy(spec: str, root: Path, spark: SparkSession | None) -> Path:
    """A user path as a local file; URIs with a scheme are copied through Spark's Hadoop FileSystem."""
    name = spec.rstrip("/").rsplit("/", 1)[-1]
    if not name.lower().endswith(WEIGHT_SUFFIXES):
        raise UserError(
            f"weights {spec!r} is neither 'imagenet', 'none' nor a Keras weights file "
            f"({', '.join(WEIGHT_SUFFIXES)})"
        )
    if paths.is_local(spec):  # plain paths, FUSE mounts (/Volumes, /dbfs) and file: URIs need no Spark
        path = paths.local_path(spec)
        if not path.is_file():
            raise UserError(f"weights file not found: {path}")
        return path
    if spec.startswith(MLFLOW_SCHEMES):
        return mlflow_copy(spec, name, root)
    if spark is None:
        from pyspark.sql import SparkSession  # lazy: URIs only; the serving process must not import pyspark

        spark = SparkSession.getActiveSession()
    if spark is None:
        raise UserError(f"weights {spec!r} is a URI: it needs an active Spark session to copy it (Hadoop FS)")
    dest_dir = root / "remote" / hashlib.sha256(spec.encode()).hexdigest()[:16]
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / name
    jvm = spark.sparkContext._jvm
    src = jvm.org.apache.hadoop.fs.Path(spec)
    try:
        fs = src.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
        if not fs.isFile(src):
            raise UserError(f"weights file not found: {spec}")
        tmp = dest_dir / f".{name}.part"
        fs.copyToLocalFile(False, src, jvm.org.apache.hadoop.fs.Path(tmp.resolve().as_uri()), True)
        os.replace(tmp, dest)
    except UserError:
        raise
    except Exception as exc:  # Py4J wraps Hadoop's IOException; keep one readable line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot copy weights {spec} through Hadoop FS: {first}") from None
    return dest


def mlflow_copy(spec: str, name: str, root: Path, what: str = "weights") -> Path:
    """An MLflow artifact as a local file under `root/mlflow/`. `runs:/` and `mlflow-artifacts:` URIs name
    immutable content (`train` logs weights under their tensor digest, calibration samples under their run)
    and are downloaded once per machine; a `models:/` URI can move (an alias), so it is downloaded every
    time. The caller's pin is checked after every resolve anyway. `what` names the file in errors."""
    dest = root / "mlflow" / hashlib.sha256(spec.encode()).hexdigest()[:16] / name
    if dest.is_file() and not spec.startswith("models:"):
        return dest
    import mlflow.artifacts  # lazy: only models that carry their weights (or int8 sample) need it

    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".download-") as tmp:
        try:
            got = Path(mlflow.artifacts.download_artifacts(artifact_uri=spec, dst_path=tmp))
        except Exception as exc:  # MlflowException, network errors: one readable line
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"cannot download {what} {spec} from MLflow: {first}") from None
        if not got.is_file():
            raise UserError(f"{what} {spec} is not a file in MLflow")
        os.replace(got, dest)
    log.info("downloaded %s %s", what, spec)
    return dest


def _stage(src: Path, folder: Path, name: str) -> Path:
    """Place `src` under a content-derived name, so two user files called the same never collide in
    addFile."""
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / name
    if dest.is_file() and dest.stat().st_size == src.stat().st_size:
        return dest
    tmp = folder / f".{name}.part"
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dest)
    return dest
