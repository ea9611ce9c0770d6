"""Folders/manifests -> images table (Parquet) + duplicates report + persisted grouped split, on executors.

Why this shape: collections outgrow one machine (NIH ChestX-ray14 112k images, MIMIC-CXR 377k), so every
step that touches per-image data runs on executors and the driver sees ids and small aggregates only:
1. list the folder once with binaryFile (any Hadoop scheme) and attach labels (data/files.py);
2. read each file's bytes once: files over decode.max_file_bytes are filtered by `length` before `content`
   is selected (never read), the rest decoded in mapInPandas; hashes, a 128x128 thumbnail, window hashes
   and a 256 px aspect-kept thumbnail per image go to a scratch Parquet (`_work/`), thumbnails stay there;
3. de-duplicate on executors (data/dedup.py; copies across sources, even cropped: data/copies.py), group
   patients + duplicates over integer edges (data/groups.py), assign folds from one row per group
   (data/split.py);
4. write images/, split.csv, quarantine.csv, duplicates/ and summary.json through Hadoop.
Counts always reconcile: files read = ok + quarantined.

Small ingests are small: the number of Spark jobs is fixed (16 for a folder of 36 images) whatever the
number of files, not one per count or check. The steps above build lazy frames; the small results each
step needs (counts, hashes, int edges, bounded samples) are collected together (spark_io.collect_parts),
adaptive execution is off so an action is one job (spark_io.static_shuffles), tables are written once and
read back with their schema, and no count runs only for a log line.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from pyspark.sql import functions as F
from threadpoolctl import threadpool_limits

from xray_spark import paths
from xray_spark.config import Config, DedupConfig
from xray_spark.data import local_files
from xray_spark.data.copies import scored_copies
from xray_spark.data.copy_check import CopyCheck
from xray_spark.data.copy_hash import unpack, window_hashes
from xray_spark.data.decode import ImageRecord, analyze
from xray_spark.data.dedup import Duplicates, find_duplicates
from xray_spark.data.files import SALT_ENV, DataFolder, Listing, candidate_files, open_data_folders, survey
from xray_spark.data.groups import assign_group_ids, image_id_col, roots_frame, star_edges
from xray_spark.data.ingest_report import (
    duplicates_report,
    summarize,
    summary_parts,
    write_duplicate_tables,
    write_duplicates_md,
)
from xray_spark.data.layout import IngestLayout
from xray_spark.data.split import (
    COUNT_COLUMNS,
    apply_folds,
    check_no_leak,
    group_label_frame,
    plan_folds,
    spanning_keys,
    split_hash_frame,
)
from xray_spark.data.unlisted import HIDDEN_REMOTE, Unlisted
from xray_spark.spark_io import (
    IMAGE_FILE_OPEN_COST,
    HadoopFS,
    Progress,
    collect_parts,
    explicit_broadcasts_only,
    sql_conf,
    static_shuffles,
)

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

ANALYZED_SCHEMA = (
    "path string, id long, sha256 string, format string, mode string, width int, height int, bit_depth int, "
    "status string, reason string, pixel_sha256 string, phash string, patient_ref string, thumb binary, "
    "crop_hashes array<long>, copy_thumb binary"
)
IMAGE_COLUMNS = [
    "path", "rel_path", "sha256", "label", "source", "patient_id", "width", "height", "format", "mode",
    "bit_depth", "file_size", "status", "reason", "pixel_sha256", "phash", "group_id", "dup_group", "fold",
    "split",
]
SPLIT_COLUMNS = ["path", "rel_path", "label", "source", "patient_id", "sha256", "group_id", "dup_group",
                 "fold", "split"]
_DEFAULT_SALT = "xray-spark"


def patient_salt() -> str:
    """Salt for hashing DICOM PatientIDs: $XRAY_SPARK_PATIENT_SALT (keep it secret, keep it stable), else a
    fixed default (then a hash is only as safe as the ids are hard to guess: set the variable)."""
    salt = os.environ.get(SALT_ENV)
    if not salt:
        log.debug("%s not set: DICOM patient ids are hashed with the default salt", SALT_ENV)
    return salt or _DEFAULT_SALT


def _bytes_of(content, read_path: str | None, max_bytes: int) -> tuple[bytes, ImageRecord | None]:
    """A file's bytes: from Spark's file source, or read here from `read_path` (files Spark's listing
    skipped, see unlisted.unlisted_files); a file that cannot be read gives its quarantine record instead."""
    if content is not None or not read_path:
        return (bytes(content) if content is not None else b""), None
    try:
        return local_files.read_file(read_path, max_bytes), None
    except ValueError as e:
        return b"", ImageRecord("quarantined", str(e))
    except OSError as e:
        reason = str(e) if ":" in str(e) and not e.strerror else f"unreadable: {e.strerror or e}"
        return b"", ImageRecord("quarantined", reason)


def _analyze_partition(max_pixels: int, dedup: DedupConfig, salt: str, max_bytes: int, counter=None):
    """mapInPandas function: decode each file once; return metadata, hashes, a patient ref and thumbnails
    (square for near-duplicates, aspect-kept with window hashes for copies, data/copies.py).
    `counter` (a Spark accumulator) counts decoded files for the progress log."""

    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        # pydicom warns on every odd tag of a corrupt file; the reason column already says what is wrong
        warnings.simplefilter("ignore", UserWarning)

        columns = [c.split()[0] for c in ANALYZED_SCHEMA.split(", ")]
        # one Python worker per core already: BLAS threads in window_hashes would oversubscribe the cores
        # (measured: 4x slower decode on 2 busy cores)
        with threadpool_limits(1, user_api="blas"):
            yield from _analyzed_batches(batches, columns)

    def _analyzed_batches(batches: Iterator[pd.DataFrame], columns: list[str]) -> Iterator[pd.DataFrame]:
        for pdf in batches:
            out = []
            rows = zip(pdf["path"], pdf["content"], pdf["id"], pdf["read_path"], strict=True)
            for path, content, ident, read_path in rows:
                data, rec = _bytes_of(content, read_path, max_bytes)
                if rec is None:
                    rec = analyze(data, max_pixels=max_pixels, thumb_size=dedup.thumb_size, patient_salt=salt,
                                  copy_thumb_size=dedup.copy_thumb_size)
                copy_thumb = unpack(rec.copy_thumb)
                crops = None if copy_thumb is None else window_hashes(
                    copy_thumb, dedup.copy_window_step, dedup.copy_max_trim).tolist()
                out.append({
                    "path": path, "id": ident, "sha256": hashlib.sha256(data).hexdigest() if data else None,
                    "format": rec.format,
                    "mode": rec.mode, "width": rec.width, "height": rec.height, "bit_depth": rec.bit_depth,
                    "status": rec.status, "reason": rec.reason, "pixel_sha256": rec.pixel_sha256,
                    "phash": rec.phash, "patient_ref": rec.patient_ref, "thumb": rec.thumb,
                    "crop_hashes": crops, "copy_thumb": rec.copy_thumb,
                })
            if counter is not None:
                counter.add(len(out))
            yield pd.DataFrame(out, columns=columns)

    return run


@dataclass
class IngestResult:
    layout: IngestLayout
    images: object  # Spark DataFrame over layout.images
    summary: dict
    files: dict[str, str] = field(default_factory=dict)


def _decode_stage(spark, folders: list[DataFolder], layout: IngestLayout, cfg: Config, n_files: int,
                  unlisted: Sequence[Unlisted] = ()):
    """Read every listed file's bytes once (oversized files filtered by length first) into _work/analyzed;
    the readable files Spark's listing skipped are read by Python from their local path in the same job."""
    max_bytes = cfg.decode.max_file_bytes
    todo = None
    for folder in folders:
        # the length filter is pushed into the file scan: oversized files are never opened
        part = (candidate_files(folder).where(F.col("length") <= max_bytes)
                .select("path", image_id_col(folder.rel_path_col()).alias("id"), "content",
                        F.lit(None).cast("string").alias("read_path")))
        todo = part if todo is None else todo.unionByName(part)
        mine = [(u.uri, u.read_path) for u in unlisted
                if u.read_path and u.length <= max_bytes and paths.relativize(folder.root, u.uri) is not None]
        if mine:
            extra = spark.createDataFrame(mine, "path string, read_path string").select(
                "path", image_id_col(folder.rel_path_col()).alias("id"),
                F.lit(None).cast("binary").alias("content"), "read_path")
            todo = todo.unionByName(extra)
    target = paths.join(layout.work, "analyzed")
    counter = spark.sparkContext.accumulator(0)
    progress = Progress(counter, n_files, "ingest: decode")
    try:
        with sql_conf(spark, IMAGE_FILE_OPEN_COST):
            todo.mapInPandas(
                _analyze_partition(cfg.decode.max_pixels, cfg.dedup, patient_salt(), max_bytes, counter),
                ANALYZED_SCHEMA,
            ).write.mode("overwrite").parquet(target)
    finally:
        progress.stop()
    return spark.read.schema(ANALYZED_SCHEMA).parquet(target)  # a given schema: no job to read a footer


