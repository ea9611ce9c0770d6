"""What an ingest tells people: summary counts (summary.json) and the duplicates report (CSV + markdown).

Why separate from ingest.py: these are small aggregates over the images table and the duplicate pairs,
computed by Spark and written through Hadoop; only counts and a bounded sample reach the driver. The frames
here are lazy: ingest collects the small ones together (spark_io.collect_parts), one Spark job for all.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pyspark.sql import Window
from pyspark.sql import functions as F

from xray_spark import paths
from xray_spark.spark_io import first_rows

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

    from xray_spark.data.dedup import Duplicates
    from xray_spark.spark_io import HadoopFS

MD_MAX_GROUPS = 200
MD_MAX_REJECTED = 20


def summary_parts(images: DataFrame, groups: DataFrame) -> dict[str, DataFrame]:
    """The small aggregates `summarize` reads (lazy, collected with others in one job): images by status,
    label, reason code and side; duplicate groups and how many of them mix labels (`groups`:
    duplicate_groups)."""
    code = F.split(F.coalesce("reason", F.lit("")), ":").getItem(0)
    per_group = groups.select("dup_group", F.col("label_conflict").cast("int").alias("conflict")).distinct()
    return {
        "by_status": images.groupBy("status", "label", code.alias("code"), "split")
        .agg(F.count(F.lit(1)).alias("count")),
        "dup_groups": per_group.agg(F.count(F.lit(1)).alias("n"), F.sum("conflict").alias("c")),
        "by_source": images.groupBy("source", "status").agg(F.count(F.lit(1)).alias("count")),
    }


def summarize(collected: Mapping[str, list[dict]], dup_counts: dict[str, int], n_groups: int, split_id: str,
              seconds: float) -> dict:
    """Counts that must reconcile: read = ok + quarantined, per class, plus split and duplicate figures.
    `collected`: summary_parts, collected; `n_groups`: groups of the split."""
    by = collected["by_status"]
    ok = [r for r in by if r["status"] == "ok"]
    bad = [r for r in by if r["status"] != "ok"]
    per_class: dict[str, int] = {}
    for r in ok:
        per_class[str(r["label"])] = per_class.get(str(r["label"]), 0) + r["count"]
    reasons: dict[str, int] = {}
    for r in bad:
        reasons[str(r["code"])] = reasons.get(str(r["code"]), 0) + r["count"]
    g = collected["dup_groups"][0]
    return {
        "files_read": sum(r["count"] for r in by),
        "ok": sum(r["count"] for r in ok),
        "quarantined": sum(r["count"] for r in bad),
        "per_class_ok": dict(sorted(per_class.items())),
        "quarantine_reasons": dict(sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))),
        "split": {
            "hash": split_id,
            "train": sum(r["count"] for r in ok if r["split"] == "train"),
            "test": sum(r["count"] for r in ok if r["split"] == "test"),
            "groups": n_groups,
        },
        "duplicates": {**dup_counts, "n_groups": int(g["n"] or 0), "n_conflicting_groups": int(g["c"] or 0)},
        "per_source": _per_source(collected.get("by_source", [])),
        "seconds": round(seconds, 1),
    }


def _per_source(rows: list[dict]) -> dict[str, dict[str, int]]:
    """source -> {"ok": n, "quarantined": m}: what each merged source brought (reconciles with files_read)."""
    out: dict[str, dict[str, int]] = {}
    for r in rows:
        kind = "ok" if r["status"] == "ok" else "quarantined"
        counts = out.setdefault(str(r["source"]), {"ok": 0, "quarantined": 0})
        counts[kind] += int(r["count"])
    return dict(sorted(out.items()))


def _group_order() -> list[Column]:
    """duplicate_groups.csv's order: label conflicts first, then larger groups; a group's rows together."""
    return [F.desc("label_conflict"), F.desc("group_size"), F.col("dup_group"), F.col("path")]


def _rejected_order() -> list[Column]:
    """rejected_candidates.csv's order: the closest calls first."""
    return [F.desc("correlation"), F.col("path_a"), F.col("path_b")]


def duplicate_groups(dups: Duplicates, members: DataFrame) -> DataFrame:
    """One row per image in a duplicate group (`members`: id, rel_path, label, dup_group of the ok images
    in one): its group's kinds of copies, size and labels, and whether the labels disagree."""
    members = members.select("id", "rel_path", "label", "dup_group")
    kinds = (dups.edges.join(members.select(F.col("id").alias("a"), "dup_group"), "a")
             .groupBy("dup_group")
             .agg(F.concat_ws("+", F.sort_array(F.collect_set("kind"))).alias("dup_kind")))
    w = Window.partitionBy("dup_group")
    return (members.join(kinds, "dup_group", "left")
            .select(F.col("rel_path").alias("path"), "dup_group", "dup_kind",
                    F.count(F.lit(1)).over(w).alias("group_size"),
                    F.concat_ws(";", F.sort_array(F.collect_set("label").over(w))).alias("labels"))
            .withColumn("label_conflict", F.instr("labels", ";") > 0))


