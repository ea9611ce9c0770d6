"""MLflow helpers: where runs go, what every run records, and the `champion` alias.

Why a module: the train command, the demo and the notebooks must agree on the tracking URI default
(a local sqlite store under the output folder), the experiment, and the registered model names.
"""

from __future__ import annotations

import logging
import math
import os
import platform
import re
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from xray_spark import paths
from xray_spark.errors import UserError

log = logging.getLogger(__name__)

EXPERIMENT = "xray-spark"
CHAMPION = "champion"


def default_tracking_uri(out_dir: str | Path) -> str:
    """sqlite under --out: needs a local folder (sqlite cannot live on dbfs:/ or s3a://)."""
    if not paths.is_local(str(out_dir)):
        raise UserError(f"--out {out_dir} is not on a local disk, so MLflow's default sqlite store cannot "
                        "live there: pass --tracking-uri (or set MLFLOW_TRACKING_URI)")
    return f"sqlite:///{paths.local_path(str(out_dir)).resolve() / 'mlflow.db'}"


# MLflow copies the URIs we set into MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI (for subprocesses): a value
# found there that we wrote ourselves (now or earlier in this process) is not the user's choice
_SET_HERE: set[str] = set()


def _users_env(var: str) -> str | None:
    value = os.environ.get(var)
    return value if value and value not in _SET_HERE else None


def tracking_uri_for(flag: str | None, config_uri: str | None, out_dir: str | Path | None) -> str | None:
    """THE tracking URI precedence, for every command: `--tracking-uri` > config `tracking_uri` >
    MLFLOW_TRACKING_URI > sqlite under `--out`. None (no `--out`, e.g. `score`): MLflow's own default.

    Why one function: commands that weighed these differently would split a team's work, e.g. training into
    a local file while the scheduled scoring, honouring an exported MLFLOW_TRACKING_URI, finds no champion.
    """
    uri = flag or config_uri or _users_env("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return default_tracking_uri(out_dir) if out_dir is not None else None


def point_at(uri: str) -> None:
    """Set the tracking URI and make the registry follow it, unless the user chose a registry.

    A registry the user chose (MLFLOW_REGISTRY_URI, e.g. Databricks' Unity Catalog) is kept, and so is a
    Databricks workspace's own. `mlflow.set_registry_uri` also writes MLFLOW_REGISTRY_URI into the
    environment, so a value we wrote ourselves (now or earlier) is not a user's choice: without this check a
    second `train` in the same process (a notebook, a test session) would register into the first run's
    store.
    """
    import mlflow  # lazy: a slow import that argument checks skip

    mlflow.set_tracking_uri(uri)
    _SET_HERE.add(uri)
    if uri.startswith("databricks") or _users_env("MLFLOW_REGISTRY_URI"):
        return
    mlflow.set_registry_uri(uri)


def configure(tracking_uri: str | None, out_dir: str | Path, experiment: str = EXPERIMENT) -> str:
    """Point MLflow at `tracking_uri` (a `--tracking-uri` flag; see `tracking_uri_for` for what else is
    consulted) and return the experiment id.

    Local stores keep artifacts next to the database, not in the current directory's ./mlruns.
    """
    import mlflow  # lazy: a slow import that argument checks skip

    uri = tracking_uri_for(tracking_uri, None, out_dir)
    assert uri is not None  # out_dir is given
    experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME", experiment)  # Databricks wants /Shared/... paths
    point_at(uri)
    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        location = None
        if uri.startswith("sqlite:") or uri.startswith("file:") or "://" not in uri:
            location = (Path(out_dir).resolve() / "mlartifacts").as_uri()
        exp_id = mlflow.create_experiment(experiment, artifact_location=location)
    else:
        exp_id = exp.experiment_id
    mlflow.set_experiment(experiment_id=exp_id)
    log.info("MLflow tracking URI %s, experiment %s (%s)", uri, experiment, exp_id)
    return exp_id


def library_versions() -> dict[str, str]:
    """Versions that change numbers: recorded as params on every run."""
    out = {"python": platform.python_version()}
    for pkg in ("pyspark", "tensorflow-cpu", "tensorflow", "keras", "mlflow", "numpy", "pillow", "pydicom"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            continue
    return {f"version.{k}": v for k, v in out.items()}


def flat_params(prefix: str, params: dict[str, Any]) -> dict[str, str]:
    return {f"{prefix}.{k}": str(v)[:500] for k, v in params.items()}


def finite_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """MLflow rejects NaN in some stores and non-numbers everywhere: keep finite floats only."""
    out = {}
    for k, v in metrics.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v)):
            out[k] = float(v)
    return out