def _reconcile(listing, analyzed, max_file_bytes: int):
    """Listing joined with what was decoded; anything not decoded or not labelled becomes a quarantine row."""
    a = analyzed.drop("thumb", "id", "crop_hashes", "copy_thumb")
    df = listing.join(a, "path", "left")
    hidden = F.col("rel_path").rlike(r"(^|/)_")
    why = (F.when(F.col("length").isNull(), F.lit("missing_file: listed in the manifest but not found"))
           .when(F.col("note").isNotNull(), F.col("note"))
           .when(F.col("length") == 0, F.lit("empty_file: 0 bytes"))
           .when(F.col("length") > max_file_bytes,
                 F.format_string("file_too_large: %d bytes > %d", F.col("length"), F.lit(max_file_bytes)))
           .when(hidden, F.lit(HIDDEN_REMOTE))
           .otherwise(F.lit("unreadable: listed, but the file source could not read it (vanished since, "
                            "or an I/O error)")))
    undecoded = F.col("status").isNull()
    reason = F.when(undecoded, why).otherwise(F.col("reason"))
    bad_label = F.col("label_status") != "ok"
    reason = F.when(bad_label & ~undecoded & (F.col("status") == "ok"), F.col("label_status")).when(
        bad_label, F.concat_ws("; ", F.col("label_status"), reason)).otherwise(reason)
    status = F.when(undecoded | bad_label, F.lit("quarantined")).otherwise(F.col("status"))
    return df.select(
        "path", "rel_path", image_id_col(F.col("rel_path")).alias("id"), "sha256", "label", "source",
        F.coalesce("patient_id", "patient_ref").alias("patient_id"), "width", "height", "format", "mode",
        "bit_depth", F.col("length").alias("file_size"), status.alias("status"), reason.alias("reason"),
        "pixel_sha256", "phash",
    )


