"""The output folder is the ledger: what is in it was scored, what is not was not.

Layout (readers see a plain Parquet dataset partitioned by `score_date`; Spark ignores `_`-prefixed folders):
```
OUTPUT/score_date=2025-01-31/part-<model>-<version>-<chunk uuid>.parquet   one file per committed chunk
OUTPUT/_tmp/<model key>/<run id>/chunk-<uuid>/                               each run stages chunks here
OUTPUT/_leases/<model key>/                                                  one run per model (lease.py)
```
A chunk is committed by ONE rename of ONE complete Parquet file into its `score_date=` folder. A rename is
atomic on local disks and HDFS, and on object stores the destination object appears whole or not at all,
so a run killed at any point (even `kill -9`) leaves each chunk either fully in the dataset or only in its
own `_tmp` folder. There is no second bookkeeping file that could disagree with the data.

Overlapping runs of one model into one output are kept apart by the lease: a run commits only while it
holds the lease (checked right before each rename), and only the lease holder deletes `_tmp` folders of
other runs, which are then dead or past their lease and can no longer commit.

Every row records `decoder`, the decoder stack that read it (`decode.decoder_signature()`: this package,
Pillow, pydicom and its pixel-data plugins). A file quarantined because no decoder could read it
(`RETRYABLE_REASONS`: `unsupported_format`, `dicom_unsupported`) counts as done only while that signature is
unchanged; after e.g. installing a JPEG-LS plugin the next run scores it again and commits a NEW row. The
earlier quarantine row stays in its chunk (committed files are never rewritten: that would be a second,
non-atomic commit), so an image can have more than one row per model: the newest `scored_at` is current
(`latest_rows` gives readers that view). Any other quarantine reason is the file's own fault and final. The
signature is the driver's: driver and executors are expected to share one environment (same image/venv).
"""

from __future__ import annotations

import logging
import time
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from pyspark.sql import Window
from pyspark.sql import functions as F

from xray_spark import paths
from xray_spark.data.decode import decoder_signature
from xray_spark.data.pixels import STALE_REASON
from xray_spark.errors import UserError
from xray_spark.scoring.lease import Lease
from xray_spark.spark_io import HadoopFS, listed_on_driver

if TYPE_CHECKING:
    from collections.abc import Iterator

    from pyspark.sql import DataFrame, SparkSession

    from xray_spark.models.loading import ModelRef

log = logging.getLogger(__name__)

LEDGER_SCHEMA = (
    "path string, sha256 string, model_name string, model_version string, model_uri string, "
    "file_size long, modified_at timestamp, score_date string"
)
LEDGER_COLUMNS = ("path", "sha256", "file_size", "modified_at")
# read with the ledger: files written before `decoder` existed read it as null (-> retried once if retryable)
_OUTCOME_SCHEMA = "status string, reason string, decoder string"
# quarantine reasons that say "no installed decoder reads this", not "these bytes are broken"
RETRYABLE_REASONS = ("unsupported_format", "dicom_unsupported")
# publish() names each chunk `part-<file_key>-<uuid4 hex>.parquet`; this glob matches exactly that id
_CHUNK_ID_GLOB = "[0-9a-f]" * 32


