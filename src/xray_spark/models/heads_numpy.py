"""Spark-free heads: a fitted MLlib head as numpy arrays, predicting with Spark's own rules.

Why only numpy and the standard library (not even `xray_spark.errors`): the head format must be readable by
anything that has numpy, no JVM and not even this package; a test imports it by path with pyspark and
xray_spark blocked. Each rule mirrors Spark 4.0's predictRaw / raw2probability / raw2prediction of the model
it replaces, down to the order of operations that decides the last bits (sequential sums, `1 - p0`,
`* (1 / sum)`). head_export.py fills these.

A head may carry a temperature (models/calibration_stage.py's TemperatureScalingModel after the classifier):
its probabilities then go through `temperature_scale`, the very function the Spark stage runs on executors.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

FORMAT = "xray-spark/spark-free-head"
FORMAT_VERSION = 2  # written when the head carries a temperature (version 1 otherwise: older readers read it)
READABLE_VERSIONS = (1, 2)
META_FILE, ARRAYS_FILE = "head.json", "arrays.npz"
PROBABILITY, RAW = "probability", "rawPrediction"  # what `predict` returns, named as Spark's columns

Arrays = dict[str, np.ndarray]


class HeadFormatError(ValueError):
    """A saved head this code cannot read: another format or version, or missing/inconsistent arrays."""


def _row_sum(a: np.ndarray) -> np.ndarray:
    """Left-to-right sum of each row, as Scala's `Array.sum` (numpy may sum pairwise)."""
    total = np.zeros(a.shape[0])
    for j in range(a.shape[1]):
        total = total + a[:, j]
    return total


def _normalize(raw: np.ndarray) -> np.ndarray:
    """Spark's normalizeToProbabilitiesInPlace: divide by the row sum, rows summing to 0 stay 0."""
    total = _row_sum(raw)[:, None]
    return np.where(total != 0, raw / np.where(total != 0, total, 1.0), raw)


def argmax(values: np.ndarray) -> np.ndarray:
    """Spark's DenseVector.argmax: the first strictly largest entry (NaN never wins, unlike np.argmax)."""
    best, idx = values[:, 0].copy(), np.zeros(values.shape[0], dtype=np.int64)
    for j in range(1, values.shape[1]):
        better = values[:, j] > best
        idx[better], best[better] = j, values[better, j]
    return idx


def _softmax(raw: np.ndarray, *, scale: bool) -> np.ndarray:
    """exp(raw - max) / sum. `scale`: multiply by 1/sum (LogisticRegression, via BLAS.dscal) instead of
    dividing (MultilayerPerceptron); a +inf entry makes the row one-hot (LogisticRegression)."""
    top = np.maximum(raw.max(axis=1, keepdims=True), -np.finfo(float).max)  # Scala starts at Double.MinValue
    e = np.exp(raw - top)
    total = _row_sum(e)[:, None]
    out = e * (1.0 / total) if scale else e / total
    if scale:
        inf = np.isposinf(raw)
        rows = inf.any(axis=1)
        out[rows] = 0.0
        out[rows, np.argmax(inf[rows], axis=1)] = 1.0
    return out


# Temperature scaling works on log-probabilities; a probability of exactly 0 (a pure tree leaf) has none, so
# probabilities are floored here first. Far below any probability a person reads (they are shown to 3
# decimals), and the temperature is fitted through the same floor, so it scales a tree's certainty too.
PROBABILITY_FLOOR = 1e-6


def temperature_scale(proba: np.ndarray, temperature: float) -> np.ndarray:
    """Probability rows rescaled by one temperature: softmax(log(p) / T), p floored at PROBABILITY_FLOOR.

    T > 1 softens, T < 1 sharpens. For a logistic or softmax head this is softmax(logits / T), the usual
    temperature scaling; for any head it is monotone within a row, so the top class (the prediction) never
    changes. The Spark stage and the Spark-free head both call this function, so their numbers agree bit for
    bit."""
    logs = np.log(np.maximum(np.asarray(proba, dtype=np.float64), PROBABILITY_FLOOR))
    z = (logs - logs.max(axis=1, keepdims=True)) / float(temperature)
    e = np.exp(z)
    return e / _row_sum(e)[:, None]


