"""Exact and near-duplicate images, found on executors so the split can keep them on one side.

Why two stages for near-duplicates: on chest X-rays a 64-bit perceptual hash at Hamming <= 8 flags far
more pairs than are real duplicates (every frontal chest film has the same coarse layout), so pHash only
proposes *candidates*; a pixel check (Pearson correlation of the 128x128 thumbnails) confirms them.

Why banded: comparing all pairs is O(n^2) (5e9 at 100k images). The 64 bits are cut into 3 bands of
22/21/21 bits; two hashes within Hamming 8 differ in at most 2 bits of some band (pigeonhole: 3 x 3 > 8).
Each image emits its band value and the value with each single bit flipped; two images meet under the
same (band, key) exactly when that band differs in <= 2 bits. A self-join on (band, key) then a Hamming
filter gives the same candidates as brute force (tested), with work near-linear in the number of images.
Thumbnails are read only for candidate members and never reach the driver.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from pyspark.sql import functions as F

from xray_spark.config import MAX_HAMMING_COVERED, PHASH_BANDS
from xray_spark.data.groups import star_edges
from xray_spark.spark_io import collect_parts

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

log = logging.getLogger(__name__)



def _bands(bits: int, n: int) -> tuple[tuple[int, int], ...]:
    """`n` bands of `bits` bits as (first bit, width); the first ones a bit wider when `n` does not divide."""
    widths = [bits // n + (i < bits % n) for i in range(n)]
    return tuple((sum(widths[:i]), w) for i, w in enumerate(widths))


BANDS = _bands(64, PHASH_BANDS)  # (first bit, width) per band: ((0, 22), (22, 21), (43, 21))
_CORR_SCHEMA = "a long, b long, hamming int, correlation double"


def phash_long(col):
    """16 hex chars -> the 64-bit value as a signed long (bit pattern kept); null when malformed."""
    ok = col.rlike(r"^[0-9a-fA-F]{16}\z")  # \z: Java's `$` would also accept a trailing line break
    hi = F.conv(F.substring(col, 1, 8), 16, 10).cast("long")
    lo = F.conv(F.substring(col, 9, 8), 16, 10).cast("long")
    return F.when(ok, F.shiftleft(hi, 32).bitwiseOR(lo))


def band_keys(hashes: DataFrame) -> DataFrame:
    """(id, h) -> (band, key, id, h): per band, the band value and each single-bit flip of it."""
    parts = []
    for band, (start, width) in enumerate(BANDS):
        value = F.shiftrightunsigned("h", start).bitwiseAND(F.lit((1 << width) - 1))
        flips = F.expr(f"sequence(-1, {width - 1})")
        parts.append(hashes.select(
            F.lit(band).alias("band"), "id", "h", F.explode(flips).alias("bit"), value.alias("v"),
        ).select("band", F.expr("IF(bit < 0, v, v ^ shiftleft(1L, bit))").alias("key"), "id", "h"))
    out = parts[0]
    for p in parts[1:]:
        out = out.unionByName(p)
    return out


def hamming_candidates(hashes: DataFrame, max_hamming: int) -> DataFrame:
    """All pairs a < b of (id, h) rows with popcount(h_a XOR h_b) <= max_hamming: (a, b, hamming)."""
    if max_hamming > MAX_HAMMING_COVERED:
        raise ValueError(f"banded search covers Hamming <= {MAX_HAMMING_COVERED}, asked for {max_hamming}")
    keys = band_keys(hashes)
    left = keys.select("band", "key", F.col("id").alias("a"), F.col("h").alias("ha"))
    right = keys.select("band", "key", F.col("id").alias("b"), F.col("h").alias("hb"))
    pairs = left.join(right, ["band", "key"]).where(F.col("a") < F.col("b"))
    dist = F.bit_count(F.col("ha").bitwiseXOR(F.col("hb"))).cast("int")
    return pairs.select("a", "b", dist.alias("hamming")).where(F.col("hamming") <= max_hamming).distinct()


def thumb_correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation per row of two (rows x pixels) uint8 arrays, exact in int64; NaN for a flat row
    (no defined correlation: never confirms a pair)."""
    a = a.astype(np.int64)
    b = b.astype(np.int64)
    n = a.shape[1]
    sa, sb = a.sum(1), b.sum(1)
    cov = n * np.einsum("ij,ij->i", a, b) - sa * sb
    var_a = (n * np.einsum("ij,ij->i", a, a) - sa * sa).astype(np.float64)
    var_b = (n * np.einsum("ij,ij->i", b, b) - sb * sb).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return cov / np.sqrt(var_a * var_b)