def _graph_parts(table: DataFrame, ok: DataFrame, dups: Duplicates) -> dict[str, DataFrame]:
    """What the driver needs before grouping, as small lazy aggregates for one collect: every edge as ids
    (duplicates, and patients as a star per id), whether the image ids are distinct, the dedup counts."""
    dup_edges = dups.edges.select("a", "b", F.lit(True).alias("dup"))
    patient_edges = star_edges(ok, "patient_id").select("a", "b", F.lit(False).alias("dup"))
    ids = table.agg(F.countDistinct("id").alias("d"), F.count(F.lit(1)).alias("n"))
    return {**dups.tallies, "edges": dup_edges.unionByName(patient_edges), "ids": ids}


def _grouped(spark: SparkSession, ok: DataFrame, edges: list[dict]) -> DataFrame:
    """ok rows + group_id (patients and duplicates joined) and dup_group (duplicates only), from the edges
    collected on the driver (ints only)."""
    every = np.array([(e["a"], e["b"]) for e in edges], dtype=np.int64).reshape(-1, 2)
    dup = np.array([(e["a"], e["b"]) for e in edges if e["dup"]], dtype=np.int64).reshape(-1, 2)
    grouped = assign_group_ids(ok, roots_frame(spark, every), "group_id", "g-")
    return assign_group_ids(grouped, roots_frame(spark, dup), "dup_group", "dup-", singletons=False)


