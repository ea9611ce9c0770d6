"""Registry of ImageNet backbones: name -> Keras constructor, input size, preprocessing, feature dim,
weights file.

Why a registry: the featurizer, the weights resolver, the feature cache and the benchmark must agree on
every fact about a backbone (input size, which `preprocess_input`, which weights file and its hash). One
frozen record per backbone keeps them in one place.

Weights facts come from Keras' own source (keras/src/applications/*.py, Keras 3.15): the "notop" file
name, its URL under `https://storage.googleapis.com/tensorflow/keras-applications/`, and the `file_hash`
Keras passes to `keras.utils.get_file`. Every one of the six notop hashes Keras publishes for these models
is 32 hex digits, which `get_file(hash_algorithm="auto")` treats as **MD5** (64 digits would be SHA-256).
So we verify these files with MD5, because that is the only digest their publisher gives; `hash_algorithm`
is stored per entry so a SHA-256-published file (e.g. EfficientNet's) can be added without code changes.

All models are built with `include_top=False, pooling="avg"`: the output is the global-average-pooled
last feature map (2048 for ResNet50/InceptionV3/Xception, 512 for VGG, 1024 for DenseNet121). sparkdl's
InceptionV3 featurizer returned the *unpooled* 8x8x2048 map flattened to a 131072-long vector; ours is
pooled, 64x smaller, and what the DeepImageFeaturizer papers' downstream heads actually use.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from xray_spark.errors import UserError

if TYPE_CHECKING:
    import keras  # lazy: loads TensorFlow, needed only where a model runs

KERAS_WEIGHTS_BASE_URL = "https://storage.googleapis.com/tensorflow/keras-applications/"


@dataclass(frozen=True)
class Backbone:
    """Everything the pipeline needs to know about one ImageNet backbone."""

    name: str  # canonical spelling, as sparkdl's `modelName`
    module: str  # keras.applications submodule holding the constructor and its preprocess_input
    constructor: str  # class-like constructor name in that module
    input_size: int  # square input side in pixels
    feature_dim: int  # length of the pooled feature vector
    preprocess_mode: str  # what the module's preprocess_input does: caffe | tf | torch (for docs/tests)
    weights_file: str  # Keras' notop weights file name (also the cache file name)
    weights_url_path: str  # path of that file below KERAS_WEIGHTS_BASE_URL
    weights_hash: str  # the digest Keras publishes for that file
    hash_algorithm: str  # "md5" or "sha256": the algorithm that published digest uses
    include_top: bool = False  # the ImageNet classifier (DeepImagePredictor), not the pooled features

    def keras_module(self) -> Any:
        return importlib.import_module(self.module)

    def build(self, weights: str | None = None) -> keras.Model:
        """The feature extractor: `include_top=False, pooling="avg"`, fixed square input, given weights
        file."""
        ctor = getattr(self.keras_module(), self.constructor)
        if self.include_top:  # 1000 softmax probabilities, as Keras' ImageNet classifier
            return ctor(include_top=True, weights=weights, input_shape=(self.input_size, self.input_size, 3))
        return ctor(
            include_top=False,
            weights=weights,
            input_shape=(self.input_size, self.input_size, 3),
            pooling="avg",
        )

    def preprocess(self, images: np.ndarray) -> np.ndarray:
        """uint8 RGB (N, H, W, 3) -> float32 model input, via this model's own `preprocess_input`."""
        x = np.asarray(images, dtype=np.float32)  # always a copy for uint8: preprocess_input works in place
        return self.keras_module().preprocess_input(x)


def _entry(name: str, module: str, size: int, dim: int, mode: str, folder: str, file: str,
           md5: str) -> Backbone:
    return Backbone(
        name=name,
        module=f"keras.applications.{module}",
        constructor=name,
        input_size=size,
        feature_dim=dim,
        preprocess_mode=mode,
        weights_file=file,
        weights_url_path=f"{folder}/{file}",
        weights_hash=md5,
        hash_algorithm="md5",
    )


_BUILTIN: dict[str, Backbone] = {
    b.name.lower(): b
    for b in (
        _entry("ResNet50", "resnet50", 224, 2048, "caffe", "resnet",
               "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5", "4d473c1dd8becc155b73f8504c6f6626"),
        _entry("InceptionV3", "inception_v3", 299, 2048, "tf", "inception_v3",
               "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
               "bcbd6486424b2319ff4ef7d526e38f63"),
        _entry("Xception", "xception", 299, 2048, "tf", "xception",
               "xception_weights_tf_dim_ordering_tf_kernels_notop.h5", "b0042744bf5b25fce3cb969f33bebb97"),
        _entry("VGG16", "vgg16", 224, 512, "caffe", "vgg16",
               "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5", "6d6bbae143d832006294945121d1f1fc"),
        _entry("VGG19", "vgg19", 224, 512, "caffe", "vgg19",
               "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5", "253f8cb515780f3b799900260a226db6"),
        _entry("DenseNet121", "densenet", 224, 1024, "torch", "densenet",
               "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5", "30ee3e1110167f948a6b9946edeeb738"),
    )
}
_registry: dict[str, Backbone] = dict(_BUILTIN)

# The classifier files (include_top=True) Keras publishes beside each notop file, with its MD5 (Keras 3.15
# keras/src/applications/*.py): DeepImagePredictor's models, registered as "<Backbone>-top".
TOP_SUFFIX = "-top"
_TOP_MD5 = {
    "ResNet50": "2cb95161c43110f7111970584f804107", "InceptionV3": "9a0d58056eeedaa3f26cb7ebd46da564",
    "Xception": "0a58e3b7378bc2990ea3b43d5981f1f6", "VGG16": "64373286793e3c8b2b4e3219cbf3544b",
    "VGG19": "cbe5617147190e668d6c5d5026f83318", "DenseNet121": "9d60b8095a5708f2dcce2bca79d332c7",
}


def _with_top(bb: Backbone) -> Backbone:
    return dataclasses.replace(
        bb, name=bb.name + TOP_SUFFIX, feature_dim=1000, include_top=True,
        weights_file=bb.weights_file.replace("_notop.h5", ".h5"),
        weights_url_path=bb.weights_url_path.replace("_notop.h5", ".h5"), weights_hash=_TOP_MD5[bb.name],
    )


_classifiers: dict[str, Backbone] = {(b.name + TOP_SUFFIX).lower(): _with_top(b) for b in _BUILTIN.values()}


def backbone_names() -> list[str]:
    """Canonical names, in registry order (ResNet50 and InceptionV3 first)."""
    return [b.name for b in _registry.values()]


def get_backbone(name: str) -> Backbone:
    """Look a backbone up by name, ignoring case; an unknown name is a user error listing the choices."""
    key = str(name).strip().lower()
    found = _registry.get(key) or _classifiers.get(key)
    if found is None:
        raise UserError(f"unknown backbone {name!r}; choose one of {', '.join(backbone_names())}")
    return found


def classifier(name: str) -> Backbone:
    """The ImageNet classifier of a backbone (include_top=True, 1000 probabilities): `classifier("ResNet50")`
    is registered as "ResNet50-top", so engines, weights and pinning look it up by name as any backbone."""
    return _classifiers[get_backbone(name).name.lower() + TOP_SUFFIX]
