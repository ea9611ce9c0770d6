"""One image in, one prediction out, without Spark — through the batch pipeline's own code.

Why these exact steps: a served label must equal the label `xray-spark score` writes for the same file. So
the bytes go through `WorkerFeaturizer.featurize_bytes` (the class the Spark UDF runs on executors: the
one decode path, the backbone's preprocess_input, the same engine choice), and the pooled features through
the bundle's SparkFreeHead, which reproduces Spark's head arithmetic. A file the decoder refuses comes back
as the decoder's own reason code and detail (`InputRejected`), never as an exception from deep inside.
The same features and the upload's header go through the bundle's shift reference (serving/shift_check.py,
the functions Spark's ShiftModel runs), so the answer also says whether the image resembles the training
images.

Thread safety: the engines hold one inference request each (OpenVINO's is not reentrant), so the model runs
under a lock; callers may call `predict` from a pool of threads.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from xray_spark.data.decode import decode_for_model
from xray_spark.data.pixels import REASONS
from xray_spark.features.worker import WorkerFeaturizer
from xray_spark.models.heads_numpy import PROBABILITY
from xray_spark.models.serving_bundle import Bundle
from xray_spark.serving.heatmap import FeatureMapModel, describe, heatmap_for
from xray_spark.serving.shift_check import NO_REFERENCE, ShiftResult, check_shift

log = logging.getLogger(__name__)


class InputRejected(ValueError):
    """The upload is not an image the pipeline can use: `code` is the decoder's reason code."""

    def __init__(self, code: str, detail: str, sha256: str | None = None) -> None:
        super().__init__(f"{code}: {detail}")
        self.code, self.detail, self.sha256 = code, detail, sha256

    @classmethod
    def from_row_error(cls, error: str, sha256: str | None = None) -> InputRejected:
        """WorkerFeaturizer's per-row error text (`reason: detail`, or `decode_failed: Type: message`)."""
        code, _, detail = str(error).partition(": ")
        if code not in REASONS and code != "decode_failed":
            code, detail = "decode_failed", str(error)
        return cls(code, detail, sha256)


@dataclass(frozen=True)
class Prediction:
    """What the server answers for one image (the heatmap only when asked for)."""

    label: str
    probabilities: dict[str, float] | None  # None where Spark gives no probability (LinearSVC, one-vs-rest)
    scores: dict[str, float]  # the probabilities, or Spark's rawPrediction for those heads
    score_kind: str  # probability | rawPrediction
    sha256: str
    engine: str
    model_name: str
    model_version: str
    heatmap_png: bytes | None = None
    heatmap_method: str | None = None
    shift: ShiftResult = field(default=NO_REFERENCE)  # null fields for a bundle without a shift reference

    def to_json(self) -> dict[str, Any]:
        """The JSON body without the heatmap (the app adds it base64-encoded when asked)."""
        return {"label": self.label, "probabilities": self.probabilities, "scores": self.scores,
                "score_kind": self.score_kind, "model_name": self.model_name,
                "model_version": self.model_version, "sha256": self.sha256, "engine": self.engine,
                "shift_score": self.shift.score, "in_distribution": self.shift.in_distribution,
                "shift_reasons": list(self.shift.reasons) if self.shift.score is not None else None}


class Predictor:
    """A loaded bundle: `predict(bytes)` -> Prediction, or InputRejected for bytes that are not an image.

    `engine`/`precision` override the bundle's (which are the featurizer's Params at train time); with
    neither, engine 'auto' runs int8 where the model passed train's int8 gate and the CPU has native int8
    (quantised here from the bundle's calibration sample at first start, cached afterwards), else bf16/fp32.
    TensorFlow's and OpenVINO's thread count is `worker.tf_threads()`'s (XRAY_SPARK_TF_THREADS), read once
    here.
    """

    def __init__(self, bundle: Bundle, *, engine: str | None = None, precision: str | None = None) -> None:
        self.bundle = bundle
        self.head = bundle.head
        self.featurizer = WorkerFeaturizer(
            bundle.backbone, "", str(bundle.weights_path), engine=engine or bundle.meta.engine,
            precision=precision or (None if engine else bundle.meta.precision),
            fingerprint=bundle.weights_fingerprint,
            calibration=str(bundle.calibration_path) if bundle.calibration_path else None,
            int8_ok=bundle.int8_ok,  # engine 'auto' runs int8 only for a model that passed train's gate
        )
        self._lock = threading.Lock()
        self._maps: FeatureMapModel | None = None

    @property
    def engine(self) -> str:
        """What really runs, e.g. `openvino:fp32` (after any fallback)."""
        return self.featurizer.engine.label

    @property
    def precision(self) -> str:
        """The precision that really runs: fp32 | bf16 | int8 (from the engine label)."""
        return self.engine.partition(":")[2]

    @property
    def labels(self) -> list[str]:
        return list(self.head.labels)

    def warm_up(self, heatmap: bool = True) -> None:
        """Run the model once on a blank input so the first request does not pay for graph tracing."""
        size = self.featurizer.backbone.input_size
        blank = np.zeros((1, size, size, 3), dtype=np.uint8)
        with self._lock:
            self.featurizer.infer(blank)
            if heatmap:
                self._feature_maps()(blank)

    def _feature_maps(self) -> FeatureMapModel:
        if self._maps is None:
            self._maps = FeatureMapModel(self.bundle.backbone, str(self.bundle.weights_path))
        return self._maps

    def predict(self, data: bytes, heatmap: bool = False) -> Prediction:
        """Label, per-class scores and (optionally) a heatmap PNG for one file's bytes."""
        sha = hashlib.sha256(data).hexdigest()
        with self._lock:
            out = self.featurizer.featurize_bytes(np.array([bytes(data)], dtype=object))
        error = out["error"][0]
        if error is not None:
            raise InputRejected.from_row_error(error, sha)
        features = out["features"][0]
        index, values = self.head.predict_indices(features[None, :])
        label = self.head.labels[int(index[0])]
        scores = {name: float(v) for name, v in zip(self.head.labels, values[0], strict=True)}
        shift = check_shift(self.bundle.shift, data, features)
        png = method = None
        if heatmap:
            png, method = self._heatmap(data, features, int(index[0]))
        return Prediction(
            label=label, probabilities=scores if self.head.output == PROBABILITY else None, scores=scores,
            score_kind=self.head.output, sha256=sha, engine=str(out["engine"][0]),
            model_name=self.bundle.meta.model_name, model_version=self.bundle.meta.model_version,
            heatmap_png=png, heatmap_method=method, shift=shift,
        )

    def _heatmap(self, data: bytes, features: np.ndarray, class_index: int) -> tuple[bytes, str]:
        """The map over the same decoded input the features came from (the decode is deterministic)."""
        image = decode_for_model(data, self.featurizer.backbone.input_size)
        with self._lock:
            maps, _ = self._feature_maps()(image[None])
        return heatmap_for(self.head, maps[0], features, class_index, self.bundle.importances, image[..., 0])

    def describe_heatmap(self, method: str | None) -> dict[str, Any]:
        return describe(method) if method else {}