def ingest(spark, data: str | Sequence[str], out_dir: str, cfg: Config) -> IngestResult:
    """Read, validate, de-duplicate and split one data folder, or several (`NAME=DIR` values: every image
    keeps its source, and duplicates across sources are grouped like any others, so they never straddle
    the split); write everything under `out_dir`, in a fixed number of Spark jobs (see the module doc)."""
    fs = HadoopFS(spark)
    folders = open_data_folders(spark, data)
    totals = [fs.file_count(f.root) for f in folders]  # Hadoop counts every file; no Spark job
    with explicit_broadcasts_only(spark), sql_conf(spark, static_shuffles(spark, sum(totals))):
        return _ingest(spark, fs, folders, totals, out_dir, cfg)


def _ingest(spark, fs: HadoopFS, folders: list[DataFolder], totals: list[int], out_dir: str,
            cfg: Config) -> IngestResult:
    t0 = time.time()
    layout = IngestLayout(paths.qualify(spark, str(out_dir)))
    # job 1, before reading: a file added mid-run changes the fingerprint and triggers the next ingest
    listing = survey(spark, folders, cfg, totals)
    _log_listing(listing, [f.root for f in folders])
    analyzed = _decode_stage(spark, folders, layout, cfg, listing.rows, listing.unlisted)
    log.info("ingest: decoded %d files in %.1fs", listing.rows, time.time() - t0)
    table = _reconcile(listing.frame, analyzed, cfg.decode.max_file_bytes).cache()
    ok = table.where("status = 'ok'")
    dups = _duplicates(ok, analyzed, cfg.dedup)
    graph = collect_parts(_graph_parts(table, ok, dups))
    ids = graph["ids"][0]
    if ids["d"] != ids["n"]:
        raise RuntimeError("ingest: two relative paths hash to the same 64-bit id; please report this")
    dups.set_counts(graph)

    grouped = _grouped(spark, ok, graph["edges"]).cache()
    by_group = collect_parts({"counts": group_label_frame(grouped), "spanning": spanning_keys(grouped)})
    plan = plan_folds(pd.DataFrame(by_group["counts"], columns=COUNT_COLUMNS), seed=cfg.split.seed,
                      folds=cfg.split.folds, test_fold=cfg.split.test_fold)
    split = apply_folds(spark, grouped, plan)
    if any(r["n"] for r in by_group["spanning"]):
        check_no_leak(split)  # a patient or duplicate group in two groups: the full check says where

    images = table.join(split.select("id", "group_id", "dup_group", "fold", "split"), "id", "left")
    images = images.select(*IMAGE_COLUMNS)
    images.write.mode("overwrite").parquet(layout.images)
    images = spark.read.schema(images.schema).parquet(layout.images)
    files, summary = _write_reports(fs, layout, images, dups, ok, grouped, len(plan.table), t0)
    roots = [f.root for f in folders]
    summary.update(data_dir=roots[0], data_dirs=roots, source_names=[f.source for f in folders],
                   ingest_key=listing.fingerprint)
    summary["split"]["folds"] = plan.folds
    fs.write_text(layout.summary_json, _json(summary))
    files["summary.json"] = layout.summary_json
    for df in (table, grouped):
        df.unpersist()
    dups.release()
    fs.delete(layout.work)
    return IngestResult(layout=layout, images=images, summary=summary, files=files)


def _log_listing(listing: Listing, roots: list[str]) -> None:
    """What the listing found besides the files it will decode: manifest gaps and repeated rows."""
    log.info("ingest: %d files listed under %s; decoding with Spark", listing.rows, ", ".join(roots))
    for root, n in listing.not_in_manifest.items():
        if n:
            log.info("ingest: %d files under %s are not in its manifest; ignored", n, root)
    for root, n in listing.repeated.items():
        if n:
            log.warning("%d manifest rows list a path twice; keeping the first (%s)", n, root)