def _correlate(thumb_pixels: int):
    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for pdf in batches:
            corr = np.full(len(pdf), np.nan)
            good = pdf["ta"].map(lambda t: t is not None and len(t) == thumb_pixels) & pdf["tb"].map(
                lambda t: t is not None and len(t) == thumb_pixels)
            if good.any():
                ta = np.stack([np.frombuffer(t, np.uint8) for t in pdf.loc[good, "ta"]])
                tb = np.stack([np.frombuffer(t, np.uint8) for t in pdf.loc[good, "tb"]])
                corr[good.to_numpy()] = thumb_correlation(ta, tb)
            yield pd.DataFrame({"a": pdf["a"], "b": pdf["b"], "hamming": pdf["hamming"], "correlation": corr})

    return run


@dataclass
class Duplicates:
    """Confirmed duplicate edges between image ids and the counts needed to judge the thresholds.

    pairs: (a, b, kind, hamming, correlation), kind "exact" (same decoded pixels or bytes; a star per hash,
    correlation 1, hamming null), "near" (a confirmed pHash candidate) or "copy" (a crop-tolerant candidate
    confirmed by data/copies.py and not already exact or near; hamming: whole vs window hash).
    rejected: pHash candidates the thumbnail correlation turned down (a, b, hamming, correlation).
    tallies: the one-row aggregates behind `counts`, so a caller can collect them together with its own
    small results in one Spark job (collect_parts, then set_counts); read alone, `counts` collects them.
    """

    pairs: DataFrame
    rejected: DataFrame
    params: dict[str, float]
    tallies: dict[str, DataFrame]
    cached: list[DataFrame] = field(default_factory=list)
    _counts: dict[str, int] | None = None

    @property
    def edges(self) -> DataFrame:
        return self.pairs.select("a", "b", "kind")

    @property
    def counts(self) -> dict[str, int]:
        if self._counts is None:
            self.set_counts(collect_parts(self.tallies))
        assert self._counts is not None
        return self._counts

    def set_counts(self, collected: Mapping[str, list[dict]]) -> None:
        """Counts from the collected `tallies` (any mapping that holds their parts)."""
        images, exact, scored, *copies = (collected[name][0] for name in self.tallies)
        near = int(scored["confirmed"] or 0)
        self._counts = {
            "n_images": int(images["n"]),
            "n_unchecked": int(images["n"]) - int(images["hashed"]),
            "n_exact_pairs": int(exact["n"]),
            "n_near_pairs": near,
            "n_candidates": int(scored["n"]),
            "n_rejected_candidates": int(scored["n"]) - near,
        }
        if copies:  # crop-tolerant search: its candidates, and the copies it adds beyond exact and near pairs
            cp = copies[0]  # n_cross_source_pairs: pairs of any kind (exact, near, copy) across two sources
            self._counts.update(n_copy_candidates=int(cp["n"]), n_copy_pairs=int(cp["added"] or 0),
                                n_cross_source_copies=int(cp["cross"] or 0),
                                n_cross_source_pairs=int(cp["cross_all"] or 0))
        c = self._counts
        log.info("dedup: %d pHash candidates (<= %d bits), %d confirmed (r >= %.2f), %d rejected; %d exact "
                 "pairs", c["n_candidates"], self.params["max_hamming"], c["n_near_pairs"],
                 self.params["min_correlation"], c["n_rejected_candidates"], c["n_exact_pairs"])
        if copies:
            log.info("dedup: %d crop-tolerant copy candidates (<= %s bits), %d copies beyond exact/near "
                     "pairs (%d across sources)", c["n_copy_candidates"], self.params.get("copy_max_hamming"),
                     c["n_copy_pairs"], c["n_cross_source_copies"])

    def release(self) -> None:
        """Drop the cached frames behind pairs and rejected (once the reports are written)."""
        for df in self.cached:
            df.unpersist()


def exact_edges(images: DataFrame) -> DataFrame:
    """Images with the same decoded pixels (or bytes): a star per hash, linear in the group size."""
    out = None
    for col in ("pixel_sha256", "sha256"):
        e = star_edges(images, col)
        out = e if out is None else out.unionByName(e)
    return out.distinct()


