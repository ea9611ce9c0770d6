"""Temperature scaling as Spark ML stages that live in the saved PipelineModel (models/calibration.py has the
fit, `heads_numpy.temperature_scale` the arithmetic).

`TemperatureScaling` (an Estimator) fits one temperature on a DataFrame of a head's predictions for rows it
was not fitted on (train/calibrate.py builds it from the training folds) and returns a
`TemperatureScalingModel`, which sits right after the head and rewrites its probability column in place.
The prediction column is left as the head wrote it: the temperature never changes a row's top class. The
model persists as one simple Param (ml_io.ParamsWritable), so `PipelineModel.save`, `mlflow.spark.log_model`,
scoring, `evaluate` and the Spark-free export (models/head_export.py) all keep it.

What reaches the driver when fitting: each fitted row's class probabilities and label, a few numbers per
image (as the test split's predictions in train/fit.py), never a feature vector or an image.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
from pyspark import keyword_only
from pyspark.ml import Estimator, Model
from pyspark.ml.functions import array_to_vector, vector_to_array
from pyspark.ml.param import TypeConverters
from pyspark.ml.param.shared import HasLabelCol, HasProbabilityCol
from pyspark.ml.util import DefaultParamsReadable
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from xray_spark.features.params import DeclaredParams, ParamSpec
from xray_spark.ml_io import ParamsWritable
from xray_spark.models.calibration import TemperatureFit, fit_temperature
from xray_spark.models.frames import LABEL
from xray_spark.models.heads_numpy import temperature_scale

log = logging.getLogger(__name__)


class _TemperatureParams(DeclaredParams, HasProbabilityCol):
    """The probability column the temperature rescales (read and rewritten in place)."""

    DEFAULTS = {"probabilityCol": "probability"}


class TemperatureScalingModel(Model, _TemperatureParams, DefaultParamsReadable, ParamsWritable):
    """Rewrites `probabilityCol` as softmax(log(p) / temperature) (heads_numpy.temperature_scale); null
    stays null, every other column is untouched."""

    PARAMS = (ParamSpec("temperature", "the fitted temperature (> 1 softens the head's probabilities, < 1 "
                        "sharpens them)", TypeConverters.toFloat, 1.0),)

    @keyword_only
    def __init__(self, **params: Any) -> None:
        """temperature and probabilityCol by keyword."""
        super().__init__()
        self._set_params(self._input_kwargs)
        self.fit_summary: TemperatureFit | None = None  # set by TemperatureScaling.fit; not persisted

    def _transform(self, dataset: DataFrame) -> DataFrame:
        temperature = float(self.getTemperature())
        if not temperature > 0:
            raise ValueError(f"{self.uid}: temperature must be > 0, got {temperature!r}")

        @F.pandas_udf("array<double>")  # type: ignore[call-overload]
        def scale(proba: pd.Series) -> pd.Series:
            present = proba.notna().to_numpy()
            out: list[np.ndarray | None] = [None] * len(proba)
            if present.any():
                rows = temperature_scale(np.vstack(proba[present].to_numpy()), temperature)
                for j, i in enumerate(np.flatnonzero(present)):
                    out[i] = rows[j]
            return pd.Series(out, index=proba.index, dtype=object)

        present = F.col(self.getProbabilityCol()).isNotNull()
        scaled = array_to_vector(scale(_as_array(self.getProbabilityCol())))
        return dataset.withColumn(self.getProbabilityCol(), F.when(present, scaled))


class TemperatureScaling(Estimator, _TemperatureParams, HasLabelCol, DefaultParamsReadable,
                         ParamsWritable):
    """Fits a TemperatureScalingModel on a head's predictions (`probabilityCol`) and the true class indices
    (`labelCol`, default label_index) of rows the head was not fitted on."""

    DEFAULTS = {"labelCol": LABEL}

    @keyword_only
    def __init__(self, **params: Any) -> None:
        """probabilityCol and labelCol by keyword."""
        super().__init__()
        self._set_params(self._input_kwargs)

    def _fit(self, dataset: DataFrame) -> TemperatureScalingModel:
        rows = (dataset.select(_as_array(self.getProbabilityCol()).alias("p"),
                               F.col(self.getLabelCol()).cast("int").alias("y"))
                .where("p IS NOT NULL AND y IS NOT NULL").collect())
        if not rows:
            raise ValueError("no rows with a probability and a label to fit a temperature on")
        fit = fit_temperature(np.array([r["p"] for r in rows]), np.array([r["y"] for r in rows]))
        log.info("temperature %.3f from %d rows (mean NLL %.3f -> %.3f)%s", fit.temperature, fit.n,
                 fit.nll_before, fit.nll_after, " at the edge of its range" if fit.at_bound else "")
        model = self._copyValues(TemperatureScalingModel(temperature=fit.temperature))
        model.fit_summary = fit
        return model


def _as_array(name: str) -> Column:
    """A probability vector column as array<double>; null stays null (vector_to_array refuses nulls)."""
    return F.when(F.col(name).isNotNull(), vector_to_array(F.col(name), "float64"))
