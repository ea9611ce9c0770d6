"""Which model scores: resolve the URI before Spark starts, load it, split it around the featurizer.

Why resolve first: a typo in `models:/name@champion` must cost one MLflow lookup and one clear line
(exit 2), not a JVM start. Why pin the version: the alias can move while a run is in progress; every row
records the version that was actually loaded, and that version (not the alias) is the ledger key.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pyspark.ml import PipelineModel
from pyspark.ml.feature import IndexToString
from pyspark.sql import functions as F

from xray_spark import paths
from xray_spark.config import Config
from xray_spark.errors import TransientError, UserError, is_transient
from xray_spark.features.featurizer import DeepImageFeaturizer
from xray_spark.models.calibration_stage import TemperatureScalingModel
from xray_spark.models.shift import PROPS_STRUCT
from xray_spark.models.shift_stage import FLAG_COL, PROPS_COL, REASONS_COL, SHIFT_COL, ShiftModel
from xray_spark.spark_io import HadoopFS
from xray_spark.tasks import prob_suffix
from xray_spark.tracking import MODEL_ALIAS_URI, MODEL_VERSION_URI, configure_lookup

if TYPE_CHECKING:
    from pyspark.ml import Transformer
    from pyspark.sql import Column, DataFrame, SparkSession

log = logging.getLogger(__name__)

_LOGGED = re.compile(r"^models:/(m-[0-9a-fA-F]+)/?$")
_RUN = re.compile(r"^runs:/([^/]+)/(.+?)/?$")


@dataclass(frozen=True)
class ModelRef:
    """A resolved model: what to record in every output row, what to load, and how to key the ledger."""

    uri: str  # as the user gave it (normalised): recorded in `model_uri`
    load_uri: str  # pinned: models:/name/<version> for aliases, so an alias move mid-run changes nothing
    kind: str  # registry | logged | run | path
    name: str
    version: str
    mlflow_format: bool | None  # MLflow model dir (MLmodel) vs plain PipelineModel; None = check after Spark

    @property
    def keyed_by_uri(self) -> bool:
        """Paths and run artifacts have no registry identity: two folders both called `model` must not share
        a ledger, and a run's (renamable) name must not be part of it, so their key is the URI. Registry
        models are keyed by name + version (models:/m@champion and models:/m/3 are the same model)."""
        return self.kind in ("path", "run")

    def ledger_key(self) -> dict[str, str]:
        """Output columns and values that identify this model's rows (the ledger)."""
        if self.keyed_by_uri:
            return {"model_version": self.version, "model_uri": self.uri}
        return {"model_name": self.name, "model_version": self.version}

    def file_key(self) -> str:
        """Safe for file names and as stable as the ledger key: chunk files, the temp folder and the lock."""
        if not self.keyed_by_uri:
            return f"{_key_part(self.name)}-{_key_part(self.version)}"
        head = (f"run-{_key_part(self.version)}" if self.kind == "run"
                else f"{_key_part(self.name)}-{_key_part(self.version)}")
        return f"{head}-{hashlib.sha1(self.uri.encode()).hexdigest()[:8]}"


def _key_part(text: str) -> str:
    """A name or version inside a file key: `-` is replaced too (it separates the key's parts), outer `_`
    stripped, never empty. The chunk files already written are named this way: keep it."""
    return paths.safe_name(text, keep="._").strip("_") or "x"


# ------------------------------------------------------------------------------------- resolution (no Spark)


def resolve_model(model: str, cfg: Config) -> ModelRef:
    """Turn MODEL into a ModelRef, talking only to MLflow (never Spark). Unknown model -> UserError."""
    uri = model.strip()
    if not uri:
        raise UserError("--model is empty")
    if uri.startswith(("models:/", "runs:/")):
        from mlflow.exceptions import MlflowException  # lazy: a slow import that argument checks skip

        tracking = configure_lookup(cfg.tracking_uri)
        try:
            return _resolve_mlflow(uri)
        except MlflowException as exc:
            first = (str(exc.message) if hasattr(exc, "message") else str(exc)).strip().splitlines()
            if is_transient(exc):
                raise TransientError(f"MLflow at {tracking} is unreachable (model {uri}): "
                                     f"{first[0] if first else type(exc).__name__}") from None
            raise UserError(f"model {uri}: {first[0] if first else type(exc).__name__} "
                            f"(MLflow: {tracking})") from None
    if uri.startswith(("models:", "runs:")):
        raise UserError(f"model {uri}: expected models:/NAME@ALIAS, models:/NAME/VERSION or "
                        "runs:/RUN_ID/PATH")
    return _resolve_path(uri)