def find_duplicates(images: DataFrame, thumbs: DataFrame, *, max_hamming: int = 8,
                    min_correlation: float = 0.95, thumb_size: int = 128, copies: DataFrame | None = None,
                    copy_min_correlation: float = 0.95, copy_max_hamming: int | None = None) -> Duplicates:
    """`images`: ok rows with id, pixel_sha256, sha256, phash, source; `thumbs`: (id, thumb) from the decode
    stage; `copies`: scored crop-tolerant candidates (copies.scored_copies), or None to skip that search.

    Lazy: no Spark job runs here. The frames are cached (they are small: one row per pair), so the first
    action that needs them computes the candidates once (Duplicates.release drops them).
    """
    exact = exact_edges(images).cache()
    hashes = images.select("id", phash_long(F.col("phash")).alias("h"), "pixel_sha256").where("h IS NOT NULL")
    cand = hamming_candidates(hashes.select("id", "h"), max_hamming)
    px = hashes.select("id", "pixel_sha256")
    cand = (cand.join(px.withColumnRenamed("id", "a").withColumnRenamed("pixel_sha256", "pa"), "a")
            .join(px.withColumnRenamed("id", "b").withColumnRenamed("pixel_sha256", "pb"), "b")
            .where(F.col("pa").isNull() | F.col("pb").isNull() | (F.col("pa") != F.col("pb")))
            .select("a", "b", "hamming")).cache()
    members = cand.select(F.col("a").alias("id")).union(cand.select(F.col("b").alias("id"))).distinct()
    needed = thumbs.join(F.broadcast(members), "id", "left_semi")  # only candidate members move
    # left joins: a candidate whose thumbnail is missing is still counted, and rejected
    with_thumbs = (cand.join(needed.select(F.col("id").alias("a"), F.col("thumb").alias("ta")), "a", "left")
                   .join(needed.select(F.col("id").alias("b"), F.col("thumb").alias("tb")), "b", "left"))
    scored = with_thumbs.mapInPandas(_correlate(thumb_size * thumb_size), _CORR_SCHEMA).cache()
    # an undefined correlation (flat or missing thumbnail) arrives as null from Arrow; Spark would also order
    # NaN above every number: neither may confirm a pair, and both must land in `rejected`
    corr = F.col("correlation")
    confirmed = F.coalesce(corr.isNotNull() & ~F.isnan(corr) & (corr >= min_correlation), F.lit(False))
    near = scored.where(confirmed).select("a", "b", F.lit("near").alias("kind"), "hamming", "correlation")
    rejected = scored.where(~confirmed)
    pairs = exact.select("a", "b", F.lit("exact").alias("kind"), F.lit(None).cast("int").alias("hamming"),
                         F.lit(1.0).alias("correlation")).unionByName(near)
    cached = [exact, cand, scored]
    if copies is not None:
        copies = copies.cache()
        cached.append(copies)
        ok = copies.where(_confirmed(copy_min_correlation))
        added = (ok.join(pairs.select("a", "b"), ["a", "b"], "left_anti")
                 .select("a", "b", F.lit("copy").alias("kind"), "hamming", "correlation"))
        pairs = pairs.unionByName(added)
    pairs = pairs.cache()
    n = F.count(F.lit(1)).alias("n")
    tallies = {  # one row each; Duplicates.set_counts reads them in this order
        "dedup_images": images.agg(n, F.count(phash_long(F.col("phash"))).alias("hashed")),
        "dedup_exact": exact.agg(n),
        "dedup_scored": scored.agg(n, F.sum(confirmed.cast("int")).alias("confirmed")),
    }
    if copies is not None:
        src = images.select("id", "source")
        across, copy = ~F.col("sa").eqNullSafe(F.col("sb")), F.col("kind") == "copy"
        kinds = (pairs.join(src.withColumnRenamed("id", "a").withColumnRenamed("source", "sa"), "a")
                 .join(src.withColumnRenamed("id", "b").withColumnRenamed("source", "sb"), "b")
                 .agg(F.sum(copy.cast("int")).alias("n"), F.sum((across & copy).cast("int")).alias("cross"),
                      F.sum(across.cast("int")).alias("cross_all")))
        tallies["dedup_copies"] = copies.agg(n).crossJoin(kinds.select(F.col("n").alias("added"), "cross",
                                                                       "cross_all"))
    params = {"max_hamming": max_hamming, "min_correlation": min_correlation, "thumb_size": thumb_size}
    if copies is not None:
        params.update(copy_min_correlation=copy_min_correlation, copy_max_hamming=copy_max_hamming)
    return Duplicates(pairs=pairs, rejected=rejected, params=params, tallies=tallies, cached=[*cached, pairs])


def _confirmed(min_correlation: float):
    """A scored copy candidate whose aligned correlation reaches min_correlation (null/NaN never do)."""
    corr = F.col("correlation")
    return F.coalesce(corr.isNotNull() & ~F.isnan(corr) & (corr >= min_correlation), F.lit(False))
