"""Folders/manifests -> images table (Parquet) + duplicates report + persisted grouped split.

Why Spark here: reading and decoding thousands of multi-megabyte files is the part that scales with the
data; the de-duplication and split work on a small per-image table (hashes, 128x128 thumbnails) on the driver.
Counts always reconcile: files read = ok + quarantined.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

import pandas as pd

from xray_spark.config import Config
from xray_spark.data.manifest import IGNORED_NAMES, discover

log = logging.getLogger(__name__)

ANALYZED_SCHEMA = (
    "key string, sha256 string, file_size long, format string, mode string, width int, height int, "
    "bit_depth int, status string, reason string, pixel_sha256 string, phash string, thumb binary"
)
IMAGE_COLUMNS = [
    "path", "rel_path", "sha256", "label", "source", "patient_id", "width", "height", "format", "mode",
    "bit_depth", "file_size", "status", "reason", "pixel_sha256", "phash", "group_id", "dup_group", "fold", "split",
]


def path_key(uri: str) -> str:
    """Spark's binaryFile `path` (a URI) -> plain local path, to join with the driver-side listing."""
    parsed = urlparse(uri)
    return unquote(parsed.path) if parsed.scheme in ("file", "") else uri


def read_binary_files(spark, root: str | Path, partitions: int | None = None):
    """All files below `root` via Spark's binaryFile source, spread over enough partitions for every core."""
    df = spark.read.format("binaryFile").option("recursiveFileLookup", "true").load(str(root))
    n = partitions or max(2, spark.sparkContext.defaultParallelism * 4)
    return df.repartition(n)


def _analyze_partition(max_pixels: int, max_file_bytes: int, thumb_size: int):
    """mapInPandas function: decode each file once, return metadata, hashes and a thumbnail."""

    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        import hashlib
        import warnings

        # pydicom warns on every odd tag of a corrupt file; the reason column already says what is wrong
        warnings.simplefilter("ignore", UserWarning)

        from xray_spark.data.decode import analyze

        for pdf in batches:
            out = []
            for path, content, length in zip(pdf["path"], pdf["content"], pdf["length"], strict=True):
                data = bytes(content) if content is not None else b""
                row = {"key": path_key(path), "sha256": hashlib.sha256(data).hexdigest(), "file_size": int(length)}
                if length > max_file_bytes:
                    row.update(status="quarantined", reason=f"file_too_large: {length} bytes > {max_file_bytes}")
                else:
                    rec = analyze(data, max_pixels=max_pixels, thumb_size=thumb_size)
                    row.update(
                        format=rec.format, mode=rec.mode, width=rec.width, height=rec.height,
                        bit_depth=rec.bit_depth, status=rec.status, reason=rec.reason,
                        pixel_sha256=rec.pixel_sha256, phash=rec.phash, thumb=rec.thumb,
                    )
                out.append(row)
            yield pd.DataFrame(out, columns=[c.split()[0] for c in ANALYZED_SCHEMA.split(", ")])

    return run


@dataclass
class IngestResult:
    out_dir: Path
    images: pd.DataFrame
    summary: dict
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def ok(self) -> pd.DataFrame:
        return self.images[self.images["status"] == "ok"]


def effective_folds(labels: pd.Series, groups: pd.Series, folds: int) -> int:
    """Small folders (smoke tests, a first look) cannot fill `folds` stratified folds: use fewer, and say so."""
    from xray_spark.errors import UserError

    per_class = pd.DataFrame({"label": labels.to_numpy(), "group": groups.to_numpy()}).groupby("label")["group"].nunique()
    if per_class.empty or per_class.min() < 2:
        raise UserError(f"too few images to split: groups per class {per_class.to_dict()}; need at least 2 per class")
    usable = int(min(folds, per_class.min()))
    if usable < folds:
        log.warning("only %d groups in the smallest class: using %d folds instead of %d (test share 1/%d)",
                    per_class.min(), usable, folds, usable)
    return usable