def _resolve_mlflow(uri: str) -> ModelRef:
    from mlflow import MlflowClient  # lazy: a slow import that argument checks skip

    client = MlflowClient()
    if m := _LOGGED.match(uri):
        logged = client.get_logged_model(m.group(1))
        return ModelRef(uri, uri, "logged", logged.name, logged.model_id, True)
    if m := MODEL_ALIAS_URI.match(uri):
        name, alias = m.groups()
        mv = client.get_model_version_by_alias(name, alias)
        return ModelRef(uri, f"models:/{name}/{mv.version}", "registry", name, str(mv.version), True)
    if m := MODEL_VERSION_URI.match(uri):
        name, ver = m.groups()
        if ver.isdigit():
            mv = client.get_model_version(name, ver)
        elif ver.lower() == "latest":
            versions = client.search_model_versions(f"name='{name}'")
            if not versions:
                raise UserError(f"model {uri}: registered model {name!r} has no versions")
            mv = max(versions, key=lambda v: int(v.version))
        else:  # a (deprecated) stage name such as Production
            found = client.get_latest_versions(name, stages=[ver])
            if not found:
                raise UserError(f"model {uri}: no version of {name!r} in stage {ver!r}")
            mv = found[0]
        return ModelRef(uri, f"models:/{name}/{mv.version}", "registry", name, str(mv.version), True)
    if m := _RUN.match(uri):
        run_id, artifact = m.groups()
        run = client.get_run(run_id)
        canonical = f"runs:/{run_id}/{artifact}"
        return ModelRef(canonical, canonical, "run", run.info.run_name or run_id, run_id, True)
    raise UserError(f"model {uri}: expected models:/NAME@ALIAS, models:/NAME/VERSION or runs:/RUN_ID/PATH")


def _resolve_path(uri: str) -> ModelRef:
    """A PipelineModel folder (metadata/) or an MLflow model folder (MLmodel); remote ones are checked
    later."""
    if not paths.is_local(uri):
        clean = uri.rstrip("/")
        return ModelRef(clean, clean, "path", paths.file_name(clean), "path", None)
    path = paths.local_path(uri).resolve()
    if not path.is_dir():
        raise UserError(f"model {uri}: no such model folder (and not a models:/ or runs:/ URI)")
    if (path / "MLmodel").is_file():
        mlflow_format = True
    elif (path / "metadata").is_dir():
        mlflow_format = False
    else:
        raise UserError(f"model {uri}: folder is neither a Spark PipelineModel (metadata/) nor an MLflow "
                        "model (MLmodel)")
    return ModelRef(str(path), str(path), "path", path.name, "path", mlflow_format)


# ------------------------------------------------------------------------------------------- loading (Spark)


def load_pipeline(spark: SparkSession, ref: ModelRef, scratch: Path | None = None) -> PipelineModel:
    """Load the PipelineModel; anything that goes wrong here means the model is unusable (UserError).

    `scratch`: a local folder MLflow may download into (default: a system temp folder).
    """
    mlflow_format = ref.mlflow_format
    if mlflow_format is None:
        fs = HadoopFS(spark)
        mlflow_format = fs.exists(paths.join(ref.load_uri, "MLmodel"))
        if not mlflow_format and not fs.exists(paths.join(ref.load_uri, "metadata")):
            raise UserError(f"model {ref.uri}: not a Spark PipelineModel (metadata/) nor an MLflow "
                            "model (MLmodel)")
    try:
        if mlflow_format:
            model = _mlflow_load(ref.load_uri, scratch)
        else:
            model = PipelineModel.load(ref.load_uri)
    except Exception as exc:  # unreadable artifacts, missing classes, version skew: all "unusable model"
        first = str(exc).strip().splitlines()
        if is_transient(exc):  # ... unless the store holding it could not be reached
            raise TransientError(f"cannot load model {ref.uri}: its store is unreachable: "
                                 f"{type(exc).__name__}: {first[0] if first else ''}") from None
        raise UserError(f"cannot load model {ref.uri}: {type(exc).__name__}: "
                        f"{first[0] if first else ''}") from None
    if not isinstance(model, PipelineModel):
        raise UserError(f"model {ref.uri}: expected a Spark PipelineModel, got {type(model).__name__}")
    return model


