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
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING

import pandas as pd
from pyspark.sql import functions as F

from xray_spark.data.local_files import read_file
from xray_spark.data.unlisted import Census, unlisted_files
from xray_spark.paths import qualify
from xray_spark.spark_io import BINARY_FILE_SCHEMA, binary_files, read_binary_files

if TYPE_CHECKING:

    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Candidate:
    path: str  # as binaryFile reports it (a qualified URI, e.g. file:/data/x.png)
    sha256: str
    length: int
    modified: datetime
    read_path: str | None = None  # the local file to read, for a file Spark's listing skips


@dataclass
class Plan:
    files_seen: int = 0
    known_by_path: int = 0  # same path, size and mtime as a scored file: not even read
    known_by_content: int = 0  # sha256 already scored (renamed/copied file) or a duplicate within this run
    too_recent: int = 0  # modified less than min_age_seconds ago (maybe still being copied): next run
    not_ready: int = 0  # vanished or unreadable while hashing: retried next run
    ignored: int = 0  # extensions that are not images (config decode.extensions)
    # (path, length, mtime, reason) of files never read: over decode.max_file_bytes, special or empty files
    refused: list[tuple[str, int, datetime | None, str]] = field(default_factory=list)
    candidates: list[Candidate] = field(default_factory=list)
    local_reads: dict[str, str] = field(default_factory=dict)  # path -> local file, for what Spark skips




def read_contents(spark: SparkSession, paths: list[str], local_reads: Mapping[str, str] | None = None
                  ) -> DataFrame:
    """binaryFile rows for exactly these files. Files deleted since listing, or unreadable, are left out
    (not an error): the caller compares what came back with what it asked for. Paths in `local_reads`
    (files Spark's listing skips, see list_files) are read by Python from their local file, in a task.
    """
    local_reads = local_reads or {}
    spark_paths = [p for p in paths if p not in local_reads]
    mine = [(p, local_reads[p]) for p in paths if p in local_reads]
    frame = read_binary_files(spark, spark_paths)
    if mine:
        frame = frame.unionByName(read_local_files(spark, mine))
    return frame


def read_local_files(spark: SparkSession, files: list[tuple[str, str]]) -> DataFrame:
    """binaryFile-shaped rows for (path, local file) pairs, the bytes read by Python on executors; a file
    that cannot be read is left out, like binaryFile's ignoreCorruptFiles."""

    def read(batches):
        for pdf in batches:
            out = []
            for path, local in zip(pdf["path"], pdf["read_path"], strict=True):
                try:
                    st = os.stat(local)
                    data = read_file(local, st.st_size)
                except (OSError, ValueError):
                    continue  # vanished, changed or unreadable: the caller counts it as not returned
                out.append((path, datetime.fromtimestamp(st.st_mtime, tz=timezone.utc), len(data), data))
            yield pd.DataFrame(out, columns=["path", "modificationTime", "length", "content"])

    pairs = spark.createDataFrame(files, "path string, read_path string")
    return pairs.repartition(min(len(files), spark.sparkContext.defaultParallelism)).mapInPandas(
        read, BINARY_FILE_SCHEMA)


def list_files(spark: SparkSession, input_dir: str, extensions: list[str]) -> tuple[DataFrame, Census]:
    """(path, length, modificationTime, is_image, note, read_path, extra) for every file below input_dir,
    and the census that found the files Spark's listing skips (`extra`; unlisted.unlisted_files); content is
    not read. `note` says why a file cannot be read (a FIFO, a symlink loop, 0 bytes); `read_path` is the
    local file to read instead.

    `.`-prefixed names are skipped, so writers can drop files atomically: copy to `.x.tmp`, then rename to
    `x.png`. (Names starting with `_` are read: hospitals do not name files after Hadoop's conventions.)
    """
    listing = (binary_files(spark).option("recursiveFileLookup", "true").load(input_dir)
               .select("path", "length", "modificationTime", F.lit(None).cast("string").alias("note"),
                       F.lit(None).cast("string").alias("read_path"), F.lit(False).alias("extra")))
    census = unlisted_files(spark, input_dir, None)  # checked against the counts plan_run collects
    extra = [(u.uri, u.length, u.modified, u.note or ("empty_file: 0 bytes" if not u.length else None),
              u.read_path) for u in census.found]
    if extra:
        listing = listing.unionByName(spark.createDataFrame(
            extra, "path string, length long, modified double, note string, read_path string").select(
            "path", "length", F.timestamp_seconds("modified").alias("modificationTime"), "note", "read_path",
            F.lit(True).alias("extra")))
    if not extensions:
        return listing.withColumn("is_image", F.lit(True)), census
    ext = F.lower(F.regexp_extract(F.col("path"), r"\.([^./]+)$", 1))
    return listing.withColumn("is_image", ext.isin([e.lower().lstrip(".") for e in extensions])), census


