"""The shift check as Spark ML stages that live in the saved PipelineModel (models/shift.py has the math).

`FileProperties` (before the featurizer, while the image bytes are still there) reads each file's header;
`ShiftDetector` fits the training images' reference with Spark aggregates (a covariance of the
unit-normalised features, category counts, quantiles) and `ShiftModel` adds `shift_score` and
`in_distribution` on executors. Only aggregates reach the driver: a d x d covariance, counts per
category and a few quantiles, never a row per image. Both models persist as simple Params
(ml_io.ParamsWritable), so `PipelineModel.save`, `mlflow.spark.log_model` and scoring keep them.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
from pyspark import keyword_only
from pyspark.ml import Estimator, Model, Transformer
from pyspark.ml.functions import vector_to_array
from pyspark.ml.linalg import VectorUDT
from pyspark.ml.param import TypeConverters
from pyspark.ml.param.shared import HasFeaturesCol, HasInputCol, HasOutputCol
from pyspark.ml.util import DefaultParamsReadable
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from xray_spark.features.params import DeclaredParams, ParamSpec
from xray_spark.ml_io import ParamsWritable
from xray_spark.models.shift import (
    CATEGORICAL,
    DRIFT_BINS,
    DRIFT_COMPONENTS,
    NUMERIC,
    PROPS_DDL,
    SIGNALS,
    Reference,
    category,
    file_props,
    principal,
    scale_of,
    spread_of,
    unit_rows,
)

log = logging.getLogger(__name__)

SHIFT_COL, FLAG_COL, REASONS_COL, PROPS_COL = "shift_score", "in_distribution", "shift_reasons", "file_props"
_QUANTILE_ERROR = 0.001
_IMAGES_PER_COMPONENT = 20


class _FilePropertiesParams(DeclaredParams, HasInputCol, HasOutputCol):
    DEFAULTS = {"inputCol": "content", "outputCol": PROPS_COL}


class FileProperties(Transformer, _FilePropertiesParams, DefaultParamsReadable, ParamsWritable):
    """Image bytes -> a struct of what the file declares (format, mode, bit depth, short and long side,
    size), read from the header only (data/decode.probe_info): the inputs of the shift check's file
    signals. Placed before the featurizer, so scoring has them after the bytes are dropped."""

    @keyword_only
    def __init__(self, **params: Any) -> None:
        """inputCol (image bytes, default content) and outputCol (default file_props) by keyword."""
        super().__init__()
        self._set_params(self._input_kwargs)

    def _transform(self, dataset: DataFrame) -> DataFrame:
        @F.pandas_udf(PROPS_DDL)  # type: ignore[call-overload]
        def props(content: pd.Series) -> pd.DataFrame:
            return pd.DataFrame([file_props(None if c is None else bytes(c)) for c in content],
                                columns=[f.split()[0] for f in PROPS_DDL.split(", ")])

        return dataset.withColumn(self.getOutputCol(), props(F.col(self.getInputCol())))


class _ShiftParams(DeclaredParams, HasFeaturesCol, HasOutputCol):
    """The columns the shift check reads and writes, shared by ShiftDetector and ShiftModel."""

    PARAMS = (
        ParamSpec("propsCol", "struct column of file properties (FileProperties' output)", default=PROPS_COL),
        ParamSpec("flagCol", "boolean column: the image resembles the training images (shift score at most "
                  "the threshold)", default=FLAG_COL),
        ParamSpec("reasonsCol", "array<string> column: why an image is unlike the training images (empty "
                  "when it is not)", default=REASONS_COL),
    )
    DEFAULTS = {"featuresCol": "features", "outputCol": SHIFT_COL}


class ShiftModel(Model, _ShiftParams, DefaultParamsReadable, ParamsWritable):
    """Adds `shift_score` (double; larger = less like the training images) and `in_distribution`."""

    PARAMS = (ParamSpec("reference", "the fitted training reference (models/shift.py Reference.to_text)"),)

    @keyword_only
    def __init__(self, **params: Any) -> None:
        """Any of the Params by keyword; `reference` is what ShiftDetector fitted."""
        super().__init__()
        self._set_params(self._input_kwargs)

    def getReference(self) -> Reference:
        """The fitted reference, parsed (the Param holds its text)."""
        return Reference.from_text(self.getOrDefault(self.reference))

    def with_internal_scores(self, test: DataFrame) -> ShiftModel:
        """Keep the internal test split's scores in the reference (a float per test image, no identity):
        `evaluate` compares an external folder's scores with them (AUROC) without the training data."""
        ref = self.getReference()
        rows = self.transform(test).select(self.getOutputCol()).collect()
        ref.internal_scores = np.array([r[0] for r in rows if r[0] is not None], dtype=np.float64)
        return self._set(reference=ref.to_text())

    def component_counts(self, dataset: DataFrame) -> list[dict[str, int]]:
        """How many of `dataset`'s images (rows with features) fall in each drift bin of each top component:
        rows of (component, bin, n), summed per partition on executors (a small aggregate, models/drift.py
        Tally.add_components reads it). Empty for a reference without drift bins."""
        ref = self.getReference()
        if not len(ref.component_edges):
            return []
        x = _as_array(dataset, self.getFeaturesCol())
        rows = dataset.select(x.alias("x")).where("x IS NOT NULL")
        return [r.asDict() for r in _bin_counts(rows, ref).groupBy("component", "bin")
                .agg(F.sum("n").cast("long").alias("n")).collect()]

    def _transform(self, dataset: DataFrame) -> DataFrame:
        scored = _with_scores(dataset, self.getReference(), self.getFeaturesCol(), self.getPropsCol(),
                              "__shift")
        return (scored.withColumn(self.getOutputCol(), F.col("__shift.score"))
                .withColumn(self.getFlagCol(), F.col("__shift.in_distribution"))
                .withColumn(self.getReasonsCol(), F.col("__shift.reasons")).drop("__shift"))


