"""The HTTP contract of `xray-spark serve`: every body, status and error code /openapi.json publishes.

Why one module: the answers are hand-built (a JSONResponse, the heatmap PNG, `{error, detail}`), so FastAPI
cannot infer them; what it publishes comes from here, and the app takes each error's status from `ERRORS`
too, so a code can never answer with one status and be documented under another. tests/test_serve_contract.py
runs a property-based client generated from the published document against the app.
"""

from __future__ import annotations

from functools import cache
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, Field, create_model

from xray_spark.data.pixels import REASONS


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


class ErrorBody(BaseModel):
    """Every answer that is not a result: a stable code to branch on, and a sentence for a person."""

    error: str = Field(description="the reason code (listed under each status)")
    detail: str = Field(description="what was wrong, in words")


class Health(BaseModel):
    """Liveness and load: the model is loaded and the server answers."""

    status: Literal["ok"]
    engine: str = Field(description="the featurizer engine that runs, e.g. openvino:fp32")
    in_flight: int = Field(description="/predict requests admitted now (running or queued)")
    capacity: int = Field(description="workers + queue: one more request than this answers 503")
    auth_required: bool = Field(description="/predict needs `Authorization: Bearer <token>`")


class ModelInfo(BaseModel):
    name: str
    version: str
    uri: str
    task: str | None = Field(description="binary | multiclass")
    labels: list[str]
    backbone: str
    head: str = Field(description="the classifier kind, e.g. logistic_regression")
    score_kind: str = Field(description="probability | rawPrediction")
    weights_fingerprint: str
    bundle_created: str


class VersionInfo(BaseModel):
    """Everything a bug report needs about what is serving."""

    xray_spark: str
    python: str
    engine: str
    precision: str = Field(description="the precision the engine runs: fp32 | bf16 | int8 (int8 only for a "
                           "model that passed train's int8 gate, on a CPU with native int8)")
    int8_gate: str | None = Field(description="train's int8 gate verdict for this model, one line "
                                  "('passed: ...', 'refused: ...', 'not measured: ...'); null for a bundle "
                                  "made before the gate")
    model: ModelInfo
    baseline_as_good: bool | None = Field(
        description="the training report found the metadata-only baseline as good as this model")
    baseline_sentence: str | None
    max_upload_mb: float
    libraries: dict[str, str] = Field(description="installed versions of the libraries that serve")


class ErrorCode(NamedTuple):
    status: int
    meaning: str


# the decoder's reasons (data/pixels.py): a new reason without a status here fails at import
_DECODER_STATUS = {
    "empty_file": 400, "not_an_image": 415, "unsupported_format": 415, "dicom_unsupported": 415,
    "too_large": 413, "truncated": 422, "corrupt_image": 422, "blank_image": 422,
    "dicom_no_pixel_data": 422, "dicom_corrupt": 422,
}
ERRORS: dict[str, ErrorCode] = {
    **{code: ErrorCode(_DECODER_STATUS[code], meaning) for code, meaning in REASONS.items()},
    "decode_failed": ErrorCode(422, "the decoder failed without a reason code of its own (see detail)"),
    "bad_multipart": ErrorCode(400, "a multipart/form-data body that cannot be parsed (e.g. no boundary)"),
    "no_file": ErrorCode(400, "a multipart upload without a part named `file`"),
    "invalid_request": ErrorCode(422, "a query parameter that is not valid, e.g. `heatmap=maybe`"),
    "upload_too_large": ErrorCode(413, "the upload is over the server's --max-upload-mb (refused as soon as "
                                       "the body passes it)"),
    "unauthorized": ErrorCode(401, "the server has a token and the request did not send it as "
                                   "`Authorization: Bearer <token>`"),
    "busy": ErrorCode(503, "every worker busy and the queue full"),
    "internal_error": ErrorCode(500, "the server failed on this request (it keeps serving; its log says "
                                     "why)"),
}
PREDICT_ERRORS = tuple(code for code in ERRORS if code != "unauthorized")
_HEADERS: dict[int, dict[str, Any]] = {
    401: {"WWW-Authenticate": {"description": "`Bearer`", "schema": {"type": "string"}}},
    503: {"Retry-After": {"description": "seconds to wait before retrying",
                          "schema": {"type": "integer", "minimum": 0}}},
}


@cache
def _error_model(status: int, codes: tuple[str, ...]) -> type[ErrorBody]:
    """ErrorBody with `error` narrowed to the codes answered with `status` (one schema per status)."""
    return create_model(f"Error{status}", __base__=ErrorBody, __doc__=ErrorBody.__doc__,
                        error=(Literal[codes], Field(description="the reason code")))


def error_responses(codes: tuple[str, ...]) -> dict[int | str, dict[str, Any]]:
    """FastAPI `responses=` for these error codes: per status its body schema, every code's meaning, and its
    headers."""
    by_status: dict[int, list[str]] = {}
    for code in codes:
        by_status.setdefault(ERRORS[code].status, []).append(code)
    return {status: {"model": _error_model(status, tuple(group)),
                     "description": "; ".join(f"`{code}`: {ERRORS[code].meaning}" for code in group),
                     **({"headers": _HEADERS[status]} if status in _HEADERS else {})}
            for status, group in sorted(by_status.items())}


HEATMAP_DOC = "also compute the class activation map (`heatmap_png`, base64, and how it was made)"
_BINARY = {"type": "string", "format": "binary"}
_HEATMAP_HEADERS = {
    name: {"description": text, "schema": {"type": "string"}, "required": False}
    for name, text in (("X-Label", "the predicted class"), ("X-Sha256", "sha256 of the uploaded bytes"),
                       ("X-Heatmap-Method", "how the heatmap was computed"),
                       ("X-Model-Version", "the served model's version"),
                       ("X-In-Distribution", "`true` | `false`; absent without a shift reference"))
}
PREDICT_OK: dict[str, Any] = {
    "model": PredictAnswer,
    "description": "The prediction as JSON, with `heatmap_png` (base64), `heatmap_method` and "
                   "`heatmap_exact` when `heatmap=true`; with `Accept: image/png` (and not "
                   "application/json) the heatmap PNG itself, the prediction in X- headers. "
                   "`in_distribution: false` means the image is unlike the training images (`shift_reasons` "
                   "says how): information, not an error",
    "content": {"image/png": {"schema": _BINARY}},
    "headers": {"Cache-Control": {"description": "`no-store`: the answer is about a patient's image",
                                  "schema": {"type": "string"}}, **_HEATMAP_HEADERS},
}
PREDICT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "The image (DICOM, PNG, JPEG, ...) as the `file` part of a form, or as the raw body "
                       "(any Content-Type other than multipart/form-data is read as the file's bytes)",
        "content": {
            "multipart/form-data": {"schema": {"type": "object", "required": ["file"],
                                               "properties": {"file": _BINARY}}},
            "application/octet-stream": {"schema": _BINARY},
        },
    },
}
