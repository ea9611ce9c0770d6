"""The JSON answer of `POST /predict` as a pydantic model: what /openapi.json and /docs show clients.

Why a model that the endpoint does not return through: /predict answers with a hand-built JSONResponse (or
the heatmap PNG), so FastAPI would not document the body by itself; this model is the documentation, and a
test checks a real answer has exactly these keys.
"""

from __future__ import annotations

from pydantic import BaseModel, Field


class PredictAnswer(BaseModel):
    """One image's prediction, and whether the image resembles the ones the model was trained on."""

    label: str = Field(description="the predicted class")
    probabilities: dict[str, float] | None = Field(
        description="per-class probability; null for heads Spark gives none (LinearSVC, one-vs-rest)")
    scores: dict[str, float] = Field(
        description="the probabilities, or Spark's rawPrediction for those heads")
    score_kind: str = Field(description="probability | rawPrediction")
    model_name: str
    model_version: str
    sha256: str = Field(description="sha256 of the uploaded bytes")
    engine: str = Field(description="the featurizer engine that ran, e.g. openvino:fp32")
    shift_score: float | None = Field(
        description="how unlike the training images this image is: its largest shift signal in units of that "
                    "signal's training 99th percentile (models/shift.py); null for a model without a shift "
                    "reference")
    in_distribution: bool | None = Field(
        description="the shift score is at most the training images' own 99th percentile of it; false "
                    "means: do not trust this prediction as you would on images like the training ones; "
                    "null without a shift reference")
    shift_reasons: list[str] | None = Field(
        description="the signals beyond their training 99th percentile, largest first, e.g. \"file format "
                    "JPEG (9% of training images)\"; null without a shift reference")
    heatmap_png: str | None = Field(None, description="base64 PNG, with ?heatmap=true")
    heatmap_method: str | None = Field(None, description="how the heatmap was computed, with ?heatmap=true")
    heatmap_exact: bool | None = Field(None, description="exact for this head, with ?heatmap=true")
