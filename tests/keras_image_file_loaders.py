"""Image loaders for the Keras-image-file tests, in a module of their own: a saved stage names its loader by
`module:qualname`, and the Spark workers and the fine-tune's TensorFlow workers import it (the tests ship
this file with `addPyFile`, as a user ships theirs with --py-files)."""

from __future__ import annotations

import numpy as np
from PIL import Image

SIZE = 16


def load_rgb16(path: str) -> np.ndarray:
    """sparkdl's loader contract: a file path -> a batch of one preprocessed image, (1, 16, 16, 3) in
    [-1, 1]."""
    image = Image.open(path).convert("RGB").resize((SIZE, SIZE), Image.BILINEAR)
    return np.asarray(image, dtype=np.float32)[None] / 127.5 - 1.0