def registered_name(prefix: str, task: str) -> str:
    return f"{prefix}-{task}"


# Tags on a champion's model version naming models logged beside it by the same training run:
BASELINE_TAG = "baseline_model_uri"  # its metadata-only baseline (Spark PipelineModel over the images table)
SERVING_TAG = "serving_model_uri"  # its Spark-free serving bundle (MLflow pyfunc)

MODEL_ALIAS_URI = re.compile(r"^models:/([^/@]+)@([^/@]+)/?$")  # models:/NAME@ALIAS
MODEL_VERSION_URI = re.compile(r"^models:/([^/@]+)/([^/@]+)/?$")  # models:/NAME/VERSION (or a stage)


def configure_lookup(config_uri: str | None) -> str:
    """Point MLflow at the store to look models up in: config `tracking_uri` (the CLI puts `--tracking-uri`
    there), else MLFLOW_TRACKING_URI, else MLflow's default; returns the URI.

    A sqlite or file store that does not exist is an error: looking a model up must not silently create
    an empty database in the current directory.
    """
    import mlflow  # lazy: a slow import that argument checks skip

    chosen = tracking_uri_for(None, config_uri, None)
    if chosen:
        point_at(chosen)
    uri = mlflow.get_tracking_uri()
    store = None
    # tracking URIs are RFC URIs (MLflow percent-encodes them), not Hadoop-form names: decode like MLflow does
    if uri.startswith("sqlite:///"):
        store = Path(unquote(uri[len("sqlite:///"):]))  # SQLAlchemy decodes the database path
    elif paths.scheme(uri) == "file":
        store = paths.from_file_uri(uri)
    if store is not None and not store.exists():
        raise UserError(
            f"MLflow tracking store {uri} does not exist: set MLFLOW_TRACKING_URI or `tracking_uri` in "
            "the config"
        )
    return uri


def link_model(name: str, version: str, tag: str, uri: str) -> None:
    """Record on model version `name`/`version` where a model logged beside it lives (`tag`: BASELINE_TAG or
    SERVING_TAG)."""
    from mlflow import MlflowClient  # lazy: a slow import that argument checks skip

    MlflowClient().set_model_version_tag(name, version, tag, uri)


def linked_model(name: str, version: str, tag: str) -> str | None:
    """The URI recorded by `link_model`, or None (older models, --no-baseline)."""
    from mlflow import MlflowClient  # lazy: a slow import that argument checks skip

    return MlflowClient().get_model_version(name, version).tags.get(tag)


def register_model(model_uri: str, name: str, description: str = "") -> str:
    """Register `model_uri` as a new version of `name` (no alias moves); returns the version."""
    import mlflow  # lazy: a slow import that argument checks skip
    from mlflow import MlflowClient  # lazy: a slow import that argument checks skip

    mv = mlflow.register_model(model_uri, name)
    if description:
        MlflowClient().update_model_version(name, mv.version, description=description[:4000])
    log.info("registered %s version %s", name, mv.version)
    return str(mv.version)


def register_champion(model_uri: str, name: str, description: str = "") -> str:
    """Register `model_uri` under `name` and point the `champion` alias at the new version."""
    from mlflow import MlflowClient  # lazy: a slow import that argument checks skip

    version = register_model(model_uri, name, description)
    MlflowClient().set_registered_model_alias(name, CHAMPION, version)
    log.info("%s version %s is now @%s", name, version, CHAMPION)
    return version


def spark_model_signature() -> Any:
    """What every logged image PipelineModel takes and gives: file bytes in, a class index out."""
    from mlflow.models import ModelSignature  # lazy: a slow import that argument checks skip
    from mlflow.types import ColSpec, Schema  # lazy: a slow import that argument checks skip

    return ModelSignature(
        inputs=Schema([ColSpec("binary", "content")]), outputs=Schema([ColSpec("double", "prediction")])
    )


def model_pip_requirements() -> list[str]:
    """Pinned requirements of a logged model (given, so MLflow does not load the model to infer them)."""
    return [f"xray-spark=={version('xray-spark')}", f"pyspark=={version('pyspark')}",
            f"keras=={version('keras')}"]
