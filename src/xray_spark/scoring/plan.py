"""Which input files still need scoring by this model, decided by content (sha256), not by name.

Two cheap steps before any model work:
1. list the input with Spark's binaryFile source WITHOUT reading content (path, length, modificationTime);
   a file whose (path, length, mtime) already has a row for this model is skipped unread;
2. hash only the remaining files (Spark's sha2 on the bytes) and anti-join the hashes with the ledger:
   a renamed or copied file has a known sha256 and is skipped; two new copies of one content in the same
   run are scored once (the first path in sort order).
The scoring pass re-reads each candidate and re-checks its sha256, so a file that changes between the two
reads is left for the next run rather than recorded under the wrong hash.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from pyspark.errors import AnalysisException
from pyspark.sql import functions as F

from xray_spark.paths import glob_escape, is_local
from xray_spark.spark_io import HadoopFS

if TYPE_CHECKING:
    from collections.abc import Iterator

    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Candidate:
    path: str  # as binaryFile reports it (a qualified URI, e.g. file:/data/x.png)
    sha256: str
    length: int
    modified: datetime


@dataclass
class Plan:
    files_seen: int = 0
    known_by_path: int = 0  # same path, size and mtime as a scored file: not even read
    known_by_content: int = 0  # sha256 already scored (renamed/copied file) or a duplicate within this run
    too_recent: int = 0  # modified less than min_age_seconds ago (maybe still being copied): next run
    not_ready: int = 0  # vanished or unreadable while hashing: retried next run
    ignored: int = 0  # extensions that are not images (config decode.extensions)
    too_large: list[tuple[str, int, datetime]] = field(default_factory=list)
    candidates: list[Candidate] = field(default_factory=list)


_DISCOVERY = "spark.sql.sources.parallelPartitionDiscovery.threshold"


@contextmanager
def listed_on_driver(spark: SparkSession, paths: list[str]) -> Iterator[None]:
    """Around a read of these explicit files: local files are looked up on the driver. With more than 32
    explicit paths Spark otherwise lists them with a distributed job (one task per path, each costing more
    than the local lookup it replaces). Remote stores keep that job, where it saves one round trip per file.
    (The file index is built when the DataFrame is created, so the setting only needs to hold for that call.)
    """
    if not all(is_local(p) for p in paths):
        yield
        return
    previous = spark.conf.get(_DISCOVERY, None)
    spark.conf.set(_DISCOVERY, str(max(len(paths) + 1, 32)))
    try:
        yield
    finally:
        if previous is None:
            spark.conf.unset(_DISCOVERY)
        else:
            spark.conf.set(_DISCOVERY, previous)


def read_contents(spark: SparkSession, paths: list[str]) -> DataFrame:
    """binaryFile rows for exactly these files. Files deleted since listing, or unreadable, are left out
    (not an error): the caller compares what came back with what it asked for.
    """
    reader = (spark.read.format("binaryFile").option("ignoreMissingFiles", "true")
              .option("ignoreCorruptFiles", "true"))
    with listed_on_driver(spark, paths):
        try:
            return reader.load([glob_escape(p) for p in paths])
        except AnalysisException as exc:  # load() checks existence up front; drop the vanished ones once
            if "PATH_NOT_FOUND" not in str(exc):
                raise
            fs = HadoopFS(spark)
            present = [p for p in paths if fs.exists(p)]
            log.warning("%d file(s) vanished since listing; they are skipped", len(paths) - len(present))
            if not present:
                return spark.createDataFrame(
                    [], "path string, modificationTime timestamp, length long, content binary")
            return reader.load([glob_escape(p) for p in present])


def list_files(spark: SparkSession, input_dir: str, extensions: list[str]) -> DataFrame:
    """(path, length, modificationTime, is_image) for every file below input_dir; content is not read.

    Spark skips names starting with `.` or `_`, so writers can drop files atomically: copy to `.x.tmp`,
    then rename to `x.png`.
    """
    listing = (spark.read.format("binaryFile").option("recursiveFileLookup", "true").load(input_dir)
               .select("path", "length", "modificationTime"))
    if not extensions:
        return listing.withColumn("is_image", F.lit(True))
    ext = F.lower(F.regexp_extract(F.col("path"), r"\.([^./]+)$", 1))
    return listing.withColumn("is_image", ext.isin([e.lower().lstrip(".") for e in extensions]))


def plan_run(spark: SparkSession, input_dir: str, ledger: DataFrame, *, extensions: list[str],
             max_file_bytes: int, min_age_seconds: float = 0.0, verify_content: bool = False) -> Plan:
    """Decide the candidates; everything returned is small (paths and hashes), content stays on executors.

    `verify_content` hashes every file, also those whose path, size and modification time match a scored
    one (a file rewritten in place with both kept is then scored under its new content).
    """
    t0 = time.time()
    plan = Plan()
    listing = list_files(spark, input_dir, extensions)
    known = (ledger.select(F.col("path").alias("k_path"), "file_size", "modified_at",
                           F.lit(True).alias("known"))
             .distinct())
    if verify_content:
        known = known.limit(0)
    cond = ((listing["path"] == known["k_path"]) & (listing["length"] == known["file_size"])
            & (listing["modificationTime"] == known["modified_at"]))
    flagged = listing.join(known, cond, "left").select("path", "length", "modificationTime", "is_image",
                                                        F.coalesce("known", F.lit(False)).alias("known"))
    # one pass over the (cached) file index: counts for everything, rows only for what must be read
    unknown = flagged.where("is_image AND NOT known").collect()
    counts = {(r["is_image"], r["known"]): r["count"]
              for r in flagged.groupBy("is_image", "known").count().collect()}
    plan.ignored = sum(n for (img, _), n in counts.items() if not img)
    plan.known_by_path = counts.get((True, True), 0)
    plan.files_seen = plan.known_by_path + len(unknown)
    log.debug("listed %d files (%d unknown) in %.1fs", plan.files_seen, len(unknown), time.time() - t0)

    cutoff = time.time() - min_age_seconds
    to_hash: list[str] = []
    for row in unknown:
        if min_age_seconds > 0 and row["modificationTime"].timestamp() > cutoff:
            plan.too_recent += 1
        elif row["length"] > max_file_bytes:
            plan.too_large.append((row["path"], int(row["length"]), row["modificationTime"]))
        else:
            to_hash.append(row["path"])
    if to_hash:
        _hash_and_dedupe(spark, to_hash, ledger, plan)
    log.info(
        "plan: %d files seen, %d known by path, %d known by content, %d to score, %d too large, "
        "%d too recent, %d not ready (%.1fs)", plan.files_seen, plan.known_by_path, plan.known_by_content,
        len(plan.candidates), len(plan.too_large), plan.too_recent, plan.not_ready, time.time() - t0,
    )
    return plan


def _hash_and_dedupe(spark: SparkSession, paths: list[str], ledger: DataFrame, plan: Plan) -> None:
    """One job: hash the files, flag hashes this model already scored; dedupe the rest on the driver."""
    scored = (ledger.where(F.col("sha256").isNotNull()).select("sha256", F.lit(True).alias("scored"))
              .distinct())
    hashed = (read_contents(spark, paths)
              .select("path", "length", "modificationTime", F.sha2(F.col("content"), 256).alias("sha256"))
              .join(scored, "sha256", "left")
              .collect())
    plan.not_ready += len(paths) - len(hashed)
    winners: dict[str, Candidate] = {}
    for r in sorted(hashed, key=lambda r: r["path"]):
        if not r["scored"] and r["sha256"] not in winners:
            winners[r["sha256"]] = Candidate(r["path"], r["sha256"], int(r["length"]), r["modificationTime"])
    plan.known_by_content = len(hashed) - len(winners)
    plan.candidates = sorted(winners.values(), key=lambda c: c.path)


def chunks(items: list[Candidate], size: int) -> list[list[Candidate]]:
    return [items[i:i + size] for i in range(0, len(items), size)]