def _why_not_read(path: str) -> str:
    """Spark's file sources skip zero-byte files; say which of the possible reasons applies."""
    if not os.path.exists(path):
        return "missing_file: listed in the manifest but not found"
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        return "empty_file: 0 bytes"
    return "unreadable: listed but not returned by the file source"


def _reconcile(listing: pd.DataFrame, analyzed: pd.DataFrame) -> pd.DataFrame:
    """Join the driver listing with what Spark read; whatever is missing or unlabelled becomes a quarantine row."""
    df = listing.merge(analyzed, how="left", left_on="path", right_on="key").drop(columns=["key"])
    missing = df["status"].isna()
    df.loc[missing, "status"] = "quarantined"
    df.loc[missing, "reason"] = df.loc[missing, "path"].map(_why_not_read)
    sizes = df.loc[missing, "path"].map(lambda p: os.path.getsize(p) if os.path.isfile(p) else None)
    df["file_size"] = df["file_size"].astype("Int64")
    df.loc[missing, "file_size"] = sizes.astype("Int64")
    bad_label = df["label_status"] != "ok"
    df.loc[bad_label, "reason"] = df.loc[bad_label].apply(
        lambda r: r["label_status"] if r["status"] == "ok" else f"{r['label_status']}; {r['reason']}", axis=1
    )
    df.loc[bad_label, "status"] = "quarantined"
    return df.drop(columns=["label_status"])