def plan_run(spark: SparkSession, input_dir: str, ledger: DataFrame, *, extensions: list[str],
             max_file_bytes: int, min_age_seconds: float = 0.0, verify_content: bool = False) -> Plan:
    """Decide the candidates; everything returned is small (paths and hashes), content stays on executors.

    `verify_content` hashes every file, also those whose path, size and modification time match a scored
    one (a file rewritten in place with both kept is then scored under its new content).
    """
    t0 = time.time()
    plan = Plan()
    listing, census = list_files(spark, qualify(spark, input_dir), extensions)
    known = (ledger.select(F.col("path").alias("k_path"), "file_size", "modified_at",
                           F.lit(True).alias("known"))
             .distinct())
    if verify_content:
        known = known.limit(0)
    cond = ((listing["path"] == known["k_path"]) & (listing["length"] == known["file_size"])
            & (listing["modificationTime"] == known["modified_at"]))
    flagged = listing.join(known, cond, "left").select("path", "length", "modificationTime", "is_image",
                                                        F.coalesce("known", F.lit(False)).alias("known"),
                                                        "note", "read_path", "extra")
    # one pass over the (cached) file index: counts for everything, rows only for what must be read
    unknown = flagged.where("is_image AND NOT known").collect()
    by_kind = flagged.groupBy("is_image", "known", "extra").count().collect()
    census.check(sum(r["count"] for r in by_kind if not r["extra"]))
    counts: dict[tuple[bool, bool], int] = {}
    for r in by_kind:
        counts[(r["is_image"], r["known"])] = counts.get((r["is_image"], r["known"]), 0) + r["count"]
    plan.ignored = sum(n for (img, _), n in counts.items() if not img)
    plan.known_by_path = counts.get((True, True), 0)
    plan.files_seen = plan.known_by_path + len(unknown)
    log.debug("listed %d files (%d unknown) in %.1fs", plan.files_seen, len(unknown), time.time() - t0)

    cutoff = time.time() - min_age_seconds
    to_hash: list[str] = []
    for row in unknown:
        modified = row["modificationTime"]
        if min_age_seconds > 0 and modified is not None and modified.timestamp() > cutoff:
            plan.too_recent += 1
        elif row["note"] is not None:
            plan.refused.append((row["path"], int(row["length"]), modified, row["note"]))
        elif row["length"] > max_file_bytes:
            plan.refused.append((row["path"], int(row["length"]), modified,
                                 f"file_too_large: {row['length']} bytes > {max_file_bytes}"))
        else:
            to_hash.append(row["path"])
            if row["read_path"]:
                plan.local_reads[row["path"]] = row["read_path"]
    if to_hash:
        _hash_and_dedupe(spark, to_hash, ledger, plan)
    log.info(
        "plan: %d files seen, %d known by path, %d known by content, %d to score, %d refused unread, "
        "%d too recent, %d not ready (%.1fs)", plan.files_seen, plan.known_by_path, plan.known_by_content,
        len(plan.candidates), len(plan.refused), plan.too_recent, plan.not_ready, time.time() - t0,
    )
    return plan


def _hash_and_dedupe(spark: SparkSession, paths: list[str], ledger: DataFrame, plan: Plan) -> None:
    """One job: hash the files, flag hashes this model already scored; dedupe the rest on the driver."""
    scored = (ledger.where(F.col("sha256").isNotNull()).select("sha256", F.lit(True).alias("scored"))
              .distinct())
    hashed = (read_contents(spark, paths, plan.local_reads)
              .select("path", "length", "modificationTime", F.sha2(F.col("content"), 256).alias("sha256"))
              .join(scored, "sha256", "left")
              .collect())
    plan.not_ready += len(paths) - len(hashed)
    winners: dict[str, Candidate] = {}
    for r in sorted(hashed, key=lambda r: r["path"]):
        if not r["scored"] and r["sha256"] not in winners:
            winners[r["sha256"]] = Candidate(r["path"], r["sha256"], int(r["length"]), r["modificationTime"],
                                             plan.local_reads.get(r["path"]))
    plan.known_by_content = len(hashed) - len(winners)
    plan.candidates = sorted(winners.values(), key=lambda c: c.path)


def chunks(items: list[Candidate], size: int) -> list[list[Candidate]]:
    return [items[i:i + size] for i in range(0, len(items), size)]
