"""The featurizer's int8 Params and what the driver does with them before a transform.

Why a table of its own: int8 needs three more facts on `DeepImageFeaturizer` (featurizer.py), all set by
`train` on the models whose int8 features passed its gate (evaluation/int8_gate.py), and persisted with the
stage so every scoring run and the serving bundle know them:
- `calibration`: the calibration sample int8 is quantised on (calibration.py): a local path or the MLflow
  artifact URI `train` carries it under;
- `calibrationSha256`: that sample's content digest (a pin: another sample is refused);
- `int8Gate`: the gate's verdict in one line, `passed: ...` or `refused: ...` (quantize.gate_passed).

Declared as a ParamSpec table (params.py), mixed into the featurizer only: sparkdl's DeepImagePredictor
shares the featurizer's machinery but has no gate, so it never runs int8 (its `_int8_*` hooks keep
`_NamedImageStage`'s defaults, which refuse precision 'int8').

Precision `int8` (set explicitly) needs `calibration` and is refused, with the gate's line, on a model whose
gate refused it. Engine `auto` with the precision left unset picks int8 only on a model that passed (and only
on executors whose CPU has native int8, engines.choose_engine).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from xray_spark.errors import UserError
from xray_spark.features.calibration import resolve_calibration
from xray_spark.features.params import DeclaredParams, ParamSpec
from xray_spark.features.quantize import gate_passed

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Int8Plan:
    """What the executors get: the shipped calibration file's name (None: int8 is not possible) and whether
    `auto` may pick int8."""

    ship_name: str | None = None
    int8_ok: bool = False


class _Int8Params(DeclaredParams):
    """The int8 Params (see the module docstring) and the featurizer's int8 hooks."""

    PARAMS = (
        ParamSpec("calibration", "int8 calibration sample: path or MLflow URI of the .npz train writes "
                  "(features/calibration.py); needed by precision 'int8'. Unset: no int8"),
        ParamSpec("calibrationSha256", "pin: content digest of the calibration sample; a sample with another "
                  "digest is refused"),
        ParamSpec("int8Gate", "train's int8 gate verdict for this model, one line ('passed: ...' / "
                  "'refused: ...'); engine 'auto' picks int8 only after 'passed', on CPUs with native int8"),
    )

    def int8Approved(self) -> bool:
        """The model's int8 features passed train's gate and it carries their calibration sample."""
        return gate_passed(self.getInt8Gate()) and bool(self.getCalibration())

    def _int8_key(self) -> tuple[str | None, ...]:
        """The int8 part of the UDF cache key."""
        return self.getCalibration(), self.getCalibrationSha256(), self.getInt8Gate()

    def _check_int8(self, requested: str | None) -> None:
        check_int8(self, requested)

    def _int8_plan(self, spark: SparkSession, requested: str | None, engine: str) -> Int8Plan:
        return int8_plan(self, spark, requested, engine)


def check_int8(stage: _Int8Params, requested: str | None) -> None:
    """Driver side, before any job: precision 'int8' needs a calibration sample and a gate that did not
    refuse it (one line each)."""
    if requested != "int8":
        return
    verdict = stage.getInt8Gate()
    if verdict and not gate_passed(verdict):
        raise UserError(f"precision 'int8' was refused for this model by train's int8 gate ({verdict}); "
                        "score it at fp32 or bf16 (precision unset lets engine 'auto' choose)")
    if not stage.getCalibration():
        raise UserError("precision 'int8' needs a calibration sample (Param calibration): train sets it on "
                        "models whose int8 features pass its gate")


def int8_plan(stage: _Int8Params, spark: SparkSession, requested: str | None, engine: str) -> Int8Plan:
    """Resolve and ship the calibration file when int8 may run: precision 'int8' asked for, or engine 'auto'
    with the precision unset on an approved model."""
    check_int8(stage, requested)
    approved = stage.int8Approved()
    if not (requested == "int8" or (engine == "auto" and requested is None and approved)):
        return Int8Plan()
    calibration = resolve_calibration(stage.getCalibration(), stage.getCalibrationSha256())
    sc = spark.sparkContext
    try:
        listed = {str(f).rsplit("/", 1)[-1] for f in sc.listFiles}
    except Exception:  # older Spark: no listFiles; addFile of the same path twice is harmless there
        listed = set()
    if calibration.path.name not in listed:
        sc.addFile(calibration.path.resolve().as_uri())
        log.info("shipping int8 calibration sample %s to executors", calibration.path)
    return Int8Plan(calibration.path.name, approved)
