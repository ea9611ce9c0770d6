"""Listing a data folder through Spark/Hadoop (any scheme) and attaching labels: class folders or a manifest.

Why Spark: `--data` may be `/Volumes/...`, `dbfs:/...`, `s3a://...`, `hdfs://...` or a local folder with
100k+ files; the driver must not walk it or hold a row per file. Spark's `binaryFile` source lists files
(in parallel for large trees) and the same DataFrame later reads the bytes, so the folder is listed once.

What Spark's file sources skip without a word: zero-byte files, names starting with `_` or `.`, special
files, and, in a JVM started under the `C` locale, every name with a non-ASCII character. An independent
count finds them (unlisted_files: a Python walk of local and mounted folders, Hadoop's ContentSummary
elsewhere): readable ones are read another way, the rest become quarantine rows with a true reason,
instead of vanishing. Names under a `.`-prefixed folder or file (`.DS_Store`, `.git/`) are skipped, as
version control and OS clutter, and counted in the log.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import reduce
from typing import TYPE_CHECKING

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql.types import StringType, StructField, StructType

from xray_spark import paths
from xray_spark.config import Config, _norm_label
from xray_spark.data.unlisted import Unlisted, unlisted_files
from xray_spark.errors import UserError
from xray_spark.spark_io import HadoopFS, binary_files, collect_parts

if TYPE_CHECKING:
    from pyspark.sql import Column, SparkSession

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.csv"
LIMIT_MANIFEST_NAME = "manifest.limit.csv"  # what `fetch --limit` writes instead of the full manifest
SELECTION_NAME = "selection.json"  # what `fetch` kept and left out (data/fetched.py writes it)
IGNORED_NAMES = {MANIFEST_NAME, LIMIT_MANIFEST_NAME, SELECTION_NAME, "readme.md", "readme.txt", "license",
                 "license.txt", ".ds_store", "thumbs.db"}
NIH_NAME = r"^(\d{8})_\d{3}\.[Pp][Nn][Gg]$"  # NIH ChestX-ray8: <8-digit patient>_<3-digit follow-up>.png
SALT_ENV = "XRAY_SPARK_PATIENT_SALT"  # secret salt for hashing DICOM PatientIDs (see ingest.patient_salt)


@dataclass(frozen=True)
class DataFolder:
    """A `--data` folder: its qualified URI, the binaryFile DataFrame over it, and whether it has a
    manifest. `source` names it when given as `--data NAME=DIR` (it then wins over a manifest's `source`
    column and the folder name); `prefix` keeps relative paths (and so image ids) apart across sources."""

    root: str
    # binaryFile rows (path, modificationTime, length, content); content read only when selected
    files: DataFrame
    manifest: str | None
    source: str | None = None
    prefix: str = ""

    def rel_path_col(self) -> Column:
        """The file's path relative to this folder, prefixed with the source when several are ingested."""
        rel = paths.rel_path_col(F.col("path"), self.root)
        return F.concat(F.lit(self.prefix), rel) if self.prefix else rel


_SOURCE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class DataArg:
    """One `--data` value: `DIR`, or `NAME=DIR` to name the source of every image below DIR."""

    path: str
    source: str | None = None


def parse_data_args(values: str | Sequence[str]) -> list[DataArg]:
    """`--data` values -> DataArgs. `NAME=DIR` only when NAME is a plain name (no `/`), so a folder whose
    path contains `=` still works. Several folders need distinct source names (given, or the folder names)."""
    out: list[DataArg] = []
    for value in [values] if isinstance(values, str) else list(values):
        name, eq, rest = value.partition("=")
        out.append(DataArg(rest, name) if eq and rest and _SOURCE_NAME.match(name) else DataArg(value))
    if not out:
        raise UserError("--data: no folder given")
    if len(out) > 1:
        names = [a.source or paths.file_name(a.path.rstrip("/")) for a in out]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise UserError(f"--data: source name(s) {', '.join(dupes)} given twice; name each folder "
                            "differently with NAME=DIR")
    return out


