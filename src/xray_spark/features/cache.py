"""Feature cache: Parquet keyed by (content sha256, backbone, weights fingerprint, precision); a re-run
computes only what is missing.

Why: featurizing is the expensive step (seconds per image on a laptop CPU), while heads, tasks and splits
are cheap and re-run often. Keying by the *content* hash (not the path) means renamed or re-ingested files
hit the cache, and keying by the weights fingerprint means a different weights file never serves stale
features. The precision (fp32 | bf16 | int8 with its calibration sample) is part of the key, and rows made
at another precision than asked are refused: cache_precision.py says why and how older caches are treated.

Layout: `<cache_dir>/<Backbone>/<fingerprint, made path-safe>/<precision key>/f32/part-<run>-<n>.parquet`, one
set of part files per run that added rows. Features are stored as float32 arrays (half the bytes of MLlib's
double vectors) and handed to callers as vectors. A run writes to `_staging-<run>/` (ignored by Parquet
readers because of the leading underscore), then renames each finished part file into place: a crash leaves
either whole part files (valid rows: the next run skips them) or an ignored staging folder, never half a file.
Works on any Hadoop filesystem Spark can write (local, HDFS, DBFS, object stores with atomic rename semantics
per file).
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pyspark.ml.functions import array_to_vector, vector_to_array
from pyspark.ml.linalg import VectorUDT
from pyspark.sql import functions as F
from pyspark.sql.types import StringType, StructField, StructType

from xray_spark import paths
from xray_spark.data.pixels import STALE_REASON
from xray_spark.errors import UserError
from xray_spark.features.backbones import get_backbone
from xray_spark.features.cache_precision import (
    check_precisions,
    features_precision,
    featurizer_params,
    precision_key,
    warn_legacy,
)
from xray_spark.features.calibration import Calibration
from xray_spark.features.featurizer import DeepImageFeaturizer
from xray_spark.features.weights import weights_fingerprint
from xray_spark.spark_io import HadoopFS, Progress, balanced_partitions

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

CACHE_COLUMNS = ("sha256", "backbone", "weights_fingerprint", "features", "featurize_error", "engine")
# upper bound: progress (an accumulator) moves as tasks finish, so a few hundred images still make several
# tasks per core; a Python worker keeps its model across tasks, so a task costs little more than its images
IMAGES_PER_TASK = 64
BROADCAST_KEYS = 1_000_000  # missing sha256 keys (64 chars each) broadcast below this count
CACHE_FORMAT = "f32"  # layout version: features as array<float>


@dataclass(frozen=True)
class CacheRun:
    """What one featurize_to_cache call did (for logs, tests and the benchmark)."""

    path: str
    fingerprint: str
    requested: int  # distinct sha256 values asked for
    computed: int  # distinct sha256 values featurized by this run (0 when everything was cached)
    failed: int  # of those, how many could not be decoded
    seconds: float
    precision: str = "fp32"  # fp32 | bf16 | int8: what every row of the result was made at


def safe_fingerprint(fingerprint: str) -> str:
    """A fingerprint as one path segment: `none:seed=0:keras=3.15.1` -> `none_seed=0_keras=3.15.1`.

    `=` is kept, as in the folders already written. A fingerprint (`imagenet:<digest>`,
    `none:seed=N:keras=<version>`, `file:<sha256>`) never holds two characters in a row that are replaced,
    so one `_` per run is one `_` per character: the same folder names."""
    return paths.safe_name(fingerprint, keep="._=-")


def cache_path(cache_dir: str, backbone: str, fingerprint: str, precision: str | None = None) -> str:
    """The folder of one (backbone, weights, precision key); `precision` None: the layout before precisions
    were recorded (cache_precision.warn_legacy), never read."""
    folder = f"{str(cache_dir).rstrip('/')}/{get_backbone(backbone).name}/{safe_fingerprint(fingerprint)}"
    return f"{folder}/{precision}/{CACHE_FORMAT}" if precision else f"{folder}/{CACHE_FORMAT}"


def featurize_to_cache(
    spark: SparkSession, images: DataFrame, backbone: str, weights: str, cache_dir: str, *,
    batch_size: int = 32, progress: bool = True, keys: DataFrame | None = None, precision: str | None = None,
    calibration: Calibration | None = None,
) -> DataFrame:
    """Features for the wanted sha256 keys, computing only those not cached yet from `images` (columns
    sha256, content).

    `keys` (one column sha256) names what is wanted; without it, every sha256 of `images` (which then costs a
    pass over the bytes). `precision` (fp32 | bf16 | int8; None: engine 'auto''s on the driver) is one for
    the whole result; int8 needs `calibration`. Returns (sha256, backbone, weights_fingerprint, features,
    featurize_error, engine), one row per key that has features or an error. Progress (images done / total)
    is logged while computing.
    """
    return featurize_to_cache_run(
        spark, images, backbone, weights, cache_dir, batch_size=batch_size, progress=progress, keys=keys,
        precision=precision, calibration=calibration,
    )[0]


def featurize_to_cache_run(
    spark: SparkSession, images: DataFrame, backbone: str, weights: str, cache_dir: str, *,
    batch_size: int = 32, progress: bool = True, keys: DataFrame | None = None, precision: str | None = None,
    calibration: Calibration | None = None,
) -> tuple[DataFrame, CacheRun]:
    """As featurize_to_cache, plus a CacheRun saying what was computed."""
    start = time.perf_counter()
    missing_cols = {"sha256", "content"} - set(images.columns)
    if missing_cols:
        raise UserError(f"images need columns sha256 and content; missing {sorted(missing_cols)}")
    bb = get_backbone(backbone)
    fingerprint = weights_fingerprint(bb.name, weights, spark=spark)
    precision = features_precision(precision)
    path = cache_path(cache_dir, bb.name, fingerprint, precision_key(precision, calibration))
    fs = HadoopFS(spark)
    warn_legacy(fs, cache_path(cache_dir, bb.name, fingerprint), path)

    keys, cached, todo, requested, n_todo = _what_to_compute(spark, fs, images, keys, path)
    failed = 0
    if n_todo == 0:
        log.info("feature cache %s: all %d images cached, nothing to compute", path, requested)
    else:
        if requested is None:
            log.info("feature cache %s: empty, featurizing all %d images", path, n_todo)
        else:
            log.info("feature cache %s: %d of %d images missing, featurizing them", path, n_todo, requested)
        written, failed = _compute_and_append(
            spark, fs, images, todo, n_todo, bb.name, weights, fingerprint, path, batch_size, progress,
            featurizer_params(precision, calibration),
        )
        if requested is None:
            requested = n_todo = written
    table = cached if n_todo == 0 else _read_cache(spark, fs, path)
    if table is None:  # nothing requested and nothing cached: an empty result with the right schema
        result = keys.limit(0).crossJoin(_empty(spark))
    else:
        result = keys.join(table.dropDuplicates(["sha256"]), "sha256", "inner").withColumn(
            "features", F.when(F.col("features").isNotNull(), array_to_vector("features")))
    run = CacheRun(path, fingerprint, requested, n_todo, failed, time.perf_counter() - start, precision)
    log.info("feature cache %s: %d requested, %d computed (%d failed) in %.1fs",
             path, run.requested, run.computed, run.failed, run.seconds)
    return result.select(*CACHE_COLUMNS), run


def _what_to_compute(
    spark: SparkSession, fs: HadoopFS, images: DataFrame, keys: DataFrame | None, path: str,
) -> tuple[DataFrame, DataFrame | None, DataFrame | None, int | None, int]:
    """(wanted keys, the cache as read (None: empty), keys to compute (None: every row of `images`), how
    many were requested (None: not counted yet), how many to compute) for the cache folder `path`."""
    given_keys = keys is not None
    if keys is None:
        keys = images.select("sha256")
    keys = keys.select("sha256").where(F.col("sha256").isNotNull()).distinct()
    cached = _read_cache(spark, fs, path)
    if cached is None and not given_keys:
        # every row of `images` is wanted and none is cached: no pass to hash and count distinct keys first,
        # so the bytes are read once (the count needs only the listing); copies of one content are computed
        # twice and stored once, and `requested` becomes the distinct rows written
        n_todo = images.count()
        return keys, None, None, 0 if n_todo == 0 else None, n_todo
    if cached is None:
        n_todo = keys.count()
        return keys, None, keys, n_todo, n_todo
    # one job counts both what was asked for and what is missing
    hits = cached.select("sha256").distinct().withColumn("_hit", F.lit(True))
    counts = keys.join(hits, "sha256", "left").agg(
        F.count(F.lit(1)).alias("requested"), F.count(F.when(F.col("_hit").isNull(), 1)).alias("missing")
    ).first()
    todo = keys.join(cached.select("sha256"), "sha256", "left_anti")
    return keys, cached, todo, int(counts["requested"]), int(counts["missing"])


def _empty(spark: SparkSession) -> DataFrame:
    schema = StructType([StructField(c, StringType()) for c in CACHE_COLUMNS[1:3]]
                        + [StructField("features", VectorUDT()),
                           StructField("featurize_error", StringType()), StructField("engine", StringType())])
    # (the result type callers see; on disk features are array<float>)
    return spark.createDataFrame([], schema)


def _read_cache(spark: SparkSession, fs: HadoopFS, path: str) -> DataFrame | None:
    """The cached rows, less those whose error is STALE_REASON (`decode_failed`, written for any fault,
    MemoryError or a lost library, not only the image's): not the image's verdict, so computed again."""
    if not fs.list_parts(path):
        return None
    rows = spark.read.parquet(path)
    return rows.where(~F.coalesce(F.col("featurize_error").startswith(STALE_REASON), F.lit(False)))


def _compute_and_append(
    spark: SparkSession, fs: HadoopFS, images: DataFrame, todo: DataFrame | None, n_todo: int, backbone: str,
    weights: str, fingerprint: str, path: str, batch_size: int, progress: bool, params: dict[str, str],
) -> tuple[int, int]:
    """Featurize the `todo` keys of `images` (every row when None); returns (rows written, rows failed)."""
    sc = spark.sparkContext
    rows = images.select("sha256", "content")
    if todo is not None:
        # broadcast keys (ids, not bytes): the image bytes are not shuffled by the filter, only once by the
        # balanced repartition below. Copies of one content under two paths are rare: n_todo sizes the tasks.
        keys = F.broadcast(todo) if n_todo <= BROADCAST_KEYS else todo
        rows = rows.join(keys, "sha256", "left_semi")
    rows = rows.repartition(balanced_partitions(n_todo, sc.defaultParallelism, IMAGES_PER_TASK))
    featurizer = DeepImageFeaturizer(
        inputCol="content", outputCol="features", modelName=backbone, weights=weights, batchSize=batch_size,
        **params,  # the run's one precision, explicitly (cache_precision.featurizer_params)
    )
    counter = sc.accumulator(0)
    featurizer._progress = counter
    out = featurizer.transform(rows).select(
        "sha256", F.lit(backbone).alias("backbone"), F.lit(fingerprint).alias("weights_fingerprint"),
        F.when(F.col("features").isNotNull(), vector_to_array("features", "float32")).alias("features"),
        "featurize_error", "engine",
    ).dropDuplicates(["sha256"])  # the same bytes under two paths: computed twice (rare), stored once
    run_id = f"{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:8]}"
    staging = f"{path}/_staging-{run_id}"
    reporter = Progress(counter, n_todo, f"featurize {backbone}") if progress else None
    try:
        out.write.mode("errorifexists").parquet(staging)
    finally:
        if reporter:
            reporter.stop()
    try:
        if fs.list_parts(staging):
            check_precisions(spark.read.parquet(staging), params["precision"], path)
    except UserError:
        fs.delete(staging)
        raise
    moved = []
    for i, part in enumerate(fs.list_parts(staging)):
        moved.append(f"{path}/part-{run_id}-{i:05d}.parquet")
        fs.rename(part, moved[-1])
    fs.delete(staging)
    written = failed = 0
    if moved:
        row = spark.read.parquet(*moved).agg(
            F.count(F.lit(1)).alias("n"), F.count("featurize_error").alias("failed")).first()
        written, failed = int(row["n"]), int(row["failed"])
    log.info("feature cache %s: appended %d rows (%d failed to decode)", path, written, failed)
    return written, failed