def ingest(spark, data_dir: str | Path, out_dir: str | Path, cfg: Config) -> IngestResult:
    """Read, validate, de-duplicate and split one data folder; write everything under `out_dir`."""
    from xray_spark.data.dedup import find_duplicates
    from xray_spark.data.images import ingest_key
    from xray_spark.data.split import assign_groups, check_no_leak, grouped_split, split_hash

    t0 = time.time()
    key = ingest_key(data_dir, cfg)  # before reading: a file added mid-run must trigger the next ingest
    listing = discover(data_dir, cfg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    log.info("ingest: %d files listed under %s; decoding with Spark", len(listing), data_dir)

    files = read_binary_files(spark, Path(data_dir).resolve())
    analyzed_sdf = files.select("path", "content", "length").mapInPandas(
        _analyze_partition(cfg.decode.max_pixels, cfg.decode.max_file_bytes, cfg.dedup.thumb_size), ANALYZED_SCHEMA
    )
    analyzed = analyzed_sdf.toPandas()
    listed = set(listing["path"])
    extra = analyzed[~analyzed["key"].isin(listed)]
    extra = extra[~extra["key"].map(lambda k: Path(k).name.lower() in IGNORED_NAMES)]  # manifest.csv, README, ...
    if len(extra):
        log.info("ingest: %d files under the folder are not in the manifest/class folders; ignored", len(extra))
    df = _reconcile(listing, analyzed[analyzed["key"].isin(listed)])
    log.info("ingest: decoded %d files in %.1fs", len(df), time.time() - t0)

    ok = df[df["status"] == "ok"].reset_index(drop=True)
    report = find_duplicates(
        ok[["path", "sha256", "label", "patient_id", "pixel_sha256", "phash", "thumb"]],
        max_hamming=cfg.dedup.phash_max_hamming,
        min_correlation=cfg.dedup.pixel_min_correlation,
        thumb_size=cfg.dedup.thumb_size,
    )
    dup_files = report.write(out / "duplicates")
    groups = assign_groups(ok, report.pairs)
    folds = effective_folds(ok["label"], groups, cfg.split.folds)
    split_df = grouped_split(ok, groups, seed=cfg.split.seed, folds=folds, test_fold=min(cfg.split.test_fold, folds - 1))
    check_no_leak(split_df)
    dup_groups = report.groups.set_index("path")["dup_group"] if len(report.groups) else pd.Series(dtype=str)
    split_df["dup_group"] = split_df["path"].map(dup_groups)

    images = df.drop(columns=["thumb"]).merge(
        split_df[["path", "group_id", "dup_group", "fold", "split"]], how="left", on="path"
    )
    images["fold"] = images["fold"].astype("Int64")
    images = images[IMAGE_COLUMNS]
    files_out = _write_outputs(spark, images, out)
    files_out.update({f"duplicates/{p.name}": p for p in dup_files})

    summary = summarize(images, report.summary(), split_hash(split_df), time.time() - t0)
    summary["data_dir"] = str(Path(data_dir).resolve())
    summary["ingest_key"] = key
    summary["split"]["folds"] = folds
    summary["manifest_hash"] = manifest_hash(images)
    summary_path = out / "summary.json"
    summary_path.write_text(json.dumps(summary, indent=2, sort_keys=True))
    files_out["summary.json"] = summary_path
    return IngestResult(out_dir=out, images=images, summary=summary, files=files_out)


def _write_outputs(spark, images: pd.DataFrame, out: Path) -> dict[str, Path]:
    """images/ (Parquet via Spark), split.csv (the persisted split every later run reuses), quarantine.csv."""
    table = out / "images"
    spark.createDataFrame(images.astype(object).where(images.notna(), None), schema=_images_schema()).coalesce(
        1
    ).write.mode("overwrite").parquet(str(table))
    ok = images[images["status"] == "ok"]
    split_csv = out / "split.csv"
    ok[["path", "rel_path", "label", "source", "patient_id", "sha256", "group_id", "dup_group", "fold", "split"]].to_csv(
        split_csv, index=False
    )
    quarantine_csv = out / "quarantine.csv"
    images[images["status"] != "ok"][["path", "label", "file_size", "reason"]].to_csv(quarantine_csv, index=False)
    return {"images": table, "split.csv": split_csv, "quarantine.csv": quarantine_csv}


def _images_schema():
    from pyspark.sql.types import IntegerType, LongType, StringType, StructField, StructType

    types = {"width": IntegerType(), "height": IntegerType(), "bit_depth": IntegerType(), "fold": IntegerType(),
             "file_size": LongType()}
    return StructType([StructField(c, types.get(c, StringType()), True) for c in IMAGE_COLUMNS])


def summarize(images: pd.DataFrame, dup_summary: dict, split_id: str, seconds: float) -> dict:
    """Counts that must reconcile: read = ok + quarantined, per class, plus split and duplicate figures."""
    ok = images[images["status"] == "ok"]
    quarantined = images[images["status"] != "ok"]
    return {
        "files_read": int(len(images)),
        "ok": int(len(ok)),
        "quarantined": int(len(quarantined)),
        "per_class_ok": {str(k): int(v) for k, v in ok["label"].value_counts().sort_index().items()},
        "quarantine_reasons": {
            str(k): int(v) for k, v in quarantined["reason"].fillna("").str.split(":").str[0].value_counts().items()
        },
        "split": {
            "hash": split_id,
            "train": int((ok["split"] == "train").sum()),
            "test": int((ok["split"] == "test").sum()),
            "groups": int(ok["group_id"].nunique()),
        },
        "duplicates": {k: int(v) for k, v in dup_summary.items()},
        "seconds": round(seconds, 1),
    }


def manifest_hash(images: pd.DataFrame) -> str:
    """Identifies the dataset content (relative path, label, bytes) independent of where it lives."""
    import hashlib

    rows = images[["rel_path", "label", "sha256"]].astype(str).sort_values("rel_path").to_csv(index=False)
    return hashlib.sha256(rows.encode()).hexdigest()


def format_summary(summary: dict) -> str:
    """The lines a person reads at the end of `xray-spark ingest`."""
    lines = [
        f"files read: {summary['files_read']} = ok {summary['ok']} + quarantined {summary['quarantined']}",
        "ok per class: " + ", ".join(f"{k} {v}" for k, v in summary["per_class_ok"].items()),
    ]
    if summary["quarantine_reasons"]:
        lines.append("quarantined by reason: " + ", ".join(f"{k} {v}" for k, v in summary["quarantine_reasons"].items()))
    s = summary["split"]
    lines.append(f"split {s['hash'][:12]}: train {s['train']}, test {s['test']}, groups {s['groups']}")
    d = summary["duplicates"]
    lines.append("duplicates: " + ", ".join(f"{k} {v}" for k, v in d.items()))
    return "\n".join(lines)
