"""Copies across sources, even cropped: crop-tolerant candidates by banded search, confirmed on executors.

Why this shape (see copy_hash.py for the pixels): every image has its whole-image pHash and the pHashes of
a grid of its windows. A copy B cropped from A has a whole-image hash close to one of A's window hashes,
so candidates are (whole of one, window of the other) within `copy_max_hamming` bits; whole-vs-whole is
window 0. Banded like dedup.py, but one-sided: a whole hash emits each band value with up to `f` bits
flipped, a window hash its exact band values only (the grid has hundreds of windows; flips on both sides
would multiply them), so a pair within 3 * (f + 1) - 1 bits meets in some band: f = 1 covers 5 bits (66
keys per whole hash), f = 2 covers 8 (~760 keys) and is used only when copy_max_hamming > 5. Candidates are
confirmed by keypoints + alignment (copy_hash.match_copy) in mapInPandas; only int edges and one-row counts
reach the driver. Cost: the join grows with (keys per whole hash) x (windows) / 2^21 per image pair, and
chest X-ray hashes crowd together, so the candidate count, not the join, is what to watch at scale.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import functions as F

from xray_spark.config import MAX_HAMMING_COVERED
from xray_spark.data.copy_check import CopyCheck, keypoints, match_keypoints, single_threaded
from xray_spark.data.copy_hash import unpack
from xray_spark.data.dedup import BANDS

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

_SCORED_SCHEMA = "a long, b long, hamming int, inliers int, correlation double"
_KEYPOINTS_KEPT = 512  # thumbnails + keypoints (~85 KB each) a confirming task keeps for later pairs
_IMAGES_PER_SORT = 256  # images whose window hashes are sorted at once (~4 MB of hashes per band)


def _band_groups(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """Per image and band, its window hashes grouped by band value: sorted and cut with numpy and handed
    back as Arrow list arrays: ~0.5 ms per image (a Python loop per group, through pandas, took 6-8 ms)."""
    step = _IMAGES_PER_SORT
    for batch in (b.slice(i, step) for b in batches for i in range(0, b.num_rows, step)):
        ids = batch.column("id").to_numpy(zero_copy_only=False)
        lists = batch.column("hashes")
        flat = lists.flatten().to_numpy(zero_copy_only=False).view(np.uint64)
        lengths = pc.list_value_length(lists).fill_null(0).to_numpy(zero_copy_only=False)
        owner = np.repeat(np.arange(len(ids)), lengths)
        for band, (start, width) in enumerate(BANDS):
            keys = (flat >> np.uint64(start)) & np.uint64((1 << width) - 1)
            order = np.lexsort((keys, owner))  # by image, then band value
            k, o = keys[order], owner[order]
            first = np.flatnonzero(np.r_[True, (k[1:] != k[:-1]) | (o[1:] != o[:-1])])
            offsets = pa.array(np.r_[first, len(k)].astype(np.int32))
            yield pa.RecordBatch.from_arrays(
                [pa.array(np.full(len(first), band, np.int32)), pa.array(k[first].astype(np.int64)),
                 pa.array(ids[o[first]]),
                 pa.ListArray.from_arrays(offsets, pa.array(flat[order].view(np.int64)))],
                names=["band", "key", "id", "hs"])


def window_keys(windows: DataFrame) -> DataFrame:
    """(id, hashes array<long>) -> (band, key, id, hs): each image's window hashes that share a band value,
    as one row (no flips; see module doc). Grouped in the worker: neighbouring windows mostly share band
    values (measured on ozturk: ~5x fewer rows than one row per window), so far less is shuffled."""
    schema = "band int, key long, id long, hs array<long>"
    return windows.select("id", "hashes").mapInArrow(_band_groups, schema)


def whole_keys(hashes: DataFrame, flips: int) -> DataFrame:
    """(id, h) -> (band, key, id, h): per band, the band value with every set of <= `flips` bits flipped."""
    parts = []
    for band, (start, width) in enumerate(BANDS):
        masks = [0] + [1 << i for i in range(width)]
        if flips >= 2:
            masks += [(1 << i) | (1 << j) for i, j in itertools.combinations(range(width), 2)]
        value = F.shiftrightunsigned("h", start).bitwiseAND(F.lit((1 << width) - 1))
        parts.append(hashes.select(F.lit(band).alias("band"), "id", "h", value.alias("v"),
                                   F.explode(F.array(*[F.lit(m) for m in masks])).alias("m"))
                     .select("band", F.col("v").bitwiseXOR(F.col("m")).alias("key"), "id", "h"))
    out = parts[0]
    for p in parts[1:]:
        out = out.unionByName(p)
    return out


def copy_candidates(windows: DataFrame, max_hamming: int) -> DataFrame:
    """(id, hashes) rows -> pairs a < b where the whole-image hash of one is within max_hamming bits of any
    window hash of the other: (a, b, hamming) with the smallest distance found."""
    if max_hamming > MAX_HAMMING_COVERED:
        raise ValueError(f"dedup.copy_max_hamming: the banded search covers <= {MAX_HAMMING_COVERED}, "
                         f"got {max_hamming}")
    flips = 1 if max_hamming <= len(BANDS) * 2 - 1 else 2
    whole = whole_keys(windows.select("id", F.col("hashes")[0].alias("h")), flips)
    parts = window_keys(windows)
    left = whole.select("band", "key", F.col("id").alias("x"), F.col("h").alias("hx"))
    right = parts.select("band", "key", F.col("id").alias("y"), "hs")
    dist = F.array_min(F.transform("hs", lambda h: F.bit_count(h.bitwiseXOR(F.col("hx"))))).cast("int")
    near = (left.join(right, ["band", "key"]).where(F.col("x") != F.col("y"))
            .select(F.least("x", "y").alias("a"), F.greatest("x", "y").alias("b"), dist.alias("hamming"))
            .where(F.col("hamming") <= max_hamming))
    return near.groupBy("a", "b").agg(F.min("hamming").alias("hamming"))


def _confirm(check: CopyCheck):
    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        single_threaded()
        seen: OrderedDict[int, tuple] = OrderedDict()  # id -> (thumbnail, keypoints), most recent last

        def features(ident: int, packed: bytes | None) -> tuple:
            if ident in seen:
                seen.move_to_end(ident)
                return seen[ident]
            img = unpack(packed)
            seen[ident] = found = (img, keypoints(img))
            if len(seen) > _KEYPOINTS_KEPT:
                seen.popitem(last=False)
            return found

        for pdf in batches:
            scores = [match_keypoints(*features(a, ta), *features(b, tb), check)
                      for a, b, ta, tb in zip(pdf["a"], pdf["b"], pdf["ta"], pdf["tb"], strict=True)]
            yield pd.DataFrame({"a": pdf["a"], "b": pdf["b"], "hamming": pdf["hamming"],
                                "inliers": [s[0] for s in scores], "correlation": [s[1] for s in scores]})

    return run


def scored_copies(windows: DataFrame, thumbs: DataFrame, max_hamming: int, check: CopyCheck) -> DataFrame:
    """Candidates (copy_candidates) with their keypoint inliers and aligned correlation (NaN/null: failed a
    keypoint test). `thumbs`: (id, copy_thumb) packed aspect thumbnails; only candidate members move."""
    cand = copy_candidates(windows, max_hamming)
    members = cand.select(F.col("a").alias("id")).union(cand.select(F.col("b").alias("id"))).distinct()
    needed = thumbs.join(members, "id", "left_semi")
    paired = (cand.join(needed.select(F.col("id").alias("a"), F.col("copy_thumb").alias("ta")), "a", "left")
              .join(needed.select(F.col("id").alias("b"), F.col("copy_thumb").alias("tb")), "b", "left"))
    return paired.sortWithinPartitions("a").mapInPandas(_confirm(check), _SCORED_SCHEMA)

