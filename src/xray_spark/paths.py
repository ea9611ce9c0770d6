"""One home for file identity: a file is named by its Hadoop-qualified URI, the way Spark lists it.

Why: on Databricks Spark's default filesystem is `dbfs:`, on clusters `hdfs:` or an object store, and
locally `file:`. Spark's `binaryFile` source reports each file as Hadoop's `Path.toString()`: scheme and
authority, then the path *decoded* (`file:/data/scan%20one.png` is a file whose name holds `%20`;
`viewfs://v/data/a b.png` one with a space). Every caller compares, joins and relativizes names in exactly
that form, so a listing, a manifest row and a ledger row of the same file are the same string under any
scheme. Percent-decoding or `os.path.resolve` would change names and break joins: nothing here does either.

Pure string functions (no Spark) plus `qualify`, which asks Hadoop once per folder (not per file), and two
Spark column twins; pyspark is imported only by those, so Spark-free processes (serving) can use the rest.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlparse

if TYPE_CHECKING:
    from pyspark.sql import Column, SparkSession

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:[\\/]")
_GLOB = re.compile(r"([\\\[\]{}*?])")


def scheme(uri: str) -> str | None:
    """`hdfs://nn/x` -> `hdfs`; `dbfs:/x` -> `dbfs`; a plain path (or `C:\\x`) -> None."""
    if _WINDOWS_DRIVE.match(uri):
        return None
    m = _SCHEME.match(uri)
    return m.group(1).lower() if m else None


def is_local(uri: str) -> bool:
    """True for plain paths and `file:` URIs: things the driver can open with `open()` without Hadoop."""
    return scheme(uri) in (None, "file")


def local_path(uri: str) -> Path:
    """`file:/a/b`, `file:///a/b` or `/a/b` -> Path('/a/b') (no percent-decoding: see the module
    docstring)."""
    if scheme(uri) not in (None, "file"):
        raise ValueError(f"not a local path: {uri}")
    return Path(re.sub(r"^file:(//(?=/))?", "", uri)).expanduser()


def local_or_none(uri: str) -> Path | None:
    """`local_path(uri)` for plain paths and `file:` URIs, None for any other scheme (no Hadoop call)."""
    return local_path(uri) if is_local(uri) else None


def from_file_uri(uri: str) -> Path:
    """An RFC 8089 `file:` URI as MLflow and `Path.as_uri()` write them -> the OS path, percent-DEcoded
    (`file:///a%20b/mlruns` -> `/a b/mlruns`), the way MLflow itself opens it. Only for such URIs (e.g. an
    MLflow tracking store): a Hadoop-form file name is never decoded (use `local_path`)."""
    return Path(unquote(urlparse(uri).path))


def qualify(spark: SparkSession, path: str | Path) -> str:
    """The Hadoop-qualified form of `path` under the session's default filesystem (no trailing slash).

    `/tmp/d` -> `file:/tmp/d` locally, `dbfs:/tmp/d` on Databricks, `viewfs://v/tmp/d` under a viewfs default
    filesystem; URIs with a scheme keep it. A relative local path is made absolute against the driver's
    working directory first (what a user typing `--data data/x` means).
    """
    text = str(path)
    if scheme(text) is None and not text.startswith("/"):
        text = str(Path(text).expanduser().absolute())
    jvm = spark.sparkContext._jvm
    p = jvm.org.apache.hadoop.fs.Path(text)
    fs = p.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    return str(fs.makeQualified(p).toString()).rstrip("/") or "/"


def join(root: str, rel: str) -> str:
    """`root` + `rel` the way Hadoop's `Path(parent, child)` does for the relative names manifests hold."""
    return f"{root.rstrip('/')}/{rel.lstrip('/')}"


def relativize(root: str, uri: str) -> str | None:
    """The part of `uri` below the folder `root` (both qualified), or None when it is not below it."""
    prefix = root.rstrip("/") + "/"
    return uri[len(prefix):] if uri.startswith(prefix) else None


def rel_path_col(path: Column, root: str) -> Column:
    """Spark twin of `relativize` for a column of listed paths (null when not below `root`)."""
    from pyspark.sql import functions as F  # lazy: Spark columns only; serving imports this module

    prefix = root.rstrip("/") + "/"
    return F.when(path.startswith(prefix), F.substring(path, len(prefix) + 1, 1 << 30))


def resolve_col(rel: Column, root: str) -> Column:
    """Spark column: a manifest's `path` entry -> a qualified URI, resolved against the manifest's folder.

    Relative entries join `root`; entries with a scheme are kept; absolute paths (`/x/y.png`) take the
    scheme and authority of `root`, as Hadoop resolves them against the manifest's filesystem.
    """
    from pyspark.sql import functions as F  # lazy: Spark columns only; serving imports this module

    m = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*:(//[^/]*)?)", root)
    authority = m.group(1) if m else ""
    return (F.when(rel.rlike(r"^[A-Za-z][A-Za-z0-9+.-]*:"), rel)
            .when(rel.startswith("/"), F.concat(F.lit(authority), rel))
            .otherwise(F.concat(F.lit(root.rstrip("/") + "/"), F.regexp_replace(rel, r"^(\./)+", ""))))


def file_name(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[-1]


def parent(uri: str) -> str:
    """The folder holding `uri`: `file:/a/b/c.parquet` -> `file:/a/b` (a trailing slash is ignored)."""
    return uri.rstrip("/").rsplit("/", 1)[0]


def glob_escape(uri: str) -> str:
    """Escape Hadoop glob characters (`\\ [ ] { } * ?`): Spark's DataFrameReader.load globs every path it is
    given, so a file called `x[1].png` must be passed as `x\\[1\\].png` to be found as itself."""
    return _GLOB.sub(r"\\\1", uri)


def safe_name(text: str, keep: str = "._-") -> str:
    """`text` as one file or folder name: each run of characters other than ASCII letters, digits and those in
    `keep` becomes one `_`. Callers whose names are persisted keys (feature cache folders, scoring chunk
    files, the serving bundle cache) pass the `keep` their names were written with, so they stay the same."""
    return re.sub(f"[^A-Za-z0-9{re.escape(keep)}]+", "_", text)
