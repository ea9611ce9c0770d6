"""De-duplication on Spark: banded pHash search equals brute force, pixel confirmation, exact stars, counts,
and real chest X-rays. Thumbnails and hashes come from the project's own decode path (`analyze`)."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import ndimage

from conftest import local
from xray_spark.data.decode import analyze, decode_gray
from xray_spark.data.dedup import (
    BANDS,
    MAX_HAMMING_COVERED,
    band_keys,
    find_duplicates,
    hamming_candidates,
    phash_long,
    thumb_correlation,
)
from xray_spark.data.groups import component_frame, image_id_col

THUMB = 128
ROW_SCHEMA = "rel_path string, sha256 string, pixel_sha256 string, phash string, thumb binary"
# Two different NIH patients' films that pHash calls close (Hamming 4) but whose pixels disagree
# (thumbnail correlation ~0.88): found by scanning all 1124 ozturk images.
REAL_PHASH_LOOKALIKE = ("no_findings/00001543_005.png", "no_findings/00002572_004.png")
REAL_EXACT = ("no_findings/00002658_001.png", "no_findings/00002658_002.png")  # byte-identical files


# ---------------------------------------------------------------- helpers


def blobs(seed: int, size: int = 256) -> np.ndarray:
    """A smooth random 'anatomy' (low-frequency field): structure pHash and correlation can both see."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.normal(size=(size, size)), sigma=12)
    return ((field - field.min()) / (field.max() - field.min()) * 255).astype(np.uint8)


