"""Mild augmentation of uint8 chest films in NumPy/PIL: rotation, scale and contrast, never flips.

Why not Keras' Random* layers: they keep seed state in variables, which under MultiWorkerMirroredStrategy
become distributed variables updated inside replica steps; here each worker augments its own batch on the
host before TensorFlow sees it, with its own seeded generator, and the same code is unit-testable.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from xray_spark.finetune.config import FinetuneConfig


def augment_one(image: np.ndarray, rng: np.random.Generator, cfg: FinetuneConfig) -> np.ndarray:
    """(S, S, 3) uint8 -> the same shape: rotate by U(-r, r) degrees and zoom by U(1-s, 1+s) about the
    centre (edges filled with black, as a film's border), then scale contrast by U(1-c, 1+c) about the
    mean. Gray stays gray: the three channels are the same luminance."""
    size = image.shape[0]
    angle = rng.uniform(-cfg.rotation_degrees, cfg.rotation_degrees)
    zoom = rng.uniform(1 - cfg.scale, 1 + cfg.scale)
    gray = Image.fromarray(np.ascontiguousarray(image[..., 0]))
    if angle or zoom != 1:
        gray = gray.rotate(angle, resample=Image.BILINEAR)
        if zoom != 1:
            side = max(1, round(size / zoom))
            offset = (size - side) / 2
            gray = gray.transform((size, size), Image.EXTENT, (offset, offset, offset + side, offset + side),
                                  resample=Image.BILINEAR)
    x = np.asarray(gray, dtype=np.float32)
    factor = rng.uniform(1 - cfg.contrast, 1 + cfg.contrast)
    x = np.clip((x - x.mean()) * factor + x.mean(), 0, 255).astype(np.uint8)
    return np.repeat(x[..., None], 3, axis=-1)


def augment_batch(images: np.ndarray, rng: np.random.Generator, cfg: FinetuneConfig) -> np.ndarray:
    return np.stack([augment_one(img, rng, cfg) for img in images]) if len(images) else images
