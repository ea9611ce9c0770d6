"""Where in the image the served head found its evidence: CAM / Grad-CAM over the backbone's last feature map.

Why this works without new training: every backbone here ends in global average pooling, so the feature
vector the head reads is f_k = mean over (x, y) of the last convolutional map A_k(x, y). Then:

- linear heads (logistic regression, linear SVM; also inside one-vs-rest): the class score is
  sum_k w_k f_k + b = mean over (x, y) of [sum_k w_k A_k(x, y)] + b, so the class activation map
  sum_k w_k A_k(x, y) is *exact*: its spatial mean is the score (up to the constant). w is the coefficient
  row of the predicted class divided by the StandardScaler's std (the mean shift is a constant); the binary
  class 0 takes -w; a multinomial row is taken relative to the mean row (softmax only sees differences).
  Method `cam`.
- MLP: Grad-CAM. The channel weights are d p_class / d f_k, computed here in numpy by back-propagating
  through the head's own sigmoid layers and softmax (the spatial mean of dp/dA_k is that divided by H*W).
  Method `grad-cam`.
- trees (decision tree, random forest, GBT): no gradient exists; channels are weighted by the trees'
  featureImportances (saved in the bundle at train time; split counts when absent). The map is the same
  for every class and only says which important channels are active where. Method
  `approximate:feature-importance`, and the JSON says so.

Positive evidence only (ReLU), scaled to [0, 1], upsampled (bilinear) onto the resized grayscale image the
model saw, coloured with matplotlib's `jet` and blended in proportion to the map: a PNG.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image

from xray_spark.features.backbones import get_backbone
from xray_spark.features.engines import keras_model
from xray_spark.models.heads_numpy import (
    MLP,
    Classifier,
    LinearSVC,
    Logistic,
    OneVsRest,
    SparkFreeHead,
    Trees,
)

EXACT, GRADIENT, APPROXIMATE = "cam", "grad-cam", "approximate:feature-importance"
OVERLAY_ALPHA = 0.55


class FeatureMapModel:
    """The backbone up to its last feature map: (N, S, S, 3) uint8 -> (N, h, w, d) float32 (the input of the
    global average pooling layer), plus the pooled features, from the same Keras model the engine loads."""

    def __init__(self, backbone: str, weights_path: str) -> None:
        import keras  # lazy: loads TensorFlow, needed only where a model runs

        self.backbone = get_backbone(backbone)
        model = keras_model(self.backbone.name, weights_path)
        pools = [layer for layer in model.layers if isinstance(layer, keras.layers.GlobalAveragePooling2D)]
        if not pools:
            raise ValueError(f"{self.backbone.name}: no GlobalAveragePooling2D layer to take the map from")
        self.model = keras.Model(model.inputs, [pools[-1].input, model.output])

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        maps, pooled = self.model.predict_on_batch(self.backbone.preprocess(images))
        return np.asarray(maps, dtype=np.float32), np.asarray(pooled, dtype=np.float32)


def _scale(head: SparkFreeHead) -> np.ndarray | float:
    """d (scaled feature) / d (feature): 1/std (0 where std is 0), or 1 without a scaler."""
    std = None if head.scaler is None else head.scaler.std
    if std is None:
        return 1.0
    return np.where(std != 0, 1.0 / np.where(std != 0, std, 1.0), 0.0)


def channel_weights(head: SparkFreeHead, features: np.ndarray, class_index: int,
                    importances: np.ndarray | None = None) -> tuple[np.ndarray, str]:
    """(one weight per feature channel for `class_index`, method) — see the module docstring."""
    x = np.asarray(features, dtype=float).ravel()
    weights, method = _weights(head.classifier, head, x, class_index, importances)
    return np.asarray(weights, dtype=float), method


def _weights(clf: Classifier, head: SparkFreeHead, x: np.ndarray, c: int,
             importances: np.ndarray | None) -> tuple[np.ndarray, str]:
    scale = _scale(head)
    if isinstance(clf, Logistic):
        if clf.multinomial:
            return (clf.coef[c] - clf.coef.mean(axis=0)) * scale, EXACT
        return (1.0 if c == 1 else -1.0) * clf.coef[0] * scale, EXACT
    if isinstance(clf, LinearSVC):
        return (1.0 if c == 1 else -1.0) * clf.coef * scale, EXACT
    if isinstance(clf, MLP):
        return mlp_gradient(clf, head, x, c), GRADIENT
    if isinstance(clf, OneVsRest):  # model c says "class c" with its class 1
        row = None if importances is None or len(importances) != clf.n_classes else importances[c:c + 1]
        return _weights(clf.models[c], head, x, 1, row)
    if isinstance(clf, Trees):
        if importances is not None:
            imp = np.asarray(importances, dtype=float)
            return (imp[c] if imp.shape[0] > 1 else imp[0]), APPROXIMATE
        counts = np.bincount(clf.feature[clf.feature >= 0], minlength=head.n_features).astype(float)
        return counts / max(counts.sum(), 1.0), APPROXIMATE
    raise ValueError(f"no heatmap rule for a {clf.kind} head")


def mlp_gradient(mlp: MLP, head: SparkFreeHead, x: np.ndarray, c: int) -> np.ndarray:
    """d softmax(raw)[c] / d x for one feature vector x, through the scaler, sigmoid layers and softmax.

    The layers are the head's own (`MLP.affine_layers`, the packing its `raw` reads), so the gradient is of
    exactly the function that predicts.
    """
    z = x if head.scaler is None else head.scaler.apply(x[None, :])[0]
    affine = mlp.affine_layers()
    layers, acts = [], [z]
    for i, (w, b) in enumerate(affine):
        out = b + acts[-1] @ w
        if i < len(affine) - 1:
            out = 1.0 / (1.0 + np.exp(-out))
        layers.append(w)
        acts.append(out)
    raw = acts[-1]
    e = np.exp(raw - raw.max())
    p = e / e.sum()
    grad = p[c] * ((np.arange(len(p)) == c) - p)  # d p_c / d raw
    for i in range(len(layers) - 1, -1, -1):
        grad = layers[i] @ grad  # d / d (this layer's input)
        if i > 0:  # that input is a sigmoid output
            a = acts[i]
            grad = grad * a * (1.0 - a)
    return grad * _scale(head)


def cam(maps: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(h, w, d) feature map, (d,) weights -> (h, w) map: positive evidence only, scaled to [0, 1]
    (all zero when there is none)."""
    raw = np.tensordot(np.asarray(maps, dtype=float), weights, axes=([2], [0]))
    pos = np.maximum(raw, 0.0)
    top = pos.max()
    return pos / top if top > 0 else pos