def check_local_data_dir(data_dir: str) -> None:
    """Fail fast (exit 2, before a JVM starts) for a local --data that is missing, not a folder or empty."""
    if not paths.is_local(data_dir):
        return  # other schemes are checked through Hadoop once Spark runs (open_data_folder)
    p = paths.local_path(data_dir)
    if not p.exists():
        raise UserError(f"--data folder does not exist: {p}")
    if not p.is_dir():
        raise UserError(f"--data is not a folder: {p}")
    if not any(p.iterdir()):
        raise UserError(f"--data folder is empty: {p}")


def check_data_args(values: str | Sequence[str]) -> list[DataArg]:
    """Parse `--data` values and fail fast (exit 2, before a JVM starts) on a missing local folder."""
    args = parse_data_args(values)
    for a in args:
        check_local_data_dir(a.path)
    return args


def open_data_folders(spark: SparkSession, data: str | Sequence[str]) -> list[DataFolder]:
    """Every `--data` folder, opened; with more than one, each gets its source name and a rel_path prefix."""
    args = parse_data_args(data)
    folders = [open_data_folder(spark, a.path) for a in args]
    if len(args) == 1:
        return [dataclasses.replace(folders[0], source=args[0].source)]
    named = []
    for a, f in zip(args, folders, strict=True):
        name = a.source or paths.file_name(f.root)
        named.append(dataclasses.replace(f, source=name, prefix=f"{name}/"))
    return named


@dataclass(frozen=True)
class Listing:
    """The labelled listing of every `--data` folder and what one Spark job learned about it (survey)."""

    frame: DataFrame  # labelled_listing rows of every folder, files Spark's listing skipped included
    rows: int  # rows of `frame`: every file to decode or quarantine
    fingerprint: str  # what an earlier ingest must match to be reused (see _fingerprint)
    not_in_manifest: dict[str, int]  # manifest folder -> files under it the manifest does not name (ignored)
    repeated: dict[str, int]  # manifest folder -> rows naming a path again (the first one is kept)
    unlisted: list[Unlisted] = dataclasses.field(default_factory=list)  # in `frame`, skipped by Spark


def survey(spark: SparkSession, folders: list[DataFolder], cfg: Config,
           totals: Sequence[int] | None = None) -> Listing:
    """Label every folder's files and learn, in one Spark job, what the driver needs: the fingerprint, how
    many files Spark listed (against Hadoop's count, `totals`, to find the ones it skipped) and, for
    manifests, the files they do not name and the paths they name twice. Nothing is re-listed: the
    binaryFile frames keep their file index. Files Spark skipped (see unlisted_files) join the listing, and
    the fingerprint is then computed again (one more job)."""
    fs = HadoopFS(spark)
    totals = list(totals) if totals is not None else [fs.file_count(f.root) for f in folders]
    parts = [labelled_listing(spark, f, cfg) for f in folders]
    listing = reduce(DataFrame.unionByName, parts)
    n = F.count(F.lit(1)).alias("n")
    small = {"listing": listing.agg(*_fingerprint_aggs())}
    for i, (folder, part) in enumerate(zip(folders, parts, strict=True)):
        small[f"files{i}"] = folder.files.agg(n)
        if folder.manifest:
            small[f"extra{i}"] = extra_files(folder, part).agg(n)
            small[f"repeated{i}"] = _manifest_entries(spark, folder).where("_n > 1").agg(n)
    got = collect_parts(small)
    skipped = [unlisted_files(spark, f.root, got[f"files{i}"][0]["n"], totals[i]).found
               for i, f in enumerate(folders)]
    row = got["listing"][0]
    if any(skipped):
        listing = reduce(DataFrame.unionByName, [labelled_listing(spark, f, cfg, s)
                                                 for f, s in zip(folders, skipped, strict=True)])
        row = listing.agg(*_fingerprint_aggs()).first().asDict()

    def per_manifest(what: str) -> dict[str, int]:
        return {f.root: int(got[f"{what}{i}"][0]["n"]) for i, f in enumerate(folders) if f.manifest}

    return Listing(frame=listing, rows=int(row["n"]), fingerprint=_fingerprint(row, cfg),
                   not_in_manifest=per_manifest("extra"), repeated=per_manifest("repeated"),
                   unlisted=[u for found in skipped for u in found])


