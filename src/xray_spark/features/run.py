"""`xray-spark featurize`: data folders (or an ingest output) -> the feature cache for one backbone.

Why a separate module from cache.py: this is CLI glue (reading the folder, checking arguments, printing a
summary); cache.py owns the keyed Parquet store.
"""

from __future__ import annotations

import json
import logging
import time

from xray_spark import paths
from xray_spark.config import Config
from xray_spark.data.images import FolderFiles, existing_ingest, folder_files, image_contents, ok_keys
from xray_spark.errors import UserError
from xray_spark.features.cache import CacheRun, featurize_to_cache_run
from xray_spark.spark_io import HadoopFS

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
    """Compute the missing features of `data` into `out_dir`'s cache; returns a one-paragraph summary.

    An ingest of `data` (an ingest output folder given as --data, or OUT/ingest of the same listing) gives
    the ok images' keys. Raw folders are not ingested: the cache is keyed by content and needs no labels,
    dedup or split, so their files are listed once, hashed and featurized in one pass over the bytes (a later
    `train --out` the same folder ingests and finds every feature cached). An undecodable file becomes a
    cache row with its `featurize_error`; files never read are counted in the summary, not dropped silently.
    """
    check_weights_arg(weights)
    t0 = time.time()
    kwargs = {"batch_size": batch_size} if batch_size else {}
    layout = existing_ingest(spark, data, out_dir, cfg)
    if layout is not None:
        summary = json.loads(HadoopFS(spark).read_text(layout.summary_json))
        contents, keys = image_contents(spark, summary, cfg), ok_keys(spark.read.parquet(layout.images))
        _, run = featurize_to_cache_run(spark, contents, backbone, weights, out_dir, keys=keys, **kwargs)
        source, skipped = f"the ok images of the ingest at {layout.root}", ""
    else:
        files = folder_files(spark, data, cfg)
        _, run = featurize_to_cache_run(spark, files.contents, backbone, weights, out_dir, **kwargs)
        source, skipped = f"{files.read} files read", skipped_note(files, cfg.decode.max_file_bytes)
    return summary_line(run, backbone, weights, source, skipped, time.time() - t0, out_dir)


def skipped_note(files: FolderFiles, max_file_bytes: int) -> str:
    """`; N files not read (...)`, or "" when every listed file was read."""
    parts = []
    if files.too_large:
        parts.append(f"{files.too_large} over decode.max_file_bytes ({max_file_bytes} bytes)")
    if files.unlisted:
        parts.append(f"{files.unlisted} empty or `_`-named (Spark's listing skips them)")
    return f"; {files.too_large + files.unlisted} files not read: {', '.join(parts)}" if parts else ""


def summary_line(run: CacheRun, backbone: str, weights: str, source: str, skipped: str, seconds: float,
                 out_dir: str) -> str:
    """What one featurize did, in counts that reconcile: distinct contents = featurized + undecodable."""
    cached = run.requested - run.computed
    return (
        f"{run.requested} distinct images from {source} with {backbone} (weights {weights}): "
        f"{run.computed - run.failed} featurized now, {cached} already cached, {run.failed} could not be "
        f"decoded (featurize_error in the cache){skipped}; {seconds:.1f}s; cache: {out_dir}"
    )
