"""The serving bundle in MLflow: logged beside each champion's Spark model at train time, found again by
`xray-spark serve --model models:/...` without Spark.

Why beside, not instead: batch scoring loads the Spark PipelineModel (decode -> featurize -> head), serving
loads the bundle (the same weights file + the head as numpy arrays). `train` logs the bundle as an MLflow
pyfunc in the champion's own run, registers it as `<name>-serving` with the same `champion` alias (so `mlflow
models serve` can serve it) and tags the champion's Spark model version with its URI (tracking.SERVING_TAG).

The pyfunc's code is serving/pyfunc_model.py, named here as a file (MLflow logs "models from code" by path and
runs the file when the model is loaded), never imported: the serving runtime sits floors above this module.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pkgutil
import shutil
import tempfile
from importlib.metadata import version
from pathlib import Path
from typing import Any

from xray_spark import paths
from xray_spark.errors import UserError
from xray_spark.models.serving_bundle import META_FILE, bundle_from_pipeline
from xray_spark.tracking import (
    MODEL_ALIAS_URI,
    MODEL_VERSION_URI,
    SERVING_TAG,
    configure_lookup,
    linked_model,
)

log = logging.getLogger(__name__)

ARTIFACT = "bundle"  # the pyfunc's artifact key, and its folder under <model>/artifacts/
ENTRY_RESOURCE = "serving/pyfunc_model.py"  # the pyfunc's code, relative to the xray_spark package
ENTRY = Path(__file__).parents[1].joinpath(*ENTRY_RESOURCE.split("/"))


def serving_name(name: str) -> str:
    """The registered name of a Spark model's serving twin."""
    return f"{name}-serving"


def log_serving_model(pipeline_model: Any, weights_path: str | os.PathLike, meta: dict[str, Any],
                      calibration: str | os.PathLike | None = None) -> str:
    """Export `pipeline_model`'s head, write the bundle and log it as a pyfunc named `serving` in the active
    MLflow run; returns the logged model's URI. `calibration`: the local int8 calibration sample of a model
    that passed train's int8 gate (the bundle holds a copy)."""
    import mlflow.pyfunc  # lazy: a slow import that argument checks skip
    from mlflow.models import ModelSignature  # lazy: as above
    from mlflow.types import ColSpec, Schema  # lazy: as above

    with tempfile.TemporaryDirectory(prefix="xray-serving-") as tmp:
        folder = bundle_from_pipeline(pipeline_model, weights_path, Path(tmp) / ARTIFACT, meta, calibration)
        info = mlflow.pyfunc.log_model(
            name="serving", python_model=str(_entry_file(Path(tmp))), artifacts={ARTIFACT: str(folder)},
            signature=ModelSignature(inputs=Schema([ColSpec("binary", "content")])),
            pip_requirements=[f"xray-spark=={version('xray-spark')}", f"keras=={version('keras')}",
                              f"mlflow=={version('mlflow')}"],
        )
    return info.model_uri


def _entry_file(tmp: Path) -> Path:
    """pyfunc_model.py as a real file: MLflow logs models-from-code by path, and on a cluster driver this
    package may be imported from a zip (`--py-files`), where ENTRY is no file at all."""
    if ENTRY.is_file():
        return ENTRY
    source = pkgutil.get_data("xray_spark", ENTRY_RESOURCE)
    if source is None:
        raise UserError(f"cannot read {ENTRY.name} from the installed xray_spark package")
    path = tmp / ENTRY.name
    path.write_bytes(source)
    return path


def bundle_for_model(model: str, config_uri: str | None, cache_dir: str | os.PathLike | None = None) -> Path:
    """A local bundle folder for `--model`: a bundle folder itself, or a registered model (models:/NAME@ALIAS,
    models:/NAME/VERSION) — a Spark champion (through its SERVING_TAG) or its `-serving` twin — downloaded
    once into `cache_dir` (default: per-user cache, see `_cache_root`), keyed by store, name and version."""
    if paths.is_local(model) and (paths.local_path(model) / META_FILE).is_file():
        return paths.local_path(model)
    alias, numbered = MODEL_ALIAS_URI.match(model), MODEL_VERSION_URI.match(model)
    if not (alias or numbered):
        raise UserError(f"--model {model}: expected a serving bundle folder (with {META_FILE}), "
                        "models:/NAME@ALIAS or models:/NAME/VERSION")
    from mlflow import MlflowClient  # lazy: a slow import that argument checks skip
    from mlflow.artifacts import download_artifacts  # lazy: as above
    from mlflow.exceptions import MlflowException  # lazy: as above

    tracking = configure_lookup(config_uri)
    client = MlflowClient()
    try:
        if alias:
            name, alias_name = alias.groups()
            mv = client.get_model_version_by_alias(name, alias_name)
        else:
            name, number = numbered.groups()
            mv = client.get_model_version(name, number)
        source = linked_model(name, str(mv.version), SERVING_TAG)
        if source is None and name.endswith("-serving"):
            source = f"models:/{name}/{mv.version}"
        if source is None:
            raise UserError(f"--model {model}: version {mv.version} of {name} has no serving bundle (trained "
                            "by an older xray-spark?); retrain, or pass --bundle DIR")
        # keyed by store and source too: two stores (dev, prod) can both have "xray-spark-binary" version 1
        key = hashlib.sha256(f"{tracking}\n{source}".encode()).hexdigest()[:16]
        target = _cache_root(cache_dir) / f"{paths.safe_name(name)}-{mv.version}-{key}"
        bundle = target / "artifacts" / ARTIFACT
        if not (bundle / META_FILE).is_file():
            _download(download_artifacts, source, target)
    except MlflowException as exc:
        first = str(getattr(exc, "message", exc)).strip().splitlines()
        raise UserError(f"--model {model}: {first[0] if first else type(exc).__name__} (MLflow: {tracking})"
                        ) from None
    if not (bundle / META_FILE).is_file():
        raise UserError(f"--model {model}: {source} holds no serving bundle")
    log.info("serving bundle of %s version %s from %s", name, mv.version, source)
    return bundle


def _cache_root(cache_dir: str | os.PathLike | None) -> Path:
    """Per user: `cache_dir`, else $XRAY_SPARK_CACHE/serving, else ~/.cache/xray-spark/serving."""
    if cache_dir:
        return Path(cache_dir)
    env = os.environ.get("XRAY_SPARK_CACHE")
    return Path(env) / "serving" if env else Path.home() / ".cache" / "xray-spark" / "serving"


def _download(download_artifacts: Any, source: str, target: Path) -> None:
    """Download into a temp folder beside `target`, then rename: a half-finished download is never reused."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        download_artifacts(artifact_uri=source, dst_path=str(tmp))
        shutil.rmtree(target, ignore_errors=True)  # an earlier, incomplete copy
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