@dataclass(frozen=True)
class DuplicatesReport:
    """The duplicates report's frames, paths relative to the data folder (lazy)."""

    pairs: DataFrame  # confirmed pairs (exact and near)
    groups: DataFrame  # duplicate_groups
    rejected: DataFrame  # pHash candidates the pixels turned down

    def md_parts(self) -> dict[str, DataFrame]:
        """Bounded samples for duplicates.md (collected with other small results): the members of the first
        MD_MAX_GROUPS groups in report order (`_rank`: their group's) and the MD_MAX_REJECTED closest
        rejected candidates (`_rank`: theirs)."""
        per_group = self.groups.select("dup_group", "label_conflict", "group_size").distinct()
        shown = first_rows(per_group, MD_MAX_GROUPS, *_group_order()[:3]).select("dup_group", "_rank")
        return {"md_groups": self.groups.join(shown, "dup_group"),
                "md_rejected": first_rows(self.rejected, MD_MAX_REJECTED, *_rejected_order())}


def duplicates_report(dups: Duplicates, names: DataFrame, members: DataFrame) -> DuplicatesReport:
    """dups with image ids replaced by relative paths (`names`: id, rel_path), path_a < path_b."""

    def named(df: DataFrame) -> DataFrame:
        a = names.select(F.col("id").alias("a"), F.col("rel_path").alias("path_a"))
        b = names.select(F.col("id").alias("b"), F.col("rel_path").alias("path_b"))
        both = df.join(a, "a").join(b, "b")
        swap = F.col("path_a") > F.col("path_b")
        return both.select(F.when(swap, F.col("path_b")).otherwise(F.col("path_a")).alias("path_a"),
                           F.when(swap, F.col("path_a")).otherwise(F.col("path_b")).alias("path_b"),
                           *[c for c in df.columns if c not in ("a", "b")])

    return DuplicatesReport(pairs=named(dups.pairs), groups=duplicate_groups(dups, members),
                            rejected=named(dups.rejected))


def write_duplicate_tables(fs: HadoopFS, report: DuplicatesReport, folder: str) -> dict[str, str]:
    """duplicates_pairs.csv, duplicate_groups.csv and rejected_candidates.csv (one Spark job each)."""
    tables = {
        "duplicates_pairs.csv": (report.pairs, ("kind", "path_a", "path_b")),
        "duplicate_groups.csv": (report.groups, _group_order()),
        "rejected_candidates.csv": (report.rejected, _rejected_order()),
    }
    return {f"duplicates/{name}": fs.write_csv(df, paths.join(folder, name), order)
            for name, (df, order) in tables.items()}


def write_duplicates_md(fs: HadoopFS, dups: Duplicates, collected: Mapping[str, list[dict]], n_groups: int,
                        folder: str) -> dict[str, str]:
    """duplicates.md, readable, from DuplicatesReport.md_parts as collected."""
    sample = sorted(collected["md_groups"], key=lambda r: (r["_rank"], r["path"]))
    rejected = sorted(collected["md_rejected"], key=lambda r: r["_rank"])
    md_path = paths.join(folder, "duplicates.md")
    fs.write_text(md_path, _markdown(dups, sample, n_groups, rejected))
    return {"duplicates/duplicates.md": md_path}


def _markdown(dups: Duplicates, sample: list, n_groups: int, rejected: list) -> str:
    p = dups.params
    lines = ["# Duplicate images", "",
             f"Near-duplicate candidates: pHash Hamming <= {p['max_hamming']}; confirmed when the Pearson "
             f"correlation of {p['thumb_size']}x{p['thumb_size']} thumbnails >= {p['min_correlation']}. "
             "Exact: identical decoded pixels or bytes. Paths are relative to the data folder.", "",
             *_copies_line(p),
             "| count | value |", "|---|---|", *[f"| {k} | {v} |" for k, v in dups.counts.items()],
             f"| n_groups | {n_groups} |", ""]
    if not sample:
        return "\n".join([*lines, "No duplicate groups.", ""])
    conflicting = [r for r in sample if r["label_conflict"]]
    lines += [f"## Groups whose labels disagree ({len({r['dup_group'] for r in conflicting})} shown)", ""]
    lines += _md_groups(conflicting) if conflicting else ["None.", ""]
    lines += [f"## All groups ({n_groups}; first {MD_MAX_GROUPS} shown, all in duplicate_groups.csv)", ""]
    lines += _md_groups(sample)
    if rejected:
        lines += ["## Closest rejected candidates (pHash close, pixels not)", "",
                  "| hamming | correlation | path_a | path_b |", "|---|---|---|---|"]
        lines += [f"| {r['hamming']} | {r['correlation']:.4f} | {r['path_a']} | {r['path_b']} |"
                  for r in rejected]
        lines.append("")
    return "\n".join(lines)


def _copies_line(p: Mapping) -> list[str]:
    """How copies that one source cropped or rescaled from another were found (when that search ran)."""
    if "copy_min_correlation" not in p:
        return []
    return [f"Copies (crops, rescales, re-encodings; kind `copy`): the whole-image pHash of one within "
            f"{p['copy_max_hamming']} bits of a window's pHash of the other, confirmed by ORB keypoints + "
            f"RANSAC and a correlation >= {p['copy_min_correlation']} of the aligned overlap.", ""]


def _md_groups(rows: list) -> list[str]:
    lines: list[str] = []
    current = None
    for r in rows:
        if r["dup_group"] != current:
            current = r["dup_group"]
            lines.append(f"- **{current}** ({r['dup_kind']}, {r['group_size']} images, "
                         f"labels: {r['labels']})")
        lines.append(f"  - {r['path']}")
    return [*lines, ""]