class OutputStore:
    """One model's view of the output folder: its ledger, its temp space, its lease and its commits."""

    def __init__(self, spark: SparkSession, output_dir: str, ref: ModelRef) -> None:
        self.spark = spark
        self.fs = HadoopFS(spark)
        self.root = paths.qualify(spark, output_dir)
        if self.fs.exists(self.root) and not self.fs.is_dir(self.root):
            raise UserError(f"--output {output_dir} exists and is not a folder")
        self.ref = ref
        self.key = ref.file_key()
        self.tmp_root = paths.join(self.root, f"_tmp/{self.key}")
        self.run_id = f"{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
        self.run_tmp = paths.join(self.tmp_root, self.run_id)
        self.lease: Lease | None = None
        self.decoder = decoder_signature()  # stamped on every row (run.py) and compared by ledger()

    # -------------------------------------------------------------------------------------------- lifecycle

    @contextmanager
    def leased(self, *, ttl: float, settle: float) -> Iterator[Lease]:
        """Hold this (output, model)'s lease for the block, or raise LeaseHeld (see lease.py)."""
        lease = Lease(self.fs, self.root, self.key, self.run_id, ttl=ttl, settle=settle)
        with lease.held():
            self.lease = lease
            try:
                yield lease
            finally:
                self.lease = None

    def clean_stale(self) -> int:
        """Delete the temp folders of other runs of this model. Only the lease holder may: any other run
        is dead, or stalled past its lease and unable to commit (its `check` fails before the rename)."""
        if self.lease is None:
            raise RuntimeError("clean_stale needs the lease")
        stale = [n for n in self.fs.list_names(self.tmp_root) if n != self.run_id]
        for name in stale:
            self.fs.delete(paths.join(self.tmp_root, name))
        if stale:
            log.info("removed %d temp folder(s) of killed runs under %s", len(stale), self.tmp_root)
        return len(stale)

    def finish(self) -> None:
        self.fs.delete(self.run_tmp)

    def scratch_dir(self) -> Path | None:
        """A local folder for this run's model download (removed with the run's temp space)."""
        local = paths.local_or_none(self.run_tmp)
        return None if local is None else local / "model"

    # ----------------------------------------------------------------------------------------------- ledger

    def ledger_glob(self) -> str:
        """This model's committed chunk files and nothing else (see `publish` for the name).

        The key is followed by `-` and exactly 32 hex digits, so key `m-1` never matches `m-10`'s files,
        nor those of a longer key that starts with `m-1-` (uri-keyed models add a `-<sha1>` component).
        """
        return paths.join(paths.glob_escape(self.root),
                          f"score_date=*/part-{self.key}-{_CHUNK_ID_GLOB}.parquet")

    def committed_files(self) -> list[str]:
        """The files `ledger_glob()` matches (qualified URIs, sorted), globbed once on the driver."""
        jvm = self.spark.sparkContext._jvm
        pattern = jvm.org.apache.hadoop.fs.Path(self.ledger_glob())
        found = pattern.getFileSystem(self.spark.sparkContext._jsc.hadoopConfiguration()).globStatus(pattern)
        return sorted(str(s.getPath().toString()) for s in (found or []) if s.isFile())

    def ledger(self) -> DataFrame:
        """What this model already scored: path, sha256, file_size, modified_at (one row per scored file).

        Rows quarantined for a reason in RETRYABLE_REASONS under another decoder signature are left out, so
        the plan treats those files as new (see the module docstring).
        Reads only this model's chunk files, never those of other models and versions sharing the output, so
        a run costs what this model has scored plus what is new. The glob is resolved here rather than by
        Spark: no files is an empty ledger (Spark fails on an empty glob), and Spark's streaming-metadata
        probe of a single glob path logs a stack trace. `basePath` keeps `score_date` a column.
        """
        files = self.committed_files() if self.fs.exists(self.root) else []
        log.debug("ledger of %s: %d chunk file(s)", self.key, len(files))
        if not files:
            return self.spark.createDataFrame([], LEDGER_SCHEMA).select(*LEDGER_COLUMNS)
        with listed_on_driver(self.spark, files):
            df = (self.spark.read.schema(f"{LEDGER_SCHEMA}, {_OUTCOME_SCHEMA}").option("basePath", self.root)
                  .parquet(*[paths.glob_escape(f) for f in files]))
        # pushed-down guard for model names that file_key() makes alike (`a b` and `a_b` both give `a_b`)
        for col, value in self.ref.ledger_key().items():
            df = df.where(F.col(col) == F.lit(value))
        return df.where(~F.coalesce(retry_under(self.decoder), F.lit(False))).select(*LEDGER_COLUMNS)

    # ----------------------------------------------------------------------------------------------- commit

    def stage(self, rows: DataFrame) -> str | None:
        """Write `rows` (ONE partition: the caller picks coalesce or repartition) as one Parquet file in
        this run's temp space. Returns the file, or None when Spark wrote no data file."""
        tmp = paths.join(self.run_tmp, f"chunk-{uuid.uuid4().hex}")
        rows.write.mode("error").option("maxRecordsPerFile", 0).option("compression", "snappy").parquet(tmp)
        parts = [n for n in self.fs.list_names(tmp) if n.startswith("part-") and n.endswith(".parquet")]
        if len(parts) > 1:
            raise RuntimeError(f"expected one Parquet file in {tmp}, found {len(parts)}")
        return paths.join(tmp, parts[0]) if parts else None

    def publish(self, staged: str, scored_at: datetime) -> str:
        """The commit: ONE rename of a complete file into the dataset (atomic; see the module docstring)."""
        day = paths.join(self.root, f"score_date={scored_at.astimezone(timezone.utc):%Y-%m-%d}")
        final = paths.join(day, f"part-{self.key}-{uuid.uuid4().hex}.parquet")  # named for ledger_glob()
        self.fs.mkdirs(day)
        if self.lease is None:
            raise RuntimeError("publish needs the lease")
        self.lease.check()  # a run that lost its lease must not commit beside the one that took it over
        self.fs.rename(staged, final)  # <- the commit point
        self.fs.delete(paths.parent(staged))
        return final

    def discard(self, staged: str) -> None:
        self.fs.delete(paths.parent(staged))

    def commit(self, rows: DataFrame, scored_at: datetime) -> str | None:
        """stage + publish for callers that know `rows` is not empty."""
        t0 = time.time()
        staged = self.stage(rows.coalesce(1))
        if staged is None:
            return None
        final = self.publish(staged, scored_at)
        log.debug("committed %s in %.1fs", final, time.time() - t0)
        return final


def retry_under(decoder: str):
    """True for rows that a run with decoder signature `decoder` must score again: quarantined because no
    decoder could read the file, by a different decoder stack (or one not recorded); or quarantined with
    STALE_REASON (`decode_failed`: a reason that stood for any fault, image or not; no decoder writes it)."""
    code = F.substring_index(F.col("reason"), ":", 1)
    return (F.col("status") == "quarantined") & (
        (code.isin(*RETRYABLE_REASONS) & ~F.col("decoder").eqNullSafe(F.lit(decoder)))
        | (code == STALE_REASON))


def latest_rows(rows: DataFrame) -> DataFrame:
    """The current row per model and image: the newest `scored_at` (a rescored file has an older quarantine
    row too; see the module docstring). An image is its sha256, or its path where no bytes were read."""
    image = F.coalesce(F.col("sha256"), F.col("path"))
    newest = Window.partitionBy("model_name", "model_version", "model_uri", image).orderBy(
        F.col("scored_at").desc())
    return rows.withColumn("__n", F.row_number().over(newest)).where(F.col("__n") == 1).drop("__n")
