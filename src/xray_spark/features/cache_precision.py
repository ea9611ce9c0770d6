"""The feature cache's precision: one folder per precision, every row labelled with what made it, and never a
mix of precisions in one result.

Why: fp32, bf16 and int8 features of one image differ (bf16 keeps ~3 significant digits, int8 is quantised),
so a head trained on one precision and measured on another is not the model the numbers describe. Before
precisions were recorded the cache key ignored the engine, and a run on a bf16 CPU could append bf16 rows to
fp32 ones. Now:
- the precision of a run is decided once, on the driver (`features_precision`: the user's, else what engine
  'auto' picks on the driver's CPU), and passed explicitly to every executor;
- the cache folder is `<Backbone>/<fingerprint>/<precision key>/f32/` with precision key `fp32`, `bf16` or
  `int8-<calibration digest, 16 hex>` (int8 features depend on the calibration sample too);
- every row stores `engine`, the label of what really made it (`openvino:bf16`, `keras:fp32`,
  `openvino:int8`); rows a run computed at another precision than asked (an executor without native bf16
  runs the bf16 hint as fp32; one where int8 cannot be made falls back) are refused before they reach the
  cache, with one line saying how many and what ran (`check_precisions`).

Caches written before (`<Backbone>/<fingerprint>/f32/`, rows without an engine): their precision is unknown
(fp32 or bf16, possibly both), so they are not read. A run that finds one says so once, featurizes into the
new folder, and names the old folder so its space can be reclaimed (`warn_legacy`).
"""

from __future__ import annotations

import logging

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from xray_spark.errors import UserError
from xray_spark.features.calibration import Calibration
from xray_spark.features.engines import PRECISIONS, resolve_engine
from xray_spark.spark_io import HadoopFS

log = logging.getLogger(__name__)

_WARNED: set[str] = set()


def features_precision(precision: str | None) -> str:
    """The precision of a run's features, decided once on the driver: the one given, else what engine 'auto'
    picks on this CPU without int8 (bf16 with native bf16, else fp32; fp32 where Keras would run)."""
    if precision is None:
        return resolve_engine("auto", None).precision
    if precision not in PRECISIONS:
        raise UserError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    return precision


def precision_key(precision: str, calibration: Calibration | None = None) -> str:
    """The cache folder's precision segment: fp32 | bf16 | int8-<calibration digest[:16]>."""
    if precision != "int8":
        return precision
    if calibration is None:
        raise UserError("int8 features need a calibration sample (features/calibration.py)")
    return f"int8-{calibration.digest[:16]}"


def featurizer_params(precision: str, calibration: Calibration | None = None) -> dict[str, str]:
    """DeepImageFeaturizer Params that make exactly `precision` (engine 'auto' with the precision set:
    OpenVINO where it can run, Keras fp32 where a GPU is seen or openvino is missing)."""
    params = {"engine": "auto", "precision": precision, "engineCol": "engine"}
    if precision == "int8":
        assert calibration is not None  # precision_key refused it before
        params.update(calibration=str(calibration.path), calibrationSha256=calibration.digest)
    return params


def precision_of(engine: Column) -> Column:
    """`openvino:bf16` -> `bf16` (the engine label's precision)."""
    return F.split(engine, ":").getItem(1)


def check_precisions(rows: DataFrame, precision: str, where: str) -> None:
    """Refuse rows (featurized just now, not yet in the cache) made at another precision than `precision`."""
    other = (rows.where(F.col("engine").isNotNull() & (precision_of(F.col("engine")) != precision))
             .groupBy("engine").count().collect())
    if other:
        ran = ", ".join(f"{r['count']} as {r['engine']}" for r in sorted(other, key=lambda r: r["engine"]))
        raise UserError(f"{precision} features were asked for, but executors computed {ran} (their CPU or "
                        f"libraries differ from the driver's): nothing was added to {where}; set the "
                        "precision explicitly to one every executor runs (fp32 runs everywhere)")


def warn_legacy(fs: HadoopFS, legacy: str, current: str) -> None:
    """Once per folder and process: a cache from before precisions were recorded is not read."""
    if legacy in _WARNED or not fs.list_parts(legacy):
        return
    _WARNED.add(legacy)
    log.warning("feature cache %s was written before features recorded their precision (fp32 and bf16 rows "
                "may be mixed in it): it is not read; its images are featurized again into %s. Delete it to "
                "reclaim the space", legacy, current)