def _mlflow_load(uri: str, scratch: Path | None) -> PipelineModel:
    """mlflow.spark.load_model without its progress bar and INFO chatter (cron logs stay readable)."""
    import mlflow.spark  # lazy: a slow import that argument checks skip

    kwargs = {}
    if scratch is not None:
        scratch.mkdir(parents=True, exist_ok=True)
        kwargs["dst_path"] = str(scratch)
    chatty = logging.getLogger("mlflow.spark")
    level, bar = chatty.level, os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    chatty.setLevel(max(level, logging.WARNING))
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    try:
        return mlflow.spark.load_model(uri, **kwargs)
    finally:
        chatty.setLevel(level)
        if bar is None:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
        else:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = bar


@dataclass
class ScoringPipeline:
    """The loaded model split where bad input must be set aside: MLlib heads fail on null vectors."""

    featurize: PipelineModel  # stages up to and including the DeepImageFeaturizer
    head: PipelineModel  # the remaining stages (scaler, classifier, IndexToString)
    input_col: str
    features_col: str
    error_col: str
    labels: list[str]
    label_col: str  # IndexToString output
    probability_col: str | None  # None for heads without probabilities (LinearSVC, OneVsRest)
    shift: ShiftModel | None = None  # the model's shift check; None for models trained before it
    temperature: float | None = None  # the calibration stage's temperature; None: uncalibrated head

    def shift_columns(self, frame: DataFrame | None = None, *, nulls: bool = False) -> list[Column]:
        """The shift check's columns under their output names (shift_score, in_distribution, shift_reasons,
        file_props); typed nulls with `nulls` (rows without features), for a model without a shift check,
        or where `frame` lacks a column."""
        names = {SHIFT_COL: "double", FLAG_COL: "boolean", REASONS_COL: "array<string>",
                 PROPS_COL: PROPS_STRUCT}
        given = {} if self.shift is None or nulls else {
            SHIFT_COL: self.shift.getOutputCol(), FLAG_COL: self.shift.getFlagCol(),
            REASONS_COL: self.shift.getReasonsCol(), PROPS_COL: self.shift.getPropsCol()}
        cols = []
        for name, kind in names.items():
            src = given.get(name)
            present = src is not None and (frame is None or src in frame.columns)
            cols.append((F.col(src) if present else F.lit(None)).cast(kind).alias(name))
        return cols

    def prob_columns(self) -> list[str]:
        return [f"prob_{prob_suffix(label)}" for label in self.labels]

    def featurize_frame(self, df: DataFrame) -> DataFrame:
        return self.featurize.transform(df)

    def score_frame(self, featurized_ok: DataFrame) -> DataFrame:
        return self.head.transform(featurized_ok)


def _flatten(stages: list[Transformer]) -> list[Transformer]:
    out: list[Transformer] = []
    for stage in stages:
        out.extend(_flatten(stage.stages) if isinstance(stage, PipelineModel) else [stage])
    return out


def split_pipeline(model: PipelineModel, featurizer_cls: type, uri: str = "model") -> ScoringPipeline:
    """Find the featurizer (by class) and the IndexToString (for class names) in the flattened stages."""
    stages = _flatten(list(model.stages))
    idx = next((i for i, s in enumerate(stages) if isinstance(s, featurizer_cls)), None)
    if idx is None:
        raise UserError(f"model {uri}: no {featurizer_cls.__name__} stage "
                        f"(stages: {[type(s).__name__ for s in stages]})")
    feat = stages[idx]
    rest = stages[idx + 1:]
    decoders = [s for s in rest if isinstance(s, IndexToString)]
    if not decoders:
        raise UserError(f"model {uri}: no IndexToString stage after the featurizer, so class names "
                        "are unknown")
    decoder = decoders[-1]
    labels = list(decoder.getLabels())
    suffixes = [prob_suffix(label) for label in labels]
    if len(set(suffixes)) != len(suffixes):
        raise UserError(f"model {uri}: class names {labels} collide as column names {suffixes}")
    prob_col = None
    for stage in rest:
        if stage.hasParam("probabilityCol") and stage.isDefined("probabilityCol"):
            prob_col = stage.getOrDefault("probabilityCol")
    shift = next((s for s in rest if isinstance(s, ShiftModel)), None)
    calibration = next((s for s in rest if isinstance(s, TemperatureScalingModel)), None)
    return ScoringPipeline(
        featurize=PipelineModel(stages=stages[: idx + 1]),
        head=PipelineModel(stages=rest),
        input_col=feat.getOrDefault("inputCol"),
        features_col=feat.getOrDefault("outputCol"),
        error_col=feat.getOrDefault("errorCol"),
        labels=labels,
        label_col=decoder.getOrDefault("outputCol"),
        probability_col=prob_col,
        shift=shift,
        temperature=None if calibration is None else float(calibration.getTemperature()),
    )


def featurizer_class() -> type:
    return DeepImageFeaturizer