def png(a: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG", **kw)
    return buf.getvalue()


def jpeg(a: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def shifted(a: np.ndarray, dx: int, dy: int) -> np.ndarray:
    return np.roll(np.roll(a, dy, axis=0), dx, axis=1)


def brighter(a: np.ndarray, gain: float, offset: float) -> np.ndarray:
    return np.clip(a.astype(np.float32) * gain + offset, 0, 255).astype(np.uint8)


def decoded(rel: str, data: bytes) -> tuple:
    """A row as ingest builds it: file sha256 plus what `analyze` (the ingest decode path) computes."""
    rec = analyze(data, thumb_size=THUMB)
    assert rec.status == "ok", rec.reason
    return (rel, hashlib.sha256(data).hexdigest(), rec.pixel_sha256, rec.phash, rec.thumb)


def crafted(rel: str, phash: str | None, thumb: np.ndarray | bytes | None, *, pixel: str | None = None,
            sha: str | None = None) -> tuple:
    """A row with chosen hashes and thumbnail (pixel/file hashes default to unique values)."""
    if isinstance(thumb, np.ndarray):
        thumb = thumb.astype(np.uint8).tobytes()
    return (rel, sha or hashlib.sha256(f"file:{rel}".encode()).hexdigest(),
            pixel or hashlib.sha256(f"pixels:{rel}".encode()).hexdigest(), phash, thumb)


def frames(spark, rows: list[tuple]):
    """Rows -> (images[id, rel_path, sha256, pixel_sha256, phash], thumbs[id, thumb]) with ingest's ids."""
    from pyspark.sql import functions as F

    df = local(spark, rows, ROW_SCHEMA).withColumn("id", image_id_col(F.col("rel_path")))
    return df.drop("thumb"), df.select("id", "thumb")


def run(spark, rows: list[tuple], **kw):
    """find_duplicates on the rows -> (Duplicates, {id: rel_path})."""
    images, thumbs = frames(spark, rows)
    names = {r["id"]: r["rel_path"] for r in images.select("id", "rel_path").collect()}
    return find_duplicates(images, thumbs, **kw), names


def named(df, names: dict[int, str]) -> list[dict]:
    """Pair rows with a/b replaced by relative paths; also checks every pair is ordered a < b."""
    out = []
    for r in df.collect():
        d = r.asDict()
        assert d["a"] < d["b"], d
        out.append({**d, "a": names[d["a"]], "b": names[d["b"]]})
    return out


def pair_set(df, names: dict[int, str], kind: str | None = None) -> set[frozenset]:
    return {frozenset((p["a"], p["b"])) for p in named(df, names) if kind is None or p["kind"] == kind}


def by_pair(df, names: dict[int, str]) -> dict[frozenset, dict]:
    return {frozenset((p["a"], p["b"])): p for p in named(df, names)}


def random_hex(rng: np.random.Generator) -> str:
    return f"{int.from_bytes(rng.bytes(8), 'big'):016x}"


def flip_hex(h: str, bits: list[int]) -> str:
    return f"{int(h, 16) ^ sum(1 << b for b in bits):016x}"


# ---------------------------------------------------------------- banded search == brute force


def planted_hashes(rng: np.random.Generator, n_random: int = 3000) -> np.ndarray:
    """Random 64-bit hashes plus near copies at every distance 0..10: bits concentrated in one band, spread
    over the bands (8 = 3+3+2 in every order, 9 = 3+3+3), anywhere, across band seams and on the top bit."""
    bands = [list(range(start, start + width)) for start, width in BANDS]
    masks: list[list[int]] = []
    for d in range(11):
        for band in bands:
            masks.append(rng.choice(band, d, replace=False).tolist())  # all in one band
        per_band = [d // 3 + (k < d % 3) for k in range(3)]
        masks.append([b for k in range(3) for b in rng.choice(bands[k], per_band[k], replace=False).tolist()])
        masks.append(rng.choice(64, d, replace=False).tolist())  # anywhere
    for counts in ((3, 3, 2), (3, 2, 3), (2, 3, 3), (3, 3, 3), (2, 2, 2), (3, 2, 2), (3, 3, 1)):
        masks.append([b for k in range(3) for b in rng.choice(bands[k], counts[k], replace=False).tolist()])
    masks += [[63], [0, 63], [21, 22], [42, 43], [21, 22, 42, 43, 63], [0, 21, 22, 42, 43, 62, 63, 1]]

    out = list(np.frombuffer(rng.bytes(8 * n_random), dtype=np.uint64))
    top = np.uint64(1 << 63)
    for k, mask in enumerate(masks):
        base = np.frombuffer(rng.bytes(8), dtype=np.uint64)[0]
        base = base | top if k % 2 == 0 else base & ~top  # half the bases negative as signed longs
        out += [base, base ^ np.uint64(sum(1 << int(b) for b in mask))]
    star = np.frombuffer(rng.bytes(8), dtype=np.uint64)[0] | top  # a hub with neighbours at 1, 4 and 8 bits
    out += [star] + [star ^ np.uint64(sum(1 << int(b) for b in rng.choice(64, d, replace=False)))
                     for d in (1, 4, 8)]
    same = np.frombuffer(rng.bytes(8), dtype=np.uint64)[0]
    out += [same, same, same]  # three identical hashes: three pairs at distance 0
    h = np.array(out, dtype=np.uint64)
    return h[rng.permutation(len(h))]


def brute_force(ids: np.ndarray, h: np.ndarray, max_hamming: int) -> set[tuple[int, int, int]]:
    found = set()
    for i0 in range(0, len(h), 512):
        d = np.bitwise_count(h[i0:i0 + 512, None] ^ h[None, :])
        ii, jj = np.nonzero(d <= max_hamming)
        for i, j in zip(ii + i0, jj, strict=True):
            if i < j:
                a, b = sorted((int(ids[i]), int(ids[j])))
                found.add((a, b, int(d[i - i0, j])))
    return found


def test_hamming_candidates_equal_brute_force(spark):
    """The issue's must-show: the banded self-join finds exactly the brute-force pairs (and no others)."""
    from pyspark.sql import functions as F

    rng = np.random.default_rng(2024)
    h = planted_hashes(rng)
    ids = rng.integers(-(2**62), 2**62, len(h))  # signed ids, as xxhash64 gives: a < b is signed
    assert len(np.unique(ids)) == len(ids) and len(h) > 3000 and (h >= np.uint64(1 << 63)).sum() > 1000
    hashes = spark.createDataFrame(pd.DataFrame({"id": ids, "h": h.view(np.int64)}), "id long, h long")

    want_all = brute_force(ids, h, 10)
    dists = [d for *_, d in want_all]
    assert all(dists.count(d) >= 5 for d in range(11)), sorted(dists)  # every distance 0..10 is planted
    levels = (8, 5, 0)
    parts = [hamming_candidates(hashes, m) for m in levels]
    assert all(p.dtypes == [("a", "bigint"), ("b", "bigint"), ("hamming", "int")] for p in parts)
    tagged = parts[0].withColumn("m", F.lit(levels[0]))
    for m, p in zip(levels[1:], parts[1:], strict=True):
        tagged = tagged.unionByName(p.withColumn("m", F.lit(m)))
    rows = tagged.collect()  # one Spark job for the three searches
    for m in levels:
        got = [(r["a"], r["b"], r["hamming"]) for r in rows if r["m"] == m]
        want = {p for p in want_all if p[2] <= m}
        assert len(got) == len(set(got)), "duplicate candidate rows"
        assert set(got) == want, (m, sorted(set(got) ^ want)[:10])
    assert len({p for p in want_all if p[2] <= 8}) > 60

    with pytest.raises(ValueError, match=f"covers Hamming <= {MAX_HAMMING_COVERED}"):
        hamming_candidates(hashes, MAX_HAMMING_COVERED + 1)


def test_band_keys_are_the_band_value_and_its_single_bit_flips(spark):
    h = (1 << 63) | (1 << 43) | (1 << 22) | 0b1011  # bits in every band, the top one included
    signed = h - (1 << 64)
    keys = band_keys(local(spark, [(7, signed)], "id long, h long")).collect()
    assert len(keys) == sum(width + 1 for _, width in BANDS)
    for band, (start, width) in enumerate(BANDS):
        value = (h >> start) & ((1 << width) - 1)
        got = sorted(r["key"] for r in keys if r["band"] == band)
        assert got == sorted([value] + [value ^ (1 << b) for b in range(width)])
    assert {(r["id"], r["h"]) for r in keys} == {(7, signed)}


# ---------------------------------------------------------------- pHash parsing and correlation


def test_phash_long_round_trip_and_malformed_is_null(spark):
    from pyspark.sql import functions as F

    good = ["ffffffffffffffff", "8000000000000000", "0000000000000000", "7fffffffffffffff",
            "0000000000000001", "0123456789abcdef", "FEDCBA9876543210", "00000000ffffffff",
            "ffffffff00000000", "91758d6e434eacaa"]
    bad = [None, "", "zz", "abc", "0123456789abcde", "0123456789abcdef0", " 123456789abcdef",
           "-123456789abcdef", "+123456789abcdef", "0x23456789abcdef", "0123456789abcdeg",
           "not-a-hash-16chr"]
    df = local(spark, [(s,) for s in good + bad], "s string")
    out = df.select("s", phash_long(F.col("s")).alias("h"))
    assert dict(out.dtypes)["h"] == "bigint"
    got = {r["s"]: r["h"] for r in out.collect()}
    for s in good:
        assert got[s] is not None and got[s] & (2**64 - 1) == int(s, 16), s  # same 64 bits
        assert (got[s] < 0) == (int(s, 16) >= 2**63), s  # top bit -> negative long
    assert (got["ffffffffffffffff"] == -1 and got["8000000000000000"] == -(2**63)
            and got["0000000000000000"] == 0)
    assert {s: got[s] for s in bad} == dict.fromkeys(bad)


def test_phash_long_rejects_a_trailing_newline(spark):
    """Java's `$` also matches before a final line terminator, so "<16 hex>\\n" must still come out null."""
    from pyspark.sql import functions as F

    df = local(spark, [("0123456789abcdef\n",), ("0123456789abcdef\r\n",)], "s string")
    assert [r["h"] for r in df.select(phash_long(F.col("s")).alias("h")).collect()] == [None, None]


def test_thumb_correlation_matches_numpy_pearson():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, size=(40, THUMB * THUMB), dtype=np.uint8)
    b = rng.integers(0, 256, size=(40, THUMB * THUMB), dtype=np.uint8)
    b[:20] = np.clip(a[:20].astype(int) + rng.integers(-30, 30, size=(20, THUMB * THUMB)),
                     0, 255)  # correlated
    want = [np.corrcoef(x.astype(float), y.astype(float))[0, 1] for x, y in zip(a, b, strict=True)]
    np.testing.assert_allclose(thumb_correlation(a, b), want, atol=1e-12)

    x = a[:4].copy()
    y = np.stack([x[0], x[1] // 2 + 40, 255 - x[2], np.full(THUMB * THUMB, 77)]).astype(np.uint8)
    got = thumb_correlation(x, y)
    assert got[0] == pytest.approx(1.0) and got[1] == pytest.approx(1.0, abs=1e-4)
    assert got[2] == pytest.approx(-1.0) and np.isnan(got[3])  # flat row: undefined, not 0 and not 1
    flat = np.full((2, 16), 9, dtype=np.uint8)
    assert np.isnan(thumb_correlation(flat, flat)).all()  # identical but flat: still undefined


# ---------------------------------------------------------------- find_duplicates end to end


def synthetic_rows() -> SimpleNamespace:
    """One small table, several stories (pHashes of different stories are far apart):
    x/ three files with the same decoded pixels; y/ byte-identical files; n/ a near copy (thumbnail + noise,
    pHash 3 bits away); r/ pHash-close (5 bits) but unrelated pixels; m/ a malformed and a missing pHash;
    a/ real decode of shifted, brightened and re-compressed variants; c/ a chain a~b~c with a, c 10 bits
    apart."""
    rng = np.random.default_rng(5)
    smooth = blobs(11)[::2, ::2].astype(int)
    copy = np.clip(smooth + rng.integers(-6, 7, smooth.shape), 0, 255)
    noise_a, noise_b = rng.integers(0, 256, (2, THUMB, THUMB))
    h_exact, h_bytes, h_near, h_rej, h_good, h_far = (random_hex(rng) for _ in range(6))
    base, chain = blobs(1), blobs(5)
    rows = [
        crafted("x/one.png", h_exact, smooth, pixel="p" * 64),  # re-encoded: same pixels, other bytes
        crafted("x/two.jpg", h_exact, smooth, pixel="p" * 64),
        crafted("x/three.bmp", flip_hex(h_exact, [3]), smooth, pixel="p" * 64),
        crafted("y/a.png", h_bytes, smooth, pixel="q" * 64, sha="s" * 64),
        crafted("y/b.png", h_bytes, smooth, pixel="q" * 64, sha="s" * 64),
        crafted("n/orig.png", h_near, smooth),
        crafted("n/copy.png", flip_hex(h_near, [0, 30, 60]), copy),
        crafted("r/a.png", h_rej, noise_a),
        crafted("r/b.png", flip_hex(h_rej, [5, 6, 7, 40, 63]), noise_b),
        crafted("m/good.png", h_good, smooth, sha="m" * 64),
        crafted("m/bad_hash.png", "not-a-hash", smooth, sha="m" * 64),  # same file bytes as m/good.png
        crafted("m/no_hash.png", None, None),
        crafted("z/far.png", h_far, noise_b),
        decoded("a/base.png", png(base)),
        decoded("a/shift.png", png(shifted(base, 2, 1))),
        decoded("a/bright.png", png(brighter(base, 0.8, 30))),
        decoded("a/jpeg.jpg", jpeg(base, 60)),
        decoded("b/other.png", png(blobs(2))),
        *(decoded(f"c/{k}.png", png(shifted(chain, dx, 0))) for k, dx in (("a", 0), ("b", 3), ("c", 6))),
    ]
    # undefined correlations, only in the loose run: flat thumbnails, a missing one, one of the wrong size
    h_flat, h_thumb = random_hex(rng), random_hex(rng)
    undefined = [
        crafted("f/flat1.png", h_flat, np.full((THUMB, THUMB), 128)),
        # same pHash and thumbnail, other pixels
        crafted("f/flat2.png", h_flat, np.full((THUMB, THUMB), 128)),
        crafted("t/whole.png", h_thumb, smooth),
        crafted("t/no_thumb.png", flip_hex(h_thumb, [1]), None),
        crafted("t/small_thumb.png", flip_hex(h_thumb, [2]), smooth[:64, :64]),
    ]
    return SimpleNamespace(rows=rows, undefined=undefined, smooth=smooth, copy=copy, noise_a=noise_a,
                           noise_b=noise_b)


@pytest.fixture(scope="module")
def table() -> SimpleNamespace:
    return synthetic_rows()


@pytest.fixture(scope="module")
def found(spark, table):
    """find_duplicates with the default thresholds -> (Duplicates, {id: rel_path})."""
    rep, names = run(spark, table.rows)
    yield rep, names
    rep.pairs.unpersist()


@pytest.fixture(scope="module")
def loose(spark, table):
    """Every defined correlation passes (min_correlation -1): only undefined ones can still be rejected."""
    rep, names = run(spark, table.rows + table.undefined, min_correlation=-1.0)
    yield rep, names
    rep.pairs.unpersist()


def test_exact_duplicates_are_a_star_per_hash_with_no_invented_distance(found):
    rep, names = found
    pairs = by_pair(rep.pairs, names)
    exact = {k for k, p in pairs.items() if p["kind"] == "exact"}
    x_ids = sorted(i for i, n in names.items() if n.startswith("x/"))
    assert {k for k in exact if any(p.startswith("x/") for p in k)} == {
        frozenset({names[x_ids[0]], names[i]}) for i in x_ids[1:]}  # 2 edges from the smallest id, not 3
    assert {k for k in exact if not any(p.startswith("x/") for p in k)} == {
        frozenset({"y/a.png", "y/b.png"}),  # linked by pixels and by bytes: reported once
        frozenset({"m/good.png", "m/bad_hash.png"}),  # malformed pHash: still matched by sha256
    }
    for k in exact:
        # distance unknown, not invented
        assert pairs[k]["hamming"] is None and pairs[k]["correlation"] == 1.0


def test_near_copy_confirmed_and_phash_lookalike_rejected_with_its_correlation(found, table):
    rep, names = found
    near = by_pair(rep.pairs, names)[frozenset({"n/orig.png", "n/copy.png"})]
    assert near["kind"] == "near" and near["hamming"] == 3
    want = np.corrcoef(table.smooth.ravel(), table.copy.ravel())[0, 1]
    assert near["correlation"] == pytest.approx(want, abs=1e-12) and want >= 0.95
    rej = by_pair(rep.rejected, names)[frozenset({"r/a.png", "r/b.png"})]
    assert rej["hamming"] == 5
    assert rej["correlation"] == pytest.approx(
        np.corrcoef(table.noise_a.ravel(), table.noise_b.ravel())[0, 1], abs=1e-12)
    assert not any(n.startswith(("r/", "m/", "z/")) for p in pair_set(rep.pairs, names, "near") for n in p)


def test_counts_are_consistent(found):
    rep, names = found
    c = rep.counts
    assert set(c) == {"n_images", "n_unchecked", "n_exact_pairs", "n_near_pairs", "n_candidates",
                      "n_rejected_candidates"}
    assert c["n_images"] == len(names) == 21 and c["n_unchecked"] == 2  # not-a-hash and null
    assert c["n_exact_pairs"] == 4  # x: 2, y: 1, m: 1
    assert c["n_candidates"] == c["n_near_pairs"] + c["n_rejected_candidates"]
    kinds = [p["kind"] for p in named(rep.pairs, names)]
    assert kinds.count("exact") == c["n_exact_pairs"] and kinds.count("near") == c["n_near_pairs"]
    assert rep.rejected.count() == c["n_rejected_candidates"] >= 1
    assert rep.edges.columns == ["a", "b", "kind"] and rep.edges.count() == len(kinds)
    assert rep.params == {"max_hamming": 8, "min_correlation": 0.95, "thumb_size": THUMB}
    candidates = pair_set(rep.rejected, names) | pair_set(rep.pairs, names, "near")
    assert not any(n.startswith(("x/", "y/")) for p in candidates for n in p)  # same pixels: no candidate


def test_synthetic_variants_confirmed_and_a_different_pattern_not(found):
    rep, names = found
    near = pair_set(rep.pairs, names, "near")
    for variant in ("a/shift.png", "a/bright.png", "a/jpeg.jpg"):
        assert frozenset({"a/base.png", variant}) in near, variant
    assert not any("b/other.png" in p for p in near | pair_set(rep.rejected, names))
    # re-scaled != exact
    assert not any(n.startswith("a/") for p in pair_set(rep.pairs, names, "exact") for n in p)
    assert all(p["correlation"] >= 0.95 and p["hamming"] <= 8
               for p in named(rep.pairs, names) if p["kind"] == "near")


def test_transitive_near_chain_forms_one_component(spark, found):
    """c/a~c/b and c/b~c/c are duplicates, c/a and c/c are not even pHash candidates (10 bits apart):
    only the connected components put all three together."""
    rep, names = found
    chain = {k for k in pair_set(rep.pairs, names) | pair_set(rep.rejected, names)
             if all(p[:2] == "c/" for p in k)}
    assert chain == {frozenset({"c/a.png", "c/b.png"}), frozenset({"c/b.png", "c/c.png"})}
    assert chain <= pair_set(rep.pairs, names, "near")
    roots = {names[r["id"]]: r["root"] for r in component_frame(spark, rep.edges).collect()}
    c_ids = [i for i, n in names.items() if n.startswith("c/")]
    assert {roots[names[i]] for i in c_ids} == {min(c_ids)}


def test_looser_correlation_threshold_accepts_the_lookalike(loose):
    rep, names = loose
    near = pair_set(rep.pairs, names, "near")
    assert frozenset({"r/a.png", "r/b.png"}) in near  # the pixel check is what rejected it
    assert frozenset({"n/orig.png", "n/copy.png"}) in near


def test_flat_or_missing_thumbnails_never_confirm_a_pair(loose):
    """A flat thumbnail has no defined correlation (NaN in numpy; Spark orders NaN above every number, and a
    NaN coming back from pandas arrives as null): even at min_correlation -1 such a pair is never confirmed,
    and it is reported as rejected, so the rejected table adds up to the rejected count."""
    rep, names = loose
    undefined = {frozenset({"f/flat1.png", "f/flat2.png"}), frozenset({"t/whole.png", "t/no_thumb.png"}),
                 frozenset({"t/whole.png", "t/small_thumb.png"}),
                 frozenset({"t/no_thumb.png", "t/small_thumb.png"})}
    assert not undefined & pair_set(rep.pairs, names)
    rejected = by_pair(rep.rejected, names)
    assert set(rejected) == undefined  # every defined correlation passes at -1
    assert all(p["correlation"] is None or np.isnan(p["correlation"]) for p in rejected.values())
    assert rep.counts["n_rejected_candidates"] == len(undefined) == rep.rejected.count()


def test_empty_input_gives_empty_result(spark, table):
    from pyspark.sql import functions as F

    images, thumbs = (df.where(F.lit(False)) for df in frames(spark, table.rows[:1]))
    rep = find_duplicates(images, thumbs)
    assert rep.pairs.count() == 0 and rep.rejected.count() == 0
    assert rep.counts == dict.fromkeys(("n_images", "n_unchecked", "n_exact_pairs", "n_near_pairs",
                                        "n_candidates", "n_rejected_candidates"), 0)


# ---------------------------------------------------------------- real chest X-rays


def test_real_xrays_variants_confirmed_lookalikes_rejected_exact_copy_found(spark, ozturk_dir: Path):
    gray, _ = decode_gray((ozturk_dir / "no_findings/00001568_001.png").read_bytes())
    rows = [decoded("r/orig.png", png(gray)), decoded("r/shift1.png", png(shifted(gray, 1, 1))),
            decoded("r/shift2.png", png(shifted(gray, -2, 2))),
            decoded("r/bright.png", png(brighter(gray, 0.85, 25))),
            decoded("r/jpeg.jpg", jpeg(gray, 70)),
            decoded("r/unrelated.png", (ozturk_dir / "pneumonia/00009507_001.png").read_bytes()),
            *(decoded(rel, (ozturk_dir / rel).read_bytes()) for rel in REAL_PHASH_LOOKALIKE + REAL_EXACT)]
    rep, names = run(spark, rows)
    near = pair_set(rep.pairs, names, "near")
    for v in ("r/shift1.png", "r/shift2.png", "r/bright.png", "r/jpeg.jpg"):
        assert frozenset({"r/orig.png", v}) in near, v
    assert not any("r/unrelated.png" in p for p in pair_set(rep.pairs, names))
    assert pair_set(rep.pairs, names, "exact") == {frozenset(REAL_EXACT)}  # byte-identical files
    # two patients' films pHash calls close, rejected by their pixels: a looser threshold would accept them
    rej = by_pair(rep.rejected, names)[frozenset(REAL_PHASH_LOOKALIKE)]
    assert rej["hamming"] == 4 and 0.5 < rej["correlation"] < 0.95
    assert not any(n in REAL_PHASH_LOOKALIKE for p in pair_set(rep.pairs, names) for n in p)
