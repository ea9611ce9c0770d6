"""`xray-spark featurize`: a data folder (or ingest output) -> the feature cache for one backbone.

Why a separate module from cache.py: this is CLI glue (reading the folder, checking arguments, printing a
summary); cache.py owns the keyed Parquet store.
"""

from __future__ import annotations

import logging
import time

from xray_spark import paths
from xray_spark.config import Config
from xray_spark.data.images import image_contents, load_or_ingest, ok_keys
from xray_spark.errors import UserError
from xray_spark.features.cache import featurize_to_cache

log = logging.getLogger(__name__)


def check_weights_arg(weights: str) -> str:
    """`imagenet`, `none`, an existing local file, or a Hadoop-style URI (dbfs:/, hdfs://, s3a://...)."""
    if weights in ("imagenet", "none"):
        return weights
    if not paths.is_local(weights):
        return weights  # checked through Hadoop once Spark runs
    if not paths.local_path(weights).is_file():
        raise UserError(f"--weights: expected imagenet, none or a weights file; no file at {weights}")
    return weights


def featurize_folder(spark, cfg: Config, *, data: str, backbone: str, weights: str, out_dir: str,
                     batch_size: int | None = None) -> str:
    """Ingest-or-reuse, then compute the missing features into `out_dir`; returns a one-paragraph summary."""
    check_weights_arg(weights)
    t0 = time.time()
    images, summary, _ = load_or_ingest(spark, data, out_dir, cfg)
    contents = image_contents(spark, summary, cfg)
    kwargs = {"batch_size": batch_size} if batch_size else {}
    feats = featurize_to_cache(spark, contents, backbone, weights, out_dir, keys=ok_keys(images), **kwargs)
    counts = feats.selectExpr("count(*) AS n", "count(features) AS ok").first()
    seconds = time.time() - t0
    return (
        f"featurized {counts['ok']} of {counts['n']} distinct images with {backbone} (weights {weights}) "
        f"in {seconds:.1f}s; {counts['n'] - counts['ok']} could not be decoded; cache: {out_dir}"
    )