def open_data_folder(spark: SparkSession, data_dir: str) -> DataFolder:
    """Qualify `data_dir` under the session's filesystem, check it exists, and list it with binaryFile."""
    check_local_data_dir(data_dir)
    root = paths.qualify(spark, data_dir)
    fs = HadoopFS(spark)
    if not fs.is_dir(root):
        raise UserError(f"--data folder does not exist or is not a folder: {root}")
    files = binary_files(spark).option("recursiveFileLookup", "true").load(root)
    manifest = paths.join(root, MANIFEST_NAME)
    return DataFolder(root=root, files=files, manifest=manifest if fs.exists(manifest) else None)


def norm_label_col(col: Column) -> Column:
    """Spark twin of config._norm_label: lower case, spaces, '-' and '_' removed."""
    return F.regexp_replace(F.lower(F.trim(col)), r"[\s_\-]+", "")


def label_map_col(cfg: Config, raw: Column) -> Column:
    """Canonical label for a folder name or manifest label (null when config does not map it)."""
    pairs: dict[str, str] = {}
    for canonical, aliases in cfg.labels.items():
        for name in [canonical, *aliases]:
            pairs.setdefault(_norm_label(name), canonical)
    if not pairs:
        return F.lit(None).cast("string")
    literal = F.create_map(*[F.lit(x) for kv in sorted(pairs.items()) for x in kv])
    return F.element_at(literal, norm_label_col(raw))


def _name_col(path: Column) -> Column:
    return F.regexp_extract(path, r"([^/]*)$", 1)


def nih_patient_col(path: Column) -> Column:
    """`.../00000013_005.png` -> `nih-00000013`; null for names that do not follow the NIH scheme."""
    digits = F.regexp_extract(_name_col(path), NIH_NAME, 1)
    return F.when(digits != "", F.concat(F.lit("nih-"), digits))


def _clean(col: Column) -> Column:
    text = F.trim(col)
    return F.when(text != "", text)


def labelled_listing(spark: SparkSession, folder: DataFolder, cfg: Config,
                     unlisted: list[Unlisted] | None = None) -> DataFrame:
    """One row per candidate file: path, rel_path, label, source, patient_id, label_status ("ok", or why the
    row cannot be used), length, modified, note (why the file itself cannot be read, or null).

    `unlisted`: files Spark's listing skipped (see unlisted_files), added so they are read another way or
    get quarantine rows.
    Manifest rows whose file was not found keep length null (missing_file).
    """
    listed = _listed(folder)
    if unlisted:
        rows = [(u.uri, u.length, u.modified, u.note) for u in unlisted]
        extra = spark.createDataFrame(rows, "path string, length long, modified double, note string").select(
            "path", "length", F.timestamp_seconds("modified").alias("modified"),
            paths.rel_path_col(F.col("path"), folder.root).alias("rel_path"), "note")
        listed = listed.unionByName(extra)
    if folder.manifest:
        rows = _with_manifest(spark, folder, listed, cfg)
    else:
        rows = _with_folders(folder, listed, cfg)
    if folder.source:
        rows = rows.withColumn("source", F.lit(folder.source))
    if folder.prefix:
        rows = rows.withColumn("rel_path", F.concat(F.lit(folder.prefix), F.col("rel_path")))
    return rows


def ignored_name_col(path: Column) -> Column:
    """True for names that are never images (manifest, README, OS clutter): not read, not counted."""
    return F.lower(_name_col(path)).isin(sorted(IGNORED_NAMES))


def candidate_files(folder: DataFolder) -> DataFrame:
    """The folder's binaryFile rows less the ignored names (ignored_name_col)."""
    return folder.files.where(~ignored_name_col(F.col("path")))


def _listed(folder: DataFolder) -> DataFrame:
    rel = paths.rel_path_col(F.col("path"), folder.root)
    return (candidate_files(folder).select("path", "length", F.col("modificationTime").alias("modified"))
            .withColumn("rel_path", rel).withColumn("note", F.lit(None).cast("string")))


def _with_folders(folder: DataFolder, listed: DataFrame, cfg: Config) -> DataFrame:
    top = F.when(F.instr("rel_path", "/") > 0, F.substring_index("rel_path", "/", 1))
    canonical = label_map_col(cfg, top)
    status = (F.when(top.isNull(), F.lit("unlabelled: file is not inside a class folder"))
              .when(canonical.isNull(),
                    F.format_string("unknown_label: folder '%s' is not mapped in config labels", top))
              .otherwise(F.lit("ok")))
    return listed.select(
        "path", "rel_path", F.coalesce(canonical, top).alias("label"),
        F.lit(paths.file_name(folder.root)).alias("source"),
        nih_patient_col(F.col("path")).alias("patient_id"), status.alias("label_status"),
        "length", "modified", "note",
    )


