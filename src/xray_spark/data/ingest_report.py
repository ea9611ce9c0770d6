"""What an ingest tells people: summary counts (summary.json) and the duplicates report (CSV + markdown).

Why separate from ingest.py: these are small aggregates over the images table and the duplicate pairs,
computed by Spark and written through Hadoop; only counts and a bounded sample reach the driver.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pyspark.sql import Window
from pyspark.sql import functions as F

from xray_spark import paths

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

    from xray_spark.data.dedup import Duplicates
    from xray_spark.spark_io import HadoopFS

MD_MAX_GROUPS = 200
MD_MAX_REJECTED = 20


def summarize(images: DataFrame, dup_counts: dict[str, int], split: DataFrame, split_id: str,
              seconds: float) -> dict:
    """Counts that must reconcile: read = ok + quarantined, per class, plus split and duplicate figures."""
    by = images.groupBy("status", "label",
                        F.split(F.coalesce("reason", F.lit("")), ":").getItem(0).alias("code"),
                        "split").count().collect()
    ok = [r for r in by if r["status"] == "ok"]
    bad = [r for r in by if r["status"] != "ok"]
    per_class: dict[str, int] = {}
    for r in ok:
        per_class[str(r["label"])] = per_class.get(str(r["label"]), 0) + r["count"]
    reasons: dict[str, int] = {}
    for r in bad:
        reasons[str(r["code"])] = reasons.get(str(r["code"]), 0) + r["count"]
    dup_groups = split.where("dup_group IS NOT NULL").groupBy("dup_group").agg(
        F.countDistinct("label").alias("labels"))
    g = dup_groups.agg(F.count(F.lit(1)).alias("n"),
                       F.sum((F.col("labels") > 1).cast("int")).alias("c")).first()
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
            "groups": split.select("group_id").distinct().count(),
        },
        "duplicates": {**dup_counts, "n_groups": int(g["n"] or 0), "n_conflicting_groups": int(g["c"] or 0)},
        "seconds": round(seconds, 1),
    }


def write_duplicates_report(fs: HadoopFS, dups: Duplicates, ok: DataFrame, split: DataFrame,
                            folder: str) -> dict[str, str]:
    """duplicates_pairs.csv, duplicate_groups.csv, rejected_candidates.csv and a readable duplicates.md."""
    names = ok.select("id", "rel_path")

    def named(df: DataFrame) -> DataFrame:
        a = names.select(F.col("id").alias("a"), F.col("rel_path").alias("path_a"))
        b = names.select(F.col("id").alias("b"), F.col("rel_path").alias("path_b"))
        both = df.join(a, "a").join(b, "b")
        swap = F.col("path_a") > F.col("path_b")
        return both.select(F.when(swap, F.col("path_b")).otherwise(F.col("path_a")).alias("path_a"),
                           F.when(swap, F.col("path_a")).otherwise(F.col("path_b")).alias("path_b"),
                           *[c for c in df.columns if c not in ("a", "b")])

    pairs = named(dups.pairs).orderBy("kind", "path_a", "path_b")
    rejected = named(dups.rejected).orderBy(F.desc("correlation"), "path_a", "path_b")

    members = split.where("dup_group IS NOT NULL").select("id", "rel_path", "label", "dup_group")
    kinds = (dups.edges.join(members.select(F.col("id").alias("a"), "dup_group"), "a")
             .groupBy("dup_group")
             .agg(F.concat_ws("+", F.sort_array(F.collect_set("kind"))).alias("dup_kind")))
    w = Window.partitionBy("dup_group")
    groups = (members.join(kinds, "dup_group", "left")
              .select(F.col("rel_path").alias("path"), "dup_group", "dup_kind",
                      F.count(F.lit(1)).over(w).alias("group_size"),
                      F.concat_ws(";", F.sort_array(F.collect_set("label").over(w))).alias("labels"))
              .withColumn("label_conflict", F.instr("labels", ";") > 0)
              .orderBy(F.desc("label_conflict"), F.desc("group_size"), "dup_group", "path")).cache()

    out = {
        "duplicates/duplicates_pairs.csv": fs.write_csv(pairs, paths.join(folder, "duplicates_pairs.csv")),
        "duplicates/duplicate_groups.csv": fs.write_csv(groups, paths.join(folder, "duplicate_groups.csv")),
        "duplicates/rejected_candidates.csv": fs.write_csv(
            rejected, paths.join(folder, "rejected_candidates.csv")),
    }
    shown_groups = groups.select("dup_group").distinct().limit(MD_MAX_GROUPS)
    sample = groups.join(shown_groups, "dup_group", "left_semi").orderBy(
        F.desc("label_conflict"), F.desc("group_size"), "dup_group", "path").collect()
    n_groups = groups.select("dup_group").distinct().count()
    md = _markdown(dups, sample, n_groups, rejected.limit(MD_MAX_REJECTED).collect())
    md_path = paths.join(folder, "duplicates.md")
    fs.write_text(md_path, md)
    out["duplicates/duplicates.md"] = md_path
    groups.unpersist()
    return out


def _markdown(dups: Duplicates, sample: list, n_groups: int, rejected: list) -> str:
    p = dups.params
    lines = ["# Duplicate images", "",
             f"Near-duplicate candidates: pHash Hamming <= {p['max_hamming']}; confirmed when the Pearson "
             f"correlation of {p['thumb_size']}x{p['thumb_size']} thumbnails >= {p['min_correlation']}. "
             "Exact: identical decoded pixels or bytes. Paths are relative to the data folder.", "",
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
