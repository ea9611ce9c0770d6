"""Spark I/O helpers shared by the feature cache and scoring: Hadoop FileSystem calls and task sizing.

Why one module: both write Parquet part files into staging folders and rename them into place, on whatever
filesystem Spark can reach, and both spread images over equal tasks before running a backbone.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


def balanced_partitions(n_rows: int, cores: int, per_task: int) -> int:
    """A multiple of `cores` with at most `per_task` rows each, so every wave keeps every core busy.

    binaryFile packs files by bytes (e.g. 7 partitions for 210 small files: the last wave runs on one of two
    cores); a round-robin repartition to this count moves the bytes once but makes the model work equal.
    An explicit count is never coalesced by AQE.
    """
    cores = max(1, cores)
    return cores * max(1, math.ceil(n_rows / (cores * per_task)))


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

    def qualify(self, uri: str) -> str:
        p = self._path(uri)
        return str(self._fs(p).makeQualified(p).toString())

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

    def local_path(self, uri: str) -> Path | None:
        """The OS path when `uri` is on the local file system (lock files need one), else None."""
        p = self._path(uri)
        q = self._fs(p).makeQualified(p).toUri()
        return Path(str(q.getPath())) if str(q.getScheme()) == "file" else None
