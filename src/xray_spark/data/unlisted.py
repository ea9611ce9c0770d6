"""The files under a data folder that Spark's listing skipped, found by an independent count.

Why: Spark's file sources skip names starting with `_` or `.`, empty and special files, and (in a JVM
started under the `C` locale) every name with a non-ASCII character, all without a word. Ingest and
scoring add what is found here to their listings: readable files are read by Python from their local
path, the rest get quarantine rows with a true reason. Local and mounted folders are walked by Python
(data/local_files.py); object stores and HDFS are checked with Hadoop's ContentSummary.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from xray_spark import paths
from xray_spark.data import local_files
from xray_spark.spark_io import HadoopFS

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

_UNLISTED_SCAN_LIMIT = 100_000  # files the slow path looks at individually before giving up with a count


@dataclass(frozen=True)
class Unlisted:
    """A file Spark's listing skipped, found by an independent count (see unlisted_files)."""

    uri: str
    length: int
    modified: float | None  # epoch seconds
    note: str | None = None  # why it cannot be read at all (a special file, a name no tool can open)
    read_path: str | None = None  # the local file Python reads it from; None: nothing to read


HIDDEN_REMOTE = ("hidden_name: Spark's file sources skip names starting with '_', and on this filesystem "
                 "xray-spark cannot read them another way; rename the file")


@dataclass
class Census:
    """What an independent count of a folder found: the files Spark's listing skipped, and (for local and
    mounted folders, which Python walks) how many files there are in all."""

    root: str
    found: list[Unlisted]
    files: int | None = None  # every file below root (`.`-prefixed clutter excluded); None: not walked
    truncated: bool = False

    def check(self, n_listed: int) -> int:
        """Files neither listed by Spark nor found by name (0 when all reconcile); a warning says so."""
        if self.files is None:
            return 0
        missing = self.files - n_listed - len(self.found)
        if missing or self.truncated:
            log.warning("listing: %s holds %d files (a Python count) but Spark listed %d and %d more were "
                        "found by name; %d are not accounted for", self.root, self.files, n_listed,
                        len(self.found), missing)
        return missing


def unlisted_files(spark: SparkSession, root: str, n_listed: int | None,
                   total: int | None = None) -> Census:
    """The files under `root` (a qualified folder URI) that Spark's listing skipped; it listed `n_listed`
    (None: the caller checks the count later, with Census.check).

    A local or locally mounted folder (viewfs) is walked by Python (data/local_files.py): byte-exact
    names, whatever the locale of the JVM, so `_`-prefixed names, empty and special files and names the
    JVM cannot represent are all found, and the readable ones get a local path to read from. Elsewhere
    (object stores, HDFS) one ContentSummary call (`total`, unless given) is the check, and the folder
    is walked through Hadoop only when it counts more than Spark listed. Either way, what is found is
    bounded by the files skipped, not by the folder's size.
    """
    fs = HadoopFS(spark)
    target = fs.local_target(root)
    if target is None:
        return Census(root, _unlisted_remote(fs, root, n_listed, total) if n_listed is not None else [])
    walked = local_files.walk(target, local_files.skipped_by_spark(fs.names_utf8()), _UNLISTED_SCAN_LIMIT)
    found = []
    for e in walked.kept:
        readable = e.problem is None and e.length > 0
        found.append(Unlisted(paths.join(root, e.rel), e.length, e.modified, e.problem,
                              str(target / e.rel) if readable else None))
    census = Census(root, found, walked.files, walked.truncated)
    if n_listed is not None:
        census.check(n_listed)
    if walked.clutter:
        log.info("listing: %d file(s) under %s with names starting with '.' skipped (OS clutter such as "
                 ".DS_Store and ._x.png resource forks)", walked.clutter, root)
    if found:
        log.info("listing: %d files under %s are not listed by Spark (names starting with '_', empty or "
                 "special files, names the JVM cannot represent); each is read another way or gets a "
                 "quarantine row", len(found), root)
    return census


def _unlisted_remote(fs: HadoopFS, root: str, n_listed: int, total: int | None) -> list[Unlisted]:
    total = fs.file_count(root) if total is None else total
    if total <= n_listed:
        return []
    log.info("listing: %d files under %s were not listed by Spark (empty, or names starting with '_'/'.'); "
             "looking for them", total - n_listed, root)
    found = []
    for uri, length, modified in fs.walk_files(root, limit=_UNLISTED_SCAN_LIMIT):
        rel = paths.relativize(root, uri) or uri
        parts = rel.split("/")
        if any(p.startswith(".") for p in parts):
            continue  # OS / version-control clutter
        if length == 0 or any(p.startswith("_") for p in parts):
            found.append(Unlisted(uri, length, modified, HIDDEN_REMOTE if length else None))
    return found