def _read_manifest(spark: SparkSession, uri: str) -> DataFrame:
    """The manifest CSV, every column a string. The header is read through Hadoop and given as the schema
    (Spark would run a job to read it); header names Spark would rename (twice the same) leave it to Spark."""
    header = next(csv.reader([HadoopFS(spark).first_line(uri)]), [])
    names = [name if name else f"_c{i}" for i, name in enumerate(header)]
    reader = spark.read.option("header", "true")
    if names and len({name.lower() for name in names}) == len(names):
        reader = reader.schema(StructType([StructField(name, StringType()) for name in names]))
    else:
        reader = reader.option("inferSchema", "false")
    return reader.csv(uri)


def _manifest_entries(spark: SparkSession, folder: DataFolder) -> DataFrame:
    """Manifest rows with their resolved `path` and `_n`: 1 for a path's first row, 2, 3... for repeats."""
    raw = _read_manifest(spark, folder.manifest)
    missing = {"path", "label"} - set(raw.columns)
    if missing:
        raise UserError(f"{folder.manifest}: missing column(s) {', '.join(sorted(missing))}; "
                        "need path,label[,source][,patient_id]")
    col = lambda name: F.col(name) if name in raw.columns else F.lit(None).cast("string")  # noqa: E731
    rows = (raw.select(_clean(F.col("path")).alias("entry"), col("label").alias("raw_label"),
                       _clean(col("source")).alias("m_source"), _clean(col("patient_id")).alias("m_patient"),
                       F.monotonically_increasing_id().alias("_order"))
            .where(F.col("entry").isNotNull())
            .withColumn("path", paths.resolve_col(F.col("entry"), folder.root)))
    first = Window.partitionBy("path").orderBy("_order")
    return rows.withColumn("_n", F.row_number().over(first))


def _with_manifest(spark: SparkSession, folder: DataFolder, listed: DataFrame, cfg: Config) -> DataFrame:
    rows = _manifest_entries(spark, folder).where("_n = 1")  # survey counts the repeats
    canonical = label_map_col(cfg, F.col("raw_label"))
    status = F.when(canonical.isNotNull(), F.lit("ok")).otherwise(
        F.format_string("unknown_label: '%s' is not mapped in config labels", F.col("raw_label")))
    joined = rows.join(listed.select("path", "length", "modified", "note"), "path", "left")
    rel = F.coalesce(paths.rel_path_col(F.col("path"), folder.root), F.col("entry"))
    return joined.select(
        "path", rel.alias("rel_path"), F.coalesce(canonical, _clean(F.col("raw_label"))).alias("label"),
        F.coalesce("m_source", F.lit(paths.file_name(folder.root))).alias("source"),
        F.coalesce("m_patient", nih_patient_col(F.col("path"))).alias("patient_id"),
        status.alias("label_status"), "length", "modified", "note",
    )


def extra_files(folder: DataFolder, listing: DataFrame) -> DataFrame:
    """Files under a manifest folder that its listing (the manifest's rows) does not name (ignored, counted
    in the log)."""
    return _listed(folder).select("path").join(listing.select("path"), "path", "left_anti")


def _fingerprint_aggs() -> list[Column]:
    """Order-independent aggregates of a listing: its size and an xor of per-row hashes (one small row)."""
    row_hash = F.xxhash64("rel_path", "length", "modified", "label", "source", "patient_id")
    return [F.count(F.lit(1)).alias("n"), F.bit_xor(row_hash).alias("x")]


def _fingerprint(row: dict, cfg: Config) -> str:
    """What an earlier ingest must match to be reused: the folder's listing (relative path, size, mtime,
    labels; `row` from _fingerprint_aggs) and the settings that shape the split."""
    settings = {k: dataclasses.asdict(getattr(cfg, k)) for k in ("decode", "dedup", "split")}
    payload = json.dumps([row["n"], row["x"], settings, cfg.labels, os.environ.get(SALT_ENV, "")],
                         sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()