class ShiftDetector(Estimator, _ShiftParams, DefaultParamsReadable, ParamsWritable):
    """Fits a ShiftModel on the training images: features (any vector column) and file properties."""

    PARAMS = (
        ParamSpec("components", "principal components of the features kept for the Mahalanobis signal",
                  TypeConverters.toInt, 16),
        ParamSpec("quantile", "training quantile that sets each signal's unit and the in-distribution "
                  "threshold", TypeConverters.toFloat, 0.99),
    )

    @keyword_only
    def __init__(self, **params: Any) -> None:
        """Any of the Params by keyword (the config's `shift` section sets components and quantile)."""
        super().__init__()
        self._set_params(self._input_kwargs)

    def _fit(self, dataset: DataFrame) -> ShiftModel:
        rows = dataset.select(_as_array(dataset, self.getFeaturesCol()).alias("x"),
                              F.col(self.getPropsCol()).alias("p")).where("x IS NOT NULL").cache()
        try:
            ref = self._statistics(rows)
            ref.scales = self._scales(rows, ref)
            ref.threshold = self._threshold(rows, ref)
            ref.component_edges, ref.component_shares = _drift_bins(rows, ref)
        finally:
            rows.unpersist()
        log.info("shift reference: %d training images, %d components, threshold %.2f", ref.n_train,
                 len(ref.variances), ref.threshold)
        return self._copyValues(ShiftModel(reference=ref.to_text()))

    def _statistics(self, rows: DataFrame) -> Reference:
        """A few small jobs: the feature moments (one reduce of per-partition X'X), the category counts of
        each property, the medians and the MADs of the log sizes."""
        n, total, outer = rows.select("x").rdd.mapPartitions(_moments).reduce(
            lambda a, b: (a[0] + b[0], a[1] + b[1], a[2] + b[2]))
        d = len(total)
        mean = total / n
        covariance = outer / n - np.outer(mean, mean)
        # ~20 training images per component: fewer leave the small components' variances underestimated,
        # and every new image then looks far out along them (29 images, 16 components: all flagged)
        k = max(1, min(self.getOrDefault(self.components), n // _IMAGES_PER_COMPONENT, d))
        components, variances = principal(covariance, k)
        counts = {prop: {category(r["v"]): r["n"] for r in rows.groupBy(F.col(f"p.{prop}").alias("v"))
                         .agg(F.count(F.lit(1)).alias("n")).collect()} for prop in CATEGORICAL}
        logs = rows.select(*[F.log(F.col(f"p.{prop}").cast("double")).alias(prop) for prop in NUMERIC])
        medians = logs.approxQuantile(list(NUMERIC), [0.5], _QUANTILE_ERROR)
        centers = {p: (q[0] if q else 0.0) for p, q in zip(NUMERIC, medians, strict=True)}
        mads = logs.select(*[F.abs(F.col(p) - F.lit(centers[p])).alias(p) for p in NUMERIC]).approxQuantile(
            list(NUMERIC), [0.5], _QUANTILE_ERROR)
        spreads = {p: spread_of(m[0] if m else None) for p, m in zip(NUMERIC, mads, strict=True)}
        shares = {p: {v: c / n for v, c in by.items()} for p, by in counts.items()}
        return Reference(mean=mean, components=components, variances=variances, shares=shares,
                         centers=centers, spreads=spreads, n_train=int(n))

    def _scales(self, rows: DataFrame, ref: Reference) -> dict[str, float]:
        raw = _with_signals(rows, ref)
        q = raw.approxQuantile(list(SIGNALS), [self.getOrDefault(self.quantile)], _QUANTILE_ERROR)
        return {s: scale_of(s, v[0] if v else None) for s, v in zip(SIGNALS, q, strict=True)}

    def _threshold(self, rows: DataFrame, ref: Reference) -> float:
        scored = _with_scores(rows, ref, "x", "p", "s").select("s.score")
        (q,) = scored.approxQuantile("score", [self.getOrDefault(self.quantile)], _QUANTILE_ERROR)
        return float(q) if q is not None and not math.isnan(q) else math.inf


def _drift_bins(rows: DataFrame, ref: Reference) -> tuple[np.ndarray, np.ndarray]:
    """(inner bin edges, training shares per bin) of the top DRIFT_COMPONENTS components' projections: the
    training deciles (one approxQuantile job) and the images in each bin (one aggregate job)."""
    m = min(DRIFT_COMPONENTS, len(ref.variances))
    text = ref.to_text()

    def project(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        reference = Reference.from_text(text)
        for pdf in batches:
            proj = reference.projections(np.vstack(pdf["x"].to_numpy()), m)
            yield pd.DataFrame({f"c{j}": proj[:, j] for j in range(m)})

    cols = [f"c{j}" for j in range(m)]
    proj = rows.select("x").mapInPandas(project, ", ".join(f"{c} double" for c in cols))
    probs = [i / DRIFT_BINS for i in range(1, DRIFT_BINS)]
    edges = np.array(proj.approxQuantile(cols, probs, _QUANTILE_ERROR), dtype=np.float64).reshape(m, -1)
    binned = _bin_counts(rows, dataclasses.replace(ref, component_edges=edges))
    counts = np.zeros((m, DRIFT_BINS))
    for r in binned.groupBy("component", "bin").agg(F.sum("n").alias("n")).collect():
        counts[r["component"], r["bin"]] = r["n"]
    return edges, counts / np.maximum(counts.sum(axis=1, keepdims=True), 1.0)


def _bin_counts(rows: DataFrame, ref: Reference) -> DataFrame:
    """(component, bin, n) per partition of `rows` (x: array<double> features, no nulls), on executors."""
    text = ref.to_text()

    def count(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        reference = Reference.from_text(text)
        m = len(reference.component_edges)
        totals = np.zeros((m, DRIFT_BINS), dtype=np.int64)
        for pdf in batches:
            if len(pdf):
                bins = reference.component_bins(np.vstack(pdf["x"].to_numpy()))
                for j in range(m):
                    totals[j] += np.bincount(bins[:, j], minlength=DRIFT_BINS)
        j, b = np.nonzero(totals)
        yield pd.DataFrame({"component": j.astype(np.int32), "bin": b.astype(np.int32), "n": totals[j, b]})

    return rows.select("x").mapInPandas(count, "component int, bin int, n long")


def _moments(rows: Iterator[Any]) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """One partition's count, sum and X'X of the unit-normalised features (d x d: an aggregate)."""
    x = [np.asarray(r.x, dtype=np.float64) for r in rows]
    if x:
        u = unit_rows(np.vstack(x))
        yield len(u), u.sum(axis=0), u.T @ u


def _props_records(frame: pd.DataFrame) -> list[dict[str, object]]:
    return [{k: (None if pd.isna(v) else v) for k, v in row.items()} for row in frame.to_dict("records")]


def _features(series: pd.Series) -> np.ndarray | None:
    vectors = [np.asarray(v.toArray() if hasattr(v, "toArray") else v, dtype=np.float64) for v in series]
    return np.vstack(vectors) if vectors else None


def _with_signals(rows: DataFrame, ref: Reference) -> DataFrame:
    """The raw signals of each training row (x: array, p: props), computed on executors."""
    text = ref.to_text()
    ddl = ", ".join(f"{s} double" for s in SIGNALS)

    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        reference = Reference.from_text(text)
        for pdf in batches:
            sig = reference.signals(_features(pdf["x"]), _props_records(pd.DataFrame(list(pdf["p"]))))
            yield pd.DataFrame({s: sig[s] for s in SIGNALS})

    return rows.select("x", "p").mapInPandas(run, ddl)


def _with_scores(dataset: DataFrame, ref: Reference, features_col: str, props_col: str,
                 out: str) -> DataFrame:
    """`dataset` + a struct column `out` (score, in_distribution, reasons: why a flagged image is unlike
    the training images, empty for the others); rows without features get nulls."""
    text = ref.to_text()

    @F.pandas_udf("score double, in_distribution boolean, reasons array<string>")  # type: ignore[call-overload]
    def score(features: pd.Series, props: pd.DataFrame) -> pd.DataFrame:
        reference = Reference.from_text(text)
        present = features.notna().to_numpy()
        n = len(features)
        scores, flags, reasons = [None] * n, [None] * n, [None] * n
        if present.any():
            rows = _props_records(props[present])
            sig = reference.signals(_features(features[present]), rows)
            s = reference.score(sig)
            inside = reference.in_distribution(s)
            for j, i in enumerate(np.flatnonzero(present)):
                scores[i] = None if np.isnan(s[j]) else float(s[j])
                flags[i] = bool(inside[j])
                reasons[i] = [] if inside[j] else reference.explain(sig, rows, j)
        return pd.DataFrame({"score": scores, "in_distribution": flags, "reasons": reasons})

    return dataset.withColumn(out, score(_as_array(dataset, features_col), F.col(props_col)))


def _as_array(dataset: DataFrame, name: str) -> Column:
    """A features column as array<double> (Arrow carries arrays, not ML vectors); null stays null."""
    col = F.col(name)
    if isinstance(dataset.schema[name].dataType, VectorUDT):
        return F.when(col.isNotNull(), vector_to_array(col, "float64"))
    return col
