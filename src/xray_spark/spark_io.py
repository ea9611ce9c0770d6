"""Spark I/O helpers shared by ingest, the feature cache and scoring: Hadoop FileSystem calls and task sizing.

Why one module: they all write Parquet part files into staging folders and rename them into place, on whatever
filesystem Spark can reach, and both spread images over equal tasks before running a backbone.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xray_spark import paths

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

log = logging.getLogger(__name__)


def balanced_partitions(n_rows: int, cores: int, per_task: int) -> int:
    """A multiple of `cores` with at most `per_task` rows each, so every wave keeps every core busy.

    binaryFile packs files by bytes (e.g. 7 partitions for 210 small files: the last wave runs on one of two
    cores); a round-robin repartition to this count moves the bytes once but makes the model work equal.
    An explicit count is never coalesced by AQE.
    """
    cores = max(1, cores)
    return cores * max(1, math.ceil(n_rows / (cores * per_task)))


@contextmanager
def sql_conf(spark: SparkSession, settings: dict[str, str]) -> Iterator[None]:
    """Session SQL settings for the duration of a block, then put back as they were (planning reads them
    when an action runs, so the block must contain the action)."""
    previous = {k: spark.conf.get(k, None) for k in settings}
    for k, v in settings.items():
        spark.conf.set(k, v)
    try:
        yield
    finally:
        for k, v in previous.items():
            if v is None:
                spark.conf.unset(k)
            else:
                spark.conf.set(k, v)


def explicit_broadcasts_only(spark: SparkSession):
    """Within the block Spark broadcasts only what the code marks with `F.broadcast` (ids, component
    tables). Why: an automatic broadcast join collects its small side through the driver, and a table of
    ~1000 images with thumbnails is "small" to Spark (10 MB threshold) but per-image data the driver must
    not hold (spark.driver.maxResultSize of a few MiB fails it)."""
    return sql_conf(spark, {"spark.sql.autoBroadcastJoinThreshold": "-1"})


def static_shuffles(spark: SparkSession, n_rows: int, rows_per_partition: int = 10_000) -> dict[str, str]:
    """Settings for a run of many small actions over `n_rows` rows: adaptive execution off, and shuffle
    partitions sized from the rows (a multiple of the cores, never more than the session's setting).

    Why: adaptive execution runs every shuffle stage as a Spark job of its own and re-plans in between
    (104 jobs for a 36-image ingest); without it an action is one job. What it would still have done for
    small data -- coalesce shuffle partitions -- is done here up front from the row count."""
    sc = spark.sparkContext
    configured = int(spark.conf.get("spark.sql.shuffle.partitions", "200") or 200)
    wanted = balanced_partitions(n_rows, sc.defaultParallelism, rows_per_partition)
    return {"spark.sql.adaptive.enabled": "false",
            "spark.sql.shuffle.partitions": str(max(1, min(configured, wanted)))}


def collect_parts(parts: Mapping[str, DataFrame]) -> dict[str, list[dict[str, Any]]]:
    """Several small results (counts, hashes, int edges, a bounded sample) in one Spark job, each returned as
    its own list of rows (dicts keyed by the part's columns).

    Why: every action is a Spark job (planning, scheduling, often a Python worker start), and a small run is
    mostly those fixed costs. The parts are unioned as (part name, row as JSON) and collected once: only
    what the parts hold reaches the driver, so each part must be small or bounded."""
    from pyspark.sql import functions as F  # lazy: a core module, importable without pyspark

    if not parts:
        return {}
    packed = [df.select(F.lit(name).alias("part"), F.to_json(F.struct(*df.columns)).alias("row"))
              for name, df in parts.items()]
    types = {name: [(f.name, f.dataType.typeName()) for f in df.schema.fields] for name, df in parts.items()}
    out: dict[str, list[dict[str, Any]]] = {name: [] for name in parts}
    for r in union_all(packed).collect():
        raw = json.loads(r["row"])  # to_json leaves null fields out: they come back as None
        out[r["part"]].append({c: _from_json(raw.get(c), t) for c, t in types[r["part"]]})
    return out


def union_all(frames: Sequence[DataFrame]) -> DataFrame:
    """All rows of `frames` (the same columns in the same order) as one frame, analysed by Spark once.

    Why not `reduce(DataFrame.unionByName, frames)`: each pairwise union analyses the whole plan built so
    far again, so n parts cost n analyses of ever larger plans. One SQL UNION ALL over temporary views is
    analysed once; the views are dropped at once (the returned frame holds their plans, not their names).
    Measured on the four collects of a warm 36-image ingest: 5.1 s instead of 5.8 s (median of 5) to analyse
    and optimise; the optimiser on those plans is most of what remains."""
    if not frames:
        raise ValueError("union_all needs at least one frame")
    if len(frames) == 1:
        return frames[0]
    spark = frames[0].sparkSession
    names = [f"xray_spark_union_{uuid.uuid4().hex}" for _ in frames]
    try:
        for name, df in zip(names, frames, strict=True):
            df.createOrReplaceTempView(name)
        return spark.sql(" UNION ALL ".join(f"SELECT * FROM {name}" for name in names))
    finally:
        for name in names:
            spark.catalog.dropTempView(name)


def _from_json(value: Any, type_name: str) -> Any:
    """to_json writes NaN and infinities of double columns as strings: back to floats."""
    if value is not None and type_name in ("double", "float"):
        return float(value)
    return value


def first_rows(df: DataFrame, n: int, *order: Column) -> DataFrame:
    """The first `n` rows of `df` in `order`, numbered in that order by `_rank` (so a collect of several
    parts can put them back in order). Spark plans this as a top-k per task, not a global sort (which would
    sample its input first: one more job); its one output partition keeps the order `_rank` numbers."""
    from pyspark.sql import functions as F  # lazy: a core module, importable without pyspark

    return df.orderBy(*order).limit(n).withColumn("_rank", F.monotonically_increasing_id())


# binaryFile packs files into tasks by bytes, counting each file as at least openCostInBytes (4 MB by
# default): 100k PNGs of 15 kB would make ~3000 tasks. Counting a file as 1 MB gives ~128 files a task
# (tens of tasks per 10k images) while multi-megabyte originals still spread over many tasks.
IMAGE_FILE_OPEN_COST = {"spark.sql.files.openCostInBytes": str(1 << 20)}


class Progress:
    """Log `what: done/total images (rate)` from a Spark accumulator (updated as tasks finish) every few
    seconds, so long jobs (decoding 100k files, featurizing) show they are moving."""

    def __init__(self, counter, total: int, what: str, every: float = 10.0) -> None:
        self.counter, self.total, self.what, self.every = counter, total, what, every
        self.start = time.perf_counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="spark-progress", daemon=True)
        self._thread.start()

    def _log(self) -> None:
        done, elapsed = self.counter.value, time.perf_counter() - self.start
        rate = done / elapsed if elapsed > 0 else 0.0
        # totals may count distinct contents while a copy under a second path is processed too (rare)
        log.info("%s: %d/%d images (%.1f img/s)", self.what, done, max(done, self.total), rate)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self._log()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._log()


# Hadoop's default `file:` filesystem checks a `.NAME.crc` side file, and that name is not a valid path
# when NAME has a colon (`2020-03-01T10:22:33.png`): the read fails, and with it the job. The raw local
# filesystem has no side files. It is set per read, not for the session: FileSystem.getLocal (MLflow's
# copyToLocalFile) needs the checksummed one. Uncached instances, so Hadoop's filesystem cache keeps its
# own, and a viewfs mount over local folders builds its `file:` targets from these settings too.
_RAW_LOCAL_READ = {"fs.file.impl": "org.apache.hadoop.fs.RawLocalFileSystem",
                   "fs.file.impl.disable.cache": "true", "fs.viewfs.impl.disable.cache": "true"}


def binary_files(spark: SparkSession):
    """`spark.read.format("binaryFile")` that can open every local file name (see _RAW_LOCAL_READ), and
    leaves out a file it cannot read (vanished since listing, an I/O error) instead of failing the job:
    every caller reconciles the rows that came back with the files listed, and gives the rest a reason."""
    return (spark.read.format("binaryFile").options(**_RAW_LOCAL_READ)
            .option("ignoreMissingFiles", "true").option("ignoreCorruptFiles", "true"))


BINARY_FILE_SCHEMA = "path string, modificationTime timestamp, length long, content binary"
_DISCOVERY = "spark.sql.sources.parallelPartitionDiscovery.threshold"


@contextmanager
def listed_on_driver(spark: SparkSession, files: list[str]) -> Iterator[None]:
    """Around a read of these explicit files: local files are looked up on the driver. With more than 32
    explicit paths Spark otherwise lists them with a distributed job (one task per path, each costing more
    than the local lookup it replaces). Remote stores keep that job, where it saves one round trip per file.
    (The file index is built when the DataFrame is created, so the setting only needs to hold for that call.)
    """
    if not all(paths.is_local(f) for f in files):
        yield
        return
    previous = spark.conf.get(_DISCOVERY, None)
    spark.conf.set(_DISCOVERY, str(max(len(files) + 1, 32)))
    try:
        yield
    finally:
        if previous is None:
            spark.conf.unset(_DISCOVERY)
        else:
            spark.conf.set(_DISCOVERY, previous)



def read_binary_files(spark: SparkSession, files: list[str]) -> DataFrame:
    """binaryFile rows for exactly these qualified files (one `load`, no per-file call on the driver); files
    that vanished or cannot be read are left out, for the caller to reconcile with what it asked for."""
    if not files:
        return spark.createDataFrame([], BINARY_FILE_SCHEMA)
    from pyspark.errors import AnalysisException  # lazy: this module loads without pyspark

    reader = binary_files(spark)
    with listed_on_driver(spark, files):
        try:
            return reader.load([paths.glob_escape(f) for f in files])
        except AnalysisException as exc:  # load() checks existence up front; drop the vanished ones once
            if "PATH_NOT_FOUND" not in str(exc):
                raise
            fs = HadoopFS(spark)
            present = [f for f in files if fs.exists(f)]
            log.warning("%d file(s) vanished since listing; they are skipped", len(files) - len(present))
            if not present:
                return spark.createDataFrame([], BINARY_FILE_SCHEMA)
            return reader.load([paths.glob_escape(f) for f in present])


class HadoopFS:
    """The few Hadoop FileSystem calls the feature cache and scoring need, so their folders may live on any
    scheme the cluster can read (file:, hdfs://, dbfs:/, abfss://, s3a://)."""

    def __init__(self, spark: SparkSession) -> None:
        self._jvm = spark.sparkContext._jvm
        self._conf = spark.sparkContext._jsc.hadoopConfiguration()

    def _path(self, uri: str):
        return self._jvm.org.apache.hadoop.fs.Path(uri)

    def _fs(self, path):
        return path.getFileSystem(self._conf)

    def exists(self, uri: str) -> bool:
        p = self._path(uri)
        return bool(self._fs(p).exists(p))

    def is_dir(self, uri: str) -> bool:
        p = self._path(uri)
        fs = self._fs(p)
        return bool(fs.exists(p) and fs.getFileStatus(p).isDirectory())

    def mkdirs(self, uri: str) -> None:
        p = self._path(uri)
        self._fs(p).mkdirs(p)

    def delete(self, uri: str) -> bool:
        p = self._path(uri)
        return bool(self._fs(p).delete(p, True))

    def list_names(self, uri: str) -> list[str]:
        p = self._path(uri)
        fs = self._fs(p)
        if not fs.exists(p):
            return []
        return [str(s.getPath().getName()) for s in fs.listStatus(p)]

    def list_parts(self, uri: str) -> list[str]:
        """Full URIs of the `part-*.parquet` files directly in a folder, sorted ([] if it is absent)."""
        p = self._path(uri)
        fs = self._fs(p)
        if not fs.exists(p):
            return []
        names = [s.getPath().toString() for s in fs.listStatus(p) if s.isFile()]
        return sorted(n for n in names if n.rsplit("/", 1)[-1].startswith("part-") and n.endswith(".parquet"))

    def rename(self, src: str, dst: str) -> None:
        s, d = self._path(src), self._path(dst)
        if not self._fs(s).rename(s, d):
            raise OSError(f"rename {src} -> {dst} failed")

    def file_count(self, uri: str) -> int:
        """Every file below `uri`, hidden and empty ones included (one Hadoop ContentSummary call)."""
        p = self._path(uri)
        return int(self._fs(p).getContentSummary(p).getFileCount())

    def walk_files(self, uri: str, limit: int) -> Iterator[tuple[str, int, float]]:
        """(uri, length, modified epoch seconds) of the files below `uri`, at most `limit` of them, through
        Hadoop's iterator (one call per file: for folders that are not local, see data/local_files.py)."""
        p = self._path(uri)
        it = self._fs(p).listFiles(p, True)
        n = 0
        while it.hasNext() and n < limit:
            status = it.next()
            yield str(status.getPath().toString()), int(status.getLen()), status.getModificationTime() / 1000
            n += 1

    def local_target(self, uri: str) -> Path | None:
        """The local folder or file behind `uri`: itself for `file:` and plain paths, the mount target for
        a viewfs (or other mount-table) path that resolves to `file:`; None for remote stores."""
        local = paths.local_or_none(uri)
        if local is not None:
            return local
        try:
            p = self._path(uri)
            resolved = str(self._fs(p).resolvePath(p).toString())
        except Exception:  # py4j wraps the Java exception: a store that cannot resolve is not local
            return None
        return paths.local_or_none(resolved)

    def names_utf8(self) -> bool:
        """Whether this JVM can represent every file name (its `sun.jnu.encoding` is UTF-8). A JVM started
        under the `C` locale cannot, and Java then lists no file whose name has a non-ASCII character."""
        encoding = self._jvm.java.lang.System.getProperty("sun.jnu.encoding") or ""
        return encoding.replace("-", "").lower() == "utf8"

    def write_text(self, uri: str, text: str) -> None:
        """Create or overwrite a small text file (reports, summary.json) on any scheme."""
        p = self._path(uri)
        out = self._fs(p).create(p, True)
        try:
            out.write(bytearray(text.encode("utf-8")))
        finally:
            out.close()

    def create_new(self, uri: str, text: str) -> bool:
        """Create a small file only if it does not exist; False if it does. Atomic where the filesystem's
        create(overwrite=false) is (HDFS); object stores and the local filesystem check, then create."""
        p = self._path(uri)
        try:
            out = self._fs(p).create(p, False)
        except Exception as exc:  # py4j wraps the Java exception
            if "FileAlreadyExistsException" in str(exc):
                return False
            raise
        try:
            out.write(bytearray(text.encode("utf-8")))
        finally:
            out.close()
        return True

    def modified_at(self, uri: str) -> float:
        """The file's modification time in epoch seconds (the filesystem's clock)."""
        p = self._path(uri)
        return int(self._fs(p).getFileStatus(p).getModificationTime()) / 1000.0

    def first_line(self, uri: str) -> str:
        """The first line of a text file (a CSV header, UTF-8, byte order mark dropped), the rest unread."""
        p = self._path(uri)
        stream = self._fs(p).open(p)
        try:
            jvm = self._jvm
            line = jvm.java.io.BufferedReader(jvm.java.io.InputStreamReader(stream, "UTF-8")).readLine()
        finally:
            stream.close()
        return str(line or "").lstrip("\ufeff")

    def read_text(self, uri: str) -> str:
        p = self._path(uri)
        stream = self._fs(p).open(p)
        try:
            jvm = self._jvm
            data = jvm.org.apache.commons.io.IOUtils.toByteArray(stream)
        finally:
            stream.close()
        return bytes(data).decode("utf-8")

    def copy(self, src: str, dst: str) -> None:
        """Copy one file (possibly across schemes) with Hadoop's FileUtil."""
        s, d = self._path(src), self._path(dst)
        ok = self._jvm.org.apache.hadoop.fs.FileUtil.copy(self._fs(s), s, self._fs(d), d, False, True,
                                                          self._conf)
        if not ok:
            raise OSError(f"copy {src} -> {dst} failed")

    def single_file(self, folder: str, dest: str, suffix: str) -> str:
        """Spark wrote `folder` with one partition: move its one `part-*suffix` to `dest`, drop the folder."""
        names = [n for n in self.list_names(folder) if n.startswith("part-") and n.endswith(suffix)]
        if len(names) != 1:
            raise OSError(f"expected one part-*{suffix} file in {folder}, found {len(names)}")
        if self.exists(dest):
            self.delete(dest)
        self.rename(f"{folder}/{names[0]}", dest)
        self.delete(folder)
        return dest

    def write_csv(self, df: DataFrame, target: str, order: Sequence[str | Column] = ()) -> str:
        """One CSV file with a header at `target` (reports and split.csv people open), written by Spark, its
        rows sorted by `order`. One Spark job: the rows are sorted inside the one writing task (a global
        orderBy would first sample its input, one more job) -- the file is written by one task anyway."""
        tmp = target + "._parts"
        single = df.coalesce(1)
        if order:
            single = single.sortWithinPartitions(*order)
        single.write.mode("overwrite").option("header", "true").option("escape", '"').csv(tmp)
        return self.single_file(tmp, target, ".csv")