def _duplicates(ok: DataFrame, analyzed: DataFrame, d: DedupConfig) -> Duplicates:
    """Exact and near duplicates among the ok images, with copies across sources (cropped or rescaled)."""
    ok_ids = ok.select("id")
    copies = scored_copies(
        analyzed.where("crop_hashes IS NOT NULL").select("id", F.col("crop_hashes").alias("hashes"))
        .join(ok_ids, "id", "left_semi"), analyzed.select("id", "copy_thumb"), d.copy_max_hamming,
        CopyCheck(d.copy_min_inliers, d.copy_min_inlier_ratio, d.copy_min_correlation))
    return find_duplicates(ok, analyzed.select("id", "thumb"), max_hamming=d.phash_max_hamming,
                           min_correlation=d.pixel_min_correlation, thumb_size=d.thumb_size, copies=copies,
                           copy_min_correlation=d.copy_min_correlation, copy_max_hamming=d.copy_max_hamming)


def _write_reports(fs: HadoopFS, layout: IngestLayout, images: DataFrame, dups: Duplicates, ok: DataFrame,
                   grouped: DataFrame, n_groups: int, t0: float) -> tuple[dict[str, str], dict]:
    """The tables, the duplicates report and the summary's numbers (one collect of small aggregates):
    (files written by name, the summary without the folders it was read from)."""
    files = _write_tables(fs, images, layout)
    report = duplicates_report(dups, ok.select("id", "rel_path"), grouped.where("dup_group IS NOT NULL"))
    files.update(write_duplicate_tables(fs, report, layout.duplicates))
    small = collect_parts({**summary_parts(images, report.groups), **report.md_parts(),
                           "split_hash": split_hash_frame(images.where("status = 'ok'")),
                           "manifest_hash": manifest_hash_frame(images)})
    files.update(write_duplicates_md(fs, dups, small, int(small["dup_groups"][0]["n"]), layout.duplicates))
    summary = summarize(small, dups.counts, n_groups, str(small["split_hash"][0]["h"]), time.time() - t0)
    summary["manifest_hash"] = str(small["manifest_hash"][0]["h"])
    return files, summary


def _json(obj: dict) -> str:
    return json.dumps(obj, indent=2, sort_keys=True)


def _write_tables(fs: HadoopFS, images, layout: IngestLayout) -> dict[str, str]:
    """split.csv (the persisted split every later run reuses) and quarantine.csv, each one file via Spark."""
    out = {"images": layout.images}
    tables = {
        layout.split_csv: (images.where("status = 'ok'").select(*SPLIT_COLUMNS), ["rel_path"]),
        layout.quarantine_csv: (images.where("status != 'ok'").select("path", "label", "file_size", "reason"),
                                ["path"]),
    }
    for target, (df, order) in tables.items():
        out[paths.file_name(target)] = fs.write_csv(df, target, order)
    return out


def manifest_hash_frame(images: DataFrame) -> DataFrame:
    """One row, `h`: identifies the dataset content (relative path, label, bytes) independent of where it
    lives; computed on executors (lazy)."""
    line = F.concat_ws("\t", "rel_path", "label", F.coalesce("sha256", F.lit("")))
    return images.agg(F.sha2(F.concat_ws("\n", F.sort_array(F.collect_list(line))), 256).alias("h"))


def format_summary(summary: dict) -> str:
    """The lines a person reads at the end of `xray-spark ingest`."""
    lines = [
        f"files read: {summary['files_read']} = ok {summary['ok']} + quarantined {summary['quarantined']}",
        "ok per class: " + ", ".join(f"{k} {v}" for k, v in summary["per_class_ok"].items()),
    ]
    if summary["quarantine_reasons"]:
        lines.append("quarantined by reason: "
                     + ", ".join(f"{k} {v}" for k, v in summary["quarantine_reasons"].items()))
    s = summary["split"]
    lines.append(f"split {s['hash'][:12]}: train {s['train']}, test {s['test']}, groups {s['groups']}")
    d = summary["duplicates"]
    lines.append("duplicates: " + ", ".join(f"{k} {v}" for k, v in d.items()))
    return "\n".join(lines)
