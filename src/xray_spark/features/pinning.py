"""Weights pinning: a model remembers the exact weights it was trained with and refuses any others.

Why: a spec (`imagenet`, `none`, a path) does not name the weights for good. A path whose file was replaced,
a Keras upgrade that changes the seeded random init, or a cluster with another copy would silently change
what "version N" predicts. `train` therefore stores a digest of the weights on the featurizer
(`weightsSha256`), and every transform checks that the weights it resolved have that digest.

The digest is over the weight TENSORS (dtype, shape and values of every variable, in the backbone's order),
not over the file: Keras' `.weights.h5` files carry HDF5 timestamps, so saving the same seeded init twice
gives two different file hashes. The tensors are the same, so their digest is a stable identity for
`none:seed=N` as much as for ImageNet or a user's file. Computing it means loading the file into the
backbone once (a few seconds); it is memoised per machine under the weights cache, keyed by the file's own
sha256, so later runs pay one file hash (itself memoised by size and mtime).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from xray_spark.errors import UserError
from xray_spark.features.backbones import get_backbone
from xray_spark.features.weights import ResolvedWeights, file_digest, resolve_weights, weights_cache_dir

if TYPE_CHECKING:
    import keras
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)


def tensor_digest(model: keras.Model) -> str:
    """sha256 over every weight variable's dtype, shape and bytes, in the model's order."""
    h = hashlib.sha256()
    for var in model.weights:
        arr = np.ascontiguousarray(np.asarray(var.numpy()))
        h.update(f"{arr.dtype.str}{arr.shape};".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def weights_sha256(resolved: ResolvedWeights, cache_dir: str | os.PathLike | None = None) -> str:
    """The tensor digest of resolved weights (driver side), memoised by (backbone, file sha256)."""
    file_sha = file_digest(resolved.local_path, "sha256")
    memo = weights_cache_dir(cache_dir) / "digests" / f"{resolved.backbone}-{file_sha}.txt"
    if memo.is_file():
        return memo.read_text().strip()
    log.info("computing the tensor digest of %s weights %s (once per file on this machine)",
             resolved.backbone, resolved.spec)
    digest = tensor_digest(_load(resolved.backbone, resolved.local_path))
    memo.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".digest-", dir=memo.parent)
    with os.fdopen(fd, "w") as f:
        f.write(digest)
    os.replace(tmp, memo)
    return digest


def check_pinned(resolved: ResolvedWeights, pinned: str, cache_dir: str | os.PathLike | None = None) -> None:
    """Refuse weights whose tensors differ from the ones the model was trained with (one clear line)."""
    actual = weights_sha256(resolved, cache_dir)
    if actual != pinned:
        raise UserError(
            f"refusing weights {resolved.spec!r} for {resolved.backbone}: their tensors have sha256 "
            f"{actual[:16]}..., but this model was trained with {pinned[:16]}... (a replaced weights file, "
            "another Keras version's random init, or another download); score with the weights the model "
            "was trained with, or train again"
        )


def carry_weights(spark: SparkSession | None, backbone: str, weights: str,
                  fingerprint: str | None = None) -> tuple[str, str]:
    """Log the backbone's weights file once in the active MLflow run, under its tensor digest, and return
    (its `runs:/` URI, the digest): every model of the run names that copy and pins the digest, so a
    registered model scores on a cluster that never saw this machine's weights cache, and never with other
    weights. Shared by `train` (ImageNet / random / a file) and `finetune` (the fine-tuned backbone).

    `fingerprint`: the weights fingerprint the run featurized with; weights that resolve to another one now
    (a file replaced during the run) are refused. `runs:/` and not the artifact store's own URI: that one may
    be percent-encoded (file:) or a scheme only MLflow's clients read (s3:, gs:, dbfs:/databricks/...)."""
    import mlflow  # lazy: a slow import that argument checks skip (and featurizing never needs it)

    resolved = resolve_weights(backbone, weights, spark=spark)
    if fingerprint is not None and resolved.fingerprint != fingerprint:
        raise UserError(f"{backbone} weights {weights!r} changed during this run ({fingerprint} when "
                        f"featurized, {resolved.fingerprint} now): train again with a file that stays put")
    sha = weights_sha256(resolved)
    folder = f"weights/{resolved.backbone}/{sha}"
    mlflow.log_artifact(str(resolved.local_path), folder)
    uri = f"runs:/{mlflow.active_run().info.run_id}/{folder}/{resolved.local_path.name}"
    log.info("%s weights %s: tensors sha256 %s, carried in the run", resolved.backbone, resolved.kind,
             sha[:16])
    return uri, sha


def _load(backbone: str, path: Path) -> Any:
    """The backbone with `path` loaded, built fresh (not the worker's cached model: this one is dropped)."""
    model = get_backbone(backbone).build(weights=None)
    model.load_weights(str(path))
    return model


def check_file_pinned(resolved: ResolvedWeights, pinned: str) -> None:
    """Refuse a model file whose bytes differ from the pinned sha256 (a user's saved Keras model: its own
    file is its identity, as sparkdl's `modelFile` named it; the same bytes anywhere pass)."""
    actual = resolved.fingerprint.removeprefix("file:")
    if actual != pinned.removeprefix("file:"):
        raise UserError(
            f"refusing modelFile {resolved.spec!r}: its sha256 is {actual[:16]}..., but this stage was "
            f"pinned to {pinned.removeprefix('file:')[:16]}... (the file was replaced since the stage was "
            "fitted or saved); point modelFile at the file it was pinned to, or clear the pin with "
            "setModelSha256('')"
        )