def overlay_png(gray: np.ndarray, heat: np.ndarray, alpha: float = OVERLAY_ALPHA) -> bytes:
    """The map upsampled (bilinear) onto the grayscale image, `jet`-coloured, blended by its strength."""
    from matplotlib import colormaps  # lazy: ~0.5 s at every CLI start otherwise (registry only, no pyplot)

    h, w = gray.shape
    up = Image.fromarray(np.asarray(heat, dtype=np.float32)).resize((w, h),
                                                                              Image.Resampling.BILINEAR)
    level = np.clip(np.asarray(up), 0.0, 1.0)
    colour = colormaps["jet"](level)[..., :3] * 255.0
    base = np.repeat(gray[..., None].astype(float), 3, axis=2)
    mix = (alpha * level)[..., None]
    out = np.clip(base * (1.0 - mix) + colour * mix, 0, 255).round().astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(out).save(buf, format="PNG")
    return buf.getvalue()


def heatmap_for(head: SparkFreeHead, maps: np.ndarray, features: np.ndarray, class_index: int,
                importances: np.ndarray | None, gray: np.ndarray) -> tuple[bytes, str]:
    """(PNG bytes, method) for one image's feature map (h, w, d) and its pooled features."""
    weights, method = channel_weights(head, features, class_index, importances)
    return overlay_png(gray, cam(maps, weights)), method


def describe(method: str) -> dict[str, Any]:
    """What the JSON says about a map: its method and whether it is exact for this head."""
    return {"heatmap_method": method, "heatmap_exact": method != APPROXIMATE}
