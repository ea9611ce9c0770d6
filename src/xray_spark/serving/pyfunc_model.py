"""The serving bundle as an MLflow pyfunc, so `mlflow models serve -m models:/<name>-serving@champion` answers
with the same Spark-free model as `xray-spark serve`.

MLflow "models from code": `models/serving_mlflow.py` logs this file by path and MLflow runs it when the model
is loaded; nothing in the package imports it. Input: a DataFrame with a binary `content` column (file bytes;
base64 strings in MLflow's JSON). Output: one row per input with `predicted_label`, `prob_<label>` per class
(null for heads Spark gives no probability: LinearSVC, one-vs-rest), `score_<label>` (the probabilities, or
Spark's rawPrediction for those heads), `sha256`, `engine`, `shift_score` and `in_distribution` (as
the Spark pipeline's ShiftModel adds them; null without a shift reference) and `error` (the decoder's
reason for a file that is not a usable image: such a row is not a failure of the whole request).
"""

from __future__ import annotations

from typing import Any

import mlflow.pyfunc
import pandas as pd
from mlflow.models import set_model

from xray_spark.models.serving_bundle import load_bundle
from xray_spark.serving.predictor import InputRejected, Predictor
from xray_spark.tasks import prob_suffix


class ServingModel(mlflow.pyfunc.PythonModel):
    """Predictor over the `bundle` artifact; one image at a time, in input order."""

    def load_context(self, context: Any) -> None:
        self.predictor = Predictor(load_bundle(context.artifacts["bundle"]))

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        labels = self.predictor.labels
        rows = []
        for data in model_input["content"]:
            row: dict[str, Any] = {"predicted_label": None, "sha256": None, "engine": self.predictor.engine,
                                   "error": None, "shift_score": None, "in_distribution": None,
                                   **{f"prob_{prob_suffix(lab)}": None for lab in labels},
                                   **{f"score_{prob_suffix(lab)}": None for lab in labels}}
            try:
                p = self.predictor.predict(bytes(data))
            except InputRejected as exc:
                row.update(error=f"{exc.code}: {exc.detail}", sha256=exc.sha256)
            else:
                row.update(predicted_label=p.label, sha256=p.sha256, engine=p.engine,
                           shift_score=p.shift.score, in_distribution=p.shift.in_distribution,
                           **{f"score_{prob_suffix(lab)}": p.scores[lab] for lab in labels})
                if p.probabilities is not None:
                    row.update({f"prob_{prob_suffix(lab)}": p.probabilities[lab] for lab in labels})
            rows.append(row)
        return pd.DataFrame(rows)


set_model(ServingModel())