def _binary_raw(margin: np.ndarray) -> np.ndarray:
    return np.stack([-margin, margin], axis=1)


class Classifier:
    """raw scores -> probability (None where Spark has none) -> prediction index, as the Spark model.

    Saved as its `_meta` attributes (JSON) and `_arrays` attributes (npz), both named as the constructor's
    arguments."""

    kind: ClassVar[str]
    probabilistic: ClassVar[bool] = True  # False: Spark gives rawPrediction only
    _meta: ClassVar[tuple[str, ...]] = ()
    _arrays: ClassVar[tuple[str, ...]] = ()
    n_classes: int

    def raw(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def probability(self, raw: np.ndarray) -> np.ndarray | None:
        return None  # what Spark gives for heads that are not `probabilistic`

    def prediction(self, raw: np.ndarray) -> np.ndarray:
        return argmax(raw)

    def state(self, prefix: str) -> tuple[dict[str, Any], Arrays]:
        """(JSON-able description, arrays keyed under `prefix`)."""
        meta = {"kind": self.kind, **{name: getattr(self, name) for name in self._meta}}
        return meta, {f"{prefix}{name}": getattr(self, name) for name in self._arrays}

    @classmethod
    def from_state(cls, meta: dict[str, Any], arrays: Arrays, prefix: str) -> Classifier:
        return cls(**{name: meta[name] for name in cls._meta},
                   **{name: arrays[f"{prefix}{name}"] for name in cls._arrays})


class Logistic(Classifier):
    """LogisticRegressionModel: binomial (one coefficient row, threshold on the margin) or multinomial."""

    kind = "logistic_regression"
    _meta, _arrays = ("multinomial", "threshold"), ("coef", "intercept")

    def __init__(self, coef: np.ndarray, intercept: np.ndarray, multinomial: bool, threshold: float = 0.5):
        self.coef, self.intercept = np.atleast_2d(coef).astype(float), np.atleast_1d(intercept).astype(float)
        self.multinomial, self.threshold = bool(multinomial), float(threshold)
        self.n_classes = self.coef.shape[0] if multinomial else 2

    def raw(self, x: np.ndarray) -> np.ndarray:
        margins = x @ self.coef.T + self.intercept
        return margins if self.multinomial else _binary_raw(margins[:, 0])

    def probability(self, raw: np.ndarray) -> np.ndarray:
        if self.multinomial:
            return _softmax(raw, scale=True)
        p0 = 1.0 / (1.0 + np.exp(-raw[:, 0]))
        return np.stack([p0, 1.0 - p0], axis=1)

    def prediction(self, raw: np.ndarray) -> np.ndarray:
        if self.multinomial:
            return argmax(raw)
        t = self.threshold
        raw_threshold = -np.inf if t == 0.0 else np.inf if t == 1.0 else np.log(t / (1.0 - t))
        return (raw[:, 1] > raw_threshold).astype(np.int64)


class LinearSVC(Classifier):
    """LinearSVCModel: rawPrediction [-m, m], class 1 when m > threshold, no probability."""

    kind = "linear_svc"
    probabilistic = False
    _meta, _arrays = ("intercept", "threshold"), ("coef",)
    n_classes = 2

    def __init__(self, coef: np.ndarray, intercept: float, threshold: float = 0.0):
        self.coef, self.intercept = np.asarray(coef, float).ravel(), float(intercept)
        self.threshold = float(threshold)

    def raw(self, x: np.ndarray) -> np.ndarray:
        return _binary_raw(x @ self.coef + self.intercept)

    def prediction(self, raw: np.ndarray) -> np.ndarray:
        return (raw[:, 1] > self.threshold).astype(np.int64)


class Trees(Classifier):
    """Binary trees in flat arrays (all trees concatenated; `feature` -1 marks a leaf, `roots` the first
    node of each tree). Spark goes left when x[feature] <= threshold (NaN goes right, as here)."""

    _meta = ("n_classes",)
    _arrays = ("feature", "threshold", "left", "right", "value", "roots", "tree_weights")

    def __init__(self, n_classes: int, feature: np.ndarray, threshold: np.ndarray, left: np.ndarray,
                 right: np.ndarray, value: np.ndarray, roots: np.ndarray, tree_weights: np.ndarray):
        self.n_classes = int(n_classes)
        self.feature, self.left, self.right, self.roots = (np.asarray(a, np.int64)
                                                           for a in (feature, left, right, roots))
        self.threshold, self.tree_weights = np.asarray(threshold, float), np.asarray(tree_weights, float)
        self.value = np.asarray(value, float).reshape(len(self.feature), -1)

    def leaves(self, x: np.ndarray) -> np.ndarray:
        """[n_trees, n_rows] leaf node of every row in every tree, all trees walked together."""
        node = np.repeat(self.roots[:, None], x.shape[0], axis=1)
        rows = np.broadcast_to(np.arange(x.shape[0]), node.shape)
        for _ in range(len(self.feature) + 1):  # a tree can be no deeper than it has nodes
            feat = self.feature[node]
            inner = feat >= 0
            if not inner.any():
                return node
            at = node[inner]
            go_left = x[rows[inner], feat[inner]] <= self.threshold[at]
            node[inner] = np.where(go_left, self.left[at], self.right[at])
        raise HeadFormatError(f"{self.kind}: the tree arrays contain a cycle")

    def state(self, prefix: str) -> tuple[dict[str, Any], Arrays]:
        meta, arrays = super().state(prefix)
        return {**meta, "n_trees": len(self.roots), "n_nodes": len(self.feature)}, arrays


class DecisionTree(Trees):
    """DecisionTreeClassificationModel: rawPrediction = the leaf's (weighted) class counts."""

    kind = "decision_tree"

    def raw(self, x: np.ndarray) -> np.ndarray:
        return self.value[self.leaves(x)[0]]

    def probability(self, raw: np.ndarray) -> np.ndarray:
        return _normalize(raw)


class RandomForest(Trees):
    """RandomForestClassificationModel: rawPrediction = sum over trees of each leaf's class frequencies."""

    kind = "random_forest"

    def raw(self, x: np.ndarray) -> np.ndarray:
        votes = np.zeros((x.shape[0], self.n_classes))
        for leaf in self.leaves(x):
            counts = self.value[leaf]
            total = _row_sum(counts)[:, None]
            votes = votes + np.where(total != 0, counts / np.where(total != 0, total, 1.0), 0.0)
        return votes

    def probability(self, raw: np.ndarray) -> np.ndarray:
        return _normalize(raw)


class GBT(Trees):
    """GBTClassificationModel (logistic loss): margin = sum of tree weight x leaf value, rawPrediction
    [-m, m], P(class 0) = 1 / (1 + exp(2m)) and P(class 1) = 1 - P(class 0)."""

    kind = "gbt"

    def raw(self, x: np.ndarray) -> np.ndarray:
        margin = np.zeros(x.shape[0])
        for weight, leaf in zip(self.tree_weights, self.leaves(x), strict=True):
            margin = margin + weight * self.value[leaf, 0]
        return _binary_raw(margin)

    def probability(self, raw: np.ndarray) -> np.ndarray:
        p0 = 1.0 / (1.0 + np.exp(-2.0 * raw[:, 0]))
        return np.stack([p0, 1.0 - p0], axis=1)


class MLP(Classifier):
    """MultilayerPerceptronClassificationModel: affine + sigmoid layers, rawPrediction = the last affine
    output, probability its softmax. Spark packs each layer as an out x in column-major matrix, then the
    bias."""

    kind = "multilayer_perceptron"
    _meta, _arrays = ("layers",), ("weights",)

    def __init__(self, layers: list[int], weights: np.ndarray):
        self.layers, self.weights = [int(n) for n in layers], np.asarray(weights, float).ravel()
        self.n_classes = self.layers[-1]
        expected = sum(i * o + o for i, o in self._pairs())
        if expected != len(self.weights):
            raise HeadFormatError(f"MLP layers {self.layers}: {expected} weights, not {len(self.weights)}")

    def _pairs(self) -> list[tuple[int, int]]:
        return list(zip(self.layers[:-1], self.layers[1:], strict=True))

    def affine_layers(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """[(w as (in, out), bias)] per layer: Spark's column-major (out x in) block read row-major as
        (in x out) is the transpose `x @ w` needs (reshape(out, in).T would be a different matrix)."""
        out, offset = [], 0
        for n_in, n_out in self._pairs():
            w = self.weights[offset:offset + n_in * n_out].reshape(n_in, n_out)
            out.append((w, self.weights[offset + n_in * n_out:offset + n_in * n_out + n_out]))
            offset += n_in * n_out + n_out
        return out

    def raw(self, x: np.ndarray) -> np.ndarray:
        layers = self.affine_layers()
        for i, (w, b) in enumerate(layers):
            x = b + x @ w
            if i < len(layers) - 1:
                x = 1.0 / (1.0 + np.exp(-x))  # sigmoid between layers, softmax (in `probability`) on top
        return x

    def probability(self, raw: np.ndarray) -> np.ndarray:
        return _softmax(raw, scale=False)


class OneVsRest(Classifier):
    """OneVsRestModel: rawPrediction[i] = binary model i's rawPrediction[1]; prediction its argmax; no
    probability."""

    kind = "one_vs_rest"
    probabilistic = False

    def __init__(self, models: list[Classifier]):
        self.models, self.n_classes = models, len(models)

    def raw(self, x: np.ndarray) -> np.ndarray:
        return np.stack([m.raw(x)[:, 1] for m in self.models], axis=1)

    def state(self, prefix: str) -> tuple[dict[str, Any], Arrays]:
        metas, arrays = [], {}
        for i, model in enumerate(self.models):
            meta, arr = model.state(f"{prefix}{i}.")
            metas.append(meta)
            arrays.update(arr)
        return {"kind": self.kind, "models": metas}, arrays

    @classmethod
    def from_state(cls, meta: dict[str, Any], arrays: Arrays, prefix: str) -> OneVsRest:
        return cls([classifier_from_state(m, arrays, f"{prefix}{i}.") for i, m in enumerate(meta["models"])])


KINDS: dict[str, type[Classifier]] = {c.kind: c for c in (Logistic, LinearSVC, DecisionTree, RandomForest,
                                                          GBT, MLP, OneVsRest)}


def classifier_from_state(meta: dict[str, Any], arrays: Arrays, prefix: str) -> Classifier:
    cls = KINDS.get(meta.get("kind", ""))
    if cls is None:
        raise HeadFormatError(f"unknown classifier kind {meta.get('kind')!r}; known: {', '.join(KINDS)}")
    try:
        return cls.from_state(meta, arrays, prefix)
    except KeyError as exc:
        raise HeadFormatError(f"{cls.kind}: missing {exc.args[0]!r} in the saved head") from None


class Scaler:
    """StandardScalerModel: (x - mean) * (1 / std), a zero std scaling to 0, either part optional."""

    def __init__(self, mean: np.ndarray | None, std: np.ndarray | None):
        self.mean = None if mean is None else np.asarray(mean, float)
        self.std = None if std is None else np.asarray(std, float)
        nonzero = None if self.std is None else np.where(self.std != 0, self.std, 1.0)
        self.scale = None if self.std is None else np.where(self.std != 0, 1.0 / nonzero, 0.0)  # Spark's

    def apply(self, x: np.ndarray) -> np.ndarray:
        if self.mean is not None:
            x = x - self.mean
        return x if self.scale is None else x * self.scale


class SparkFreeHead:
    """The head of a trained pipeline (optional StandardScaler, classifier, optional temperature, class
    names), without Spark.

    `predict` returns what the Spark pipeline's columns hold: `output` says whether the values are
    `probability` or, for heads Spark gives no probability (LinearSVC, OneVsRest), `rawPrediction`. With a
    `temperature`, the probabilities are the calibrated ones (`temperature_scale`), as the pipeline's
    TemperatureScalingModel stage makes them; the prediction is the classifier's, which the temperature
    never changes.
    """

    def __init__(self, classifier: Classifier, labels: list[str], n_features: int,
                 scaler: Scaler | None = None, info: dict[str, Any] | None = None,
                 temperature: float | None = None):
        if len(labels) != classifier.n_classes:
            raise HeadFormatError(f"{len(labels)} labels {labels} for a {classifier.n_classes}-class "
                                  f"{classifier.kind}")
        if temperature is not None and not (classifier.probabilistic and float(temperature) > 0):
            raise HeadFormatError(f"a temperature ({temperature!r}) needs a positive value and a head with "
                                  f"probabilities, not {classifier.kind}")
        self.classifier, self.labels, self.n_features = classifier, list(labels), int(n_features)
        self.scaler, self.info = scaler, dict(info or {})
        self.temperature = None if temperature is None else float(temperature)

    @property
    def output(self) -> str:
        return PROBABILITY if self.classifier.probabilistic else RAW

    def predict_indices(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(Spark's `prediction` as int indices, `probability` or `rawPrediction` [n, k])."""
        x = np.atleast_2d(np.asarray(features, dtype=np.float64))
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ValueError(f"expected features of shape (n, {self.n_features}), got {np.shape(features)}")
        with np.errstate(all="ignore"):  # overflow to inf, 0/0 to NaN: silently, as on the JVM
            if self.scaler is not None:
                x = self.scaler.apply(x)
            raw = self.classifier.raw(x)
            proba = self.classifier.probability(raw)
            if proba is not None and self.temperature is not None:
                proba = temperature_scale(proba, self.temperature)
        return self.classifier.prediction(raw), (raw if proba is None else proba)

    def predict(self, features: np.ndarray) -> tuple[list[str], np.ndarray]:
        """(predicted class names, probabilities or raw scores [n, k], columns in `labels` order)."""
        idx, values = self.predict_indices(features)
        return [self.labels[i] for i in idx], values

    def save(self, path: str | Path) -> Path:
        """A folder with head.json (format, version, labels, structure) and arrays.npz (numbers only)."""
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        meta, arrays = self.classifier.state("classifier.")
        sc = self.scaler
        scaler = None if sc is None else {"with_mean": sc.mean is not None, "with_std": sc.std is not None}
        parts = {} if sc is None else {"mean": sc.mean, "std": sc.std}
        arrays.update({f"scaler.{k}": v for k, v in parts.items() if v is not None})
        doc = {"format": FORMAT, "format_version": FORMAT_VERSION if self.temperature is not None else 1,
               "labels": self.labels, "n_features": self.n_features, "output": self.output, "scaler": scaler,
               "classifier": meta, "temperature": self.temperature, "info": self.info}
        np.savez(folder / ARRAYS_FILE, **arrays)
        (folder / META_FILE).write_text(json.dumps(doc, indent=1) + "\n")
        return folder

    @classmethod
    def load(cls, path: str | Path) -> SparkFreeHead:
        folder = Path(path)
        try:
            doc = json.loads((folder / META_FILE).read_text())
        except (OSError, ValueError) as exc:
            raise HeadFormatError(f"{folder}: no readable {META_FILE} ({exc})") from None
        if doc.get("format") != FORMAT or doc.get("format_version") not in READABLE_VERSIONS:
            raise HeadFormatError(f"{folder}: format {doc.get('format')!r} version "
                                  f"{doc.get('format_version')!r}, this code reads {FORMAT!r} versions "
                                  f"{', '.join(map(str, READABLE_VERSIONS))}")
        try:
            with np.load(folder / ARRAYS_FILE, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
            scaler = None
            if doc["scaler"]:
                scaler = Scaler(arrays["scaler.mean"] if doc["scaler"]["with_mean"] else None,
                                arrays["scaler.std"] if doc["scaler"]["with_std"] else None)
            classifier = classifier_from_state(doc["classifier"], arrays, "classifier.")
            return cls(classifier, doc["labels"], doc["n_features"], scaler, doc.get("info"),
                       doc.get("temperature"))
        except KeyError as exc:
            raise HeadFormatError(f"{folder}: missing {exc.args[0]!r} in the saved head") from None
        except (OSError, ValueError) as exc:  # no or a damaged arrays.npz (ValueError: it holds objects)
            raise HeadFormatError(f"{folder}: unreadable {ARRAYS_FILE} ({exc})") from None
