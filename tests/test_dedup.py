"""De-duplication: exact and near duplicates on synthetic and real chest X-rays, reports, and a real-data run."""

from __future__ import annotations

import hashlib
import io
import time
from pathlib import Path

import imagehash
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import ndimage

from xray_spark.data import dedup
from xray_spark.data.dedup import find_duplicates, hamming_candidates, pair_correlations, phash_to_uint64
from xray_spark.data.split import assign_groups, check_no_leak, grouped_split

THUMB = 128
# Two different NIH patients' films that pHash calls close (Hamming 4) but whose pixels disagree
# (thumbnail correlation ~0.88): found by scanning all 1124 ozturk images.
REAL_PHASH_LOOKALIKE = ("no_findings/00001543_005.png", "no_findings/00002572_004.png")
REAL_EXACT = ("no_findings/00002658_001.png", "no_findings/00002658_002.png")  # byte-identical files
REAL_NEAR_COVID = ("covid/E63574A7-4188-4C8D-8D17-9D67A18A1AFA.jpeg", "covid/F4341CE7-73C9-45C6-99C8-8567A5484B63.jpeg")


def features(img: Image.Image) -> dict:
    """What ingest computes per image: grayscale, min-max stretch, pixel hash, pHash, 128x128 thumbnail."""
    a = np.asarray(img.convert("L"), dtype=np.float32)
    lo, hi = float(a.min()), float(a.max())
    a = np.round((a - lo) / max(hi - lo, 1.0) * 255).astype(np.uint8)
    g = Image.fromarray(a)
    thumb = np.asarray(g.resize((THUMB, THUMB), Image.BILINEAR), dtype=np.uint8)
    return {
        "pixel_sha256": hashlib.sha256(f"{a.shape}".encode() + a.tobytes()).hexdigest(),
        "phash": str(imagehash.phash(g)),
        "thumb": thumb.tobytes(),
    }


def row(path: str, img: Image.Image, label: str = "no_findings", patient: str | None = None, data: bytes = b"") -> dict:
    return {"path": path, "sha256": hashlib.sha256(data or path.encode()).hexdigest(), "label": label,
            "patient_id": patient, **features(img)}


def jpeg(img: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    img.convert("L").save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    return Image.open(buf).copy()


def shifted(img: Image.Image, dx: int, dy: int) -> Image.Image:
    a = np.asarray(img.convert("L"))
    return Image.fromarray(np.roll(np.roll(a, dy, axis=0), dx, axis=1))


def brighter(img: Image.Image, gain: float, offset: float) -> Image.Image:
    a = np.asarray(img.convert("L"), dtype=np.float32) * gain + offset
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def blobs(seed: int, size: int = 256) -> Image.Image:
    """A smooth random 'anatomy' (low-frequency field): structure pHash and correlation can both see."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.normal(size=(size, size)), sigma=12)
    field = (field - field.min()) / (field.max() - field.min()) * 255
    return Image.fromarray(field.astype(np.uint8))


def pair_set(pairs: pd.DataFrame, kind: str | None = None) -> set[frozenset]:
    sel = pairs if kind is None else pairs[pairs["kind"] == kind]
    return {frozenset(p) for p in zip(sel["path_a"], sel["path_b"], strict=True)}


# ---------------------------------------------------------------- synthetic


def test_synthetic_variants_confirmed_and_different_patterns_not():
    base, other = blobs(1), blobs(2)
    df = pd.DataFrame([
        row("a/base.png", base),
        row("a/shift.png", shifted(base, 2, 1)),
        row("a/bright.png", brighter(base, 0.8, 30)),
        row("a/jpeg.jpg", jpeg(base, 60)),
        row("b/other.png", other),
    ])
    rep = find_duplicates(df)
    near = pair_set(rep.pairs, "near")
    for variant in ("a/shift.png", "a/bright.png", "a/jpeg.jpg"):
        assert frozenset({"a/base.png", variant}) in near, variant
    assert not any("b/other.png" in p for p in near)
    groups = rep.groups
    assert set(groups["path"]) == {"a/base.png", "a/shift.png", "a/bright.png", "a/jpeg.jpg"}
    assert groups["dup_group"].nunique() == 1 and (groups["group_size"] == 4).all()
    assert (rep.pairs["correlation"] >= 0.95).all() and (rep.pairs["hamming"] <= 8).all()


def test_exact_duplicates_label_conflict_and_report_files(tmp_path: Path):
    base = blobs(3)
    df = pd.DataFrame([
        row("x/one.png", base, label="covid", data=b"same-bytes"),
        row("x/two.png", base, label="no_findings", data=b"same-bytes"),
        row("x/three.png", base, label="no_findings", data=b"other-bytes"),  # same pixels, re-encoded file
        row("y/solo.png", blobs(4), label="pneumonia"),
    ])
    rep = find_duplicates(df)
    assert len(rep.pairs) == 2 and set(rep.pairs["kind"]) == {"exact"}  # a star, not all 3 pairs
    assert (rep.pairs["correlation"] == 1.0).all()
    assert rep.n_candidates == 0  # identical pixels are not counted again as pHash candidates
    g = rep.groups
    assert set(g["path"]) == {"x/one.png", "x/two.png", "x/three.png"}
    assert g["label_conflict"].all() and set(g["labels"]) == {"covid;no_findings"}
    assert set(g["dup_kind"]) == {"exact"}
    s = rep.summary()
    assert s["n_exact_pairs"] == 2 and s["n_groups"] == 1 and s["n_conflicting_groups"] == 1
    assert s["n_near_pairs"] == 0 and s["n_rejected_candidates"] == 0

    files = rep.write(tmp_path / "dups")
    assert [f.name for f in files] == ["duplicates_pairs.csv", "duplicate_groups.csv", "duplicates.md"]
    pairs_back = pd.read_csv(files[0])
    assert list(pairs_back.columns) == ["path_a", "path_b", "kind", "hamming", "correlation"]
    assert pair_set(pairs_back) == pair_set(rep.pairs)
    groups_back = pd.read_csv(files[1])
    assert groups_back["label_conflict"].tolist() == [True, True, True]
    md = files[2].read_text()
    conflict_at, all_at = md.index("Groups whose labels disagree (1)"), md.index("## All groups (1)")
    assert conflict_at < md.index("x/one.png") < all_at  # conflicts are listed first
    assert "covid;no_findings" in md


def test_transitive_near_chain_forms_one_group():
    base = blobs(5)
    a, b, c = base, shifted(base, 3, 0), shifted(base, 6, 0)
    df = pd.DataFrame([row("c/a.png", a), row("c/b.png", b), row("c/c.png", c)])
    rep = find_duplicates(df)
    assert pair_set(rep.pairs) == {frozenset({"c/a.png", "c/b.png"}), frozenset({"c/b.png", "c/c.png"})}
    assert rep.groups["dup_group"].nunique() == 1 and len(rep.groups) == 3  # a~c only through b
    assert set(rep.groups["dup_kind"]) == {"near"}


def test_bad_rows_do_not_crash_and_only_get_exact_matching():
    base = blobs(6)
    good = row("d/good.png", base)
    broken_hash = {**row("d/broken_hash.png", base), "phash": "not-a-hash"}
    no_thumb = {**row("d/no_thumb.png", shifted(base, 1, 0)), "thumb": None}
    flat = row("d/flat.png", Image.new("L", (64, 64), 128))
    flat2 = row("d/flat2.png", Image.new("L", (80, 80), 128))  # same pHash, undefined correlation
    rep = find_duplicates(pd.DataFrame([good, broken_hash, no_thumb, flat, flat2]))
    assert rep.n_unchecked == 2
    assert pair_set(rep.pairs, "exact") == {frozenset({"d/good.png", "d/broken_hash.png"})}
    exact = rep.pairs[rep.pairs["kind"] == "exact"].iloc[0]
    assert exact["hamming"] == -1  # one side has no usable hash: distance unknown, not invented
    assert frozenset({"d/flat.png", "d/flat2.png"}) in pair_set(rep.rejected)  # NaN correlation never confirms
    assert "d/no_thumb.png" not in set(rep.pairs["path_a"]) | set(rep.pairs["path_b"])


def test_missing_columns_and_duplicate_paths_are_clear_errors():
    with pytest.raises(ValueError, match="missing column"):
        find_duplicates(pd.DataFrame({"path": ["a"], "label": ["covid"]}))
    r = row("same.png", blobs(7))
    with pytest.raises(ValueError, match="duplicated path"):
        find_duplicates(pd.DataFrame([r, r]))


def test_empty_input_gives_empty_report(tmp_path: Path):
    empty = pd.DataFrame(columns=["path", "sha256", "label", "patient_id", "pixel_sha256", "phash", "thumb"])
    rep = find_duplicates(empty)
    assert rep.summary()["n_groups"] == 0 and len(rep.pairs) == 0
    assert "No duplicate groups" in rep.write(tmp_path)[2].read_text()


def test_blockwise_hamming_matches_brute_force(monkeypatch: pytest.MonkeyPatch):
    rng = np.random.default_rng(0)
    h = rng.integers(0, 2**63, 300, dtype=np.uint64)
    for k in range(0, 300, 7):  # plant near copies: flip a few bits
        bits = rng.choice(64, size=rng.integers(0, 11), replace=False)
        h[k + 1 if k + 1 < 300 else 0] = h[k] ^ np.uint64(sum(1 << int(b) for b in bits))
    monkeypatch.setattr(dedup, "_XOR_BLOCK_ELEMENTS", 300 * 13)  # blocks of 13 rows: exercises the seams
    i, j, d = hamming_candidates(h, 8)
    bits = np.array([[bin(int(a) ^ int(b)).count("1") for b in h] for a in h])
    bi, bj = np.nonzero(np.triu(bits <= 8, 1))
    assert sorted(zip(i.tolist(), j.tolist(), strict=True)) == sorted(zip(bi.tolist(), bj.tolist(), strict=True))
    assert (d == bits[i, j]).all() and (i < j).all()
    assert len(i) > 20


def test_pair_correlations_match_numpy_pearson():
    rng = np.random.default_rng(1)
    u = rng.integers(0, 256, size=(40, THUMB * THUMB), dtype=np.uint8)
    u[5] = 77  # flat: undefined correlation
    u[6] = np.clip(u[7].astype(int) // 2 + 40, 0, 255)  # affine copy of row 7: correlation 1
    thumbs = pd.Series([r.tobytes() for r in u])
    i, j = rng.integers(0, 40, 500), rng.integers(0, 40, 500)
    i[:3], j[:3] = [5, 6, 0], [1, 7, 0]
    got = pair_correlations(thumbs, i, j)
    assert np.isnan(got[0]) and got[1] == pytest.approx(1.0, abs=1e-4) and got[2] == pytest.approx(1.0)
    ok = (i != 5) & (j != 5)
    want = [np.corrcoef(u[a].astype(float), u[b].astype(float))[0, 1] for a, b in zip(i[ok], j[ok], strict=True)]
    np.testing.assert_allclose(got[ok], want, atol=1e-12)


def test_phash_parsing_marks_invalid():
    vals, ok = phash_to_uint64(pd.Series(["ffffffffffffffff", "0000000000000001", None, "zz", "abc"]))
    assert ok.tolist() == [True, True, False, False, False]
    assert vals[0] == np.uint64(2**64 - 1) and vals[1] == np.uint64(1)


# ---------------------------------------------------------------- real chest X-rays


def _open(ozturk_dir: Path, rel: str) -> Image.Image:
    with Image.open(ozturk_dir / rel) as im:
        im.load()
        return im.copy()


def test_real_xray_variants_confirmed(ozturk_dir: Path):
    xray = _open(ozturk_dir, "no_findings/00001568_001.png")
    unrelated = _open(ozturk_dir, "pneumonia/00009507_001.png")
    df = pd.DataFrame([
        row("r/orig.png", xray, patient="nih-00001568"),
        row("r/shift1.png", shifted(xray, 1, 1)),
        row("r/shift2.png", shifted(xray, -2, 2)),
        row("r/bright.png", brighter(xray, 0.85, 25)),
        row("r/jpeg.jpg", jpeg(xray, 70)),
        row("r/unrelated.png", unrelated, label="pneumonia"),
    ])
    rep = find_duplicates(df)
    near = pair_set(rep.pairs, "near")
    for v in ("r/shift1.png", "r/shift2.png", "r/bright.png", "r/jpeg.jpg"):
        assert frozenset({"r/orig.png", v}) in near, v
    assert "r/unrelated.png" not in set(rep.groups["path"])


def test_real_phash_lookalikes_are_rejected_by_pixels(ozturk_dir: Path):
    a, b = (_open(ozturk_dir, p) for p in REAL_PHASH_LOOKALIKE)
    df = pd.DataFrame([row(REAL_PHASH_LOOKALIKE[0], a, patient="nih-00001543"),
                       row(REAL_PHASH_LOOKALIKE[1], b, patient="nih-00002572")])
    rep = find_duplicates(df)
    assert rep.n_candidates == 1 and len(rep.pairs) == 0 and rep.summary()["n_rejected_candidates"] == 1
    rej = rep.rejected.iloc[0]
    assert rej["hamming"] <= 8 and rej["correlation"] < 0.95
    # ...and a looser correlation threshold would have accepted them: the pixel check is what rejects
    assert len(find_duplicates(df, min_correlation=0.5).pairs) == 1


@pytest.fixture(scope="module")
def ozturk_features(ozturk_dir: Path) -> pd.DataFrame:
    manifest = pd.read_csv(ozturk_dir / "manifest.csv", dtype=str, keep_default_na=False)
    rows = []
    for rec in manifest.itertuples():
        data = (ozturk_dir / rec.path).read_bytes()
        with Image.open(io.BytesIO(data)) as im:
            rows.append({"path": rec.path, "sha256": hashlib.sha256(data).hexdigest(), "label": rec.label,
                         "patient_id": rec.patient_id or None, **features(im)})
    return pd.DataFrame(rows)


def test_real_data_run(ozturk_features: pd.DataFrame, tmp_path: Path):
    """All 1124 ozturk images: prints the numbers the project quotes (run with -s to see them)."""
    df = ozturk_features
    assert len(df) == 1124
    t0 = time.perf_counter()
    rep = find_duplicates(df)
    seconds = time.perf_counter() - t0
    s = rep.summary()
    exact, near = pair_set(rep.pairs, "exact"), pair_set(rep.pairs, "near")
    assert frozenset(REAL_EXACT) in exact
    assert frozenset(REAL_NEAR_COVID) in near  # COVID images have no patient id: only dedup links them
    assert frozenset(REAL_PHASH_LOOKALIKE) in pair_set(rep.rejected)
    # the data README's warning, measured: pHash proposes far more pairs than the pixels confirm
    assert s["n_candidates"] >= 10 * max(s["n_near_pairs"], 1)
    assert 1 <= s["n_near_pairs"] <= 20 and s["n_groups"] >= 2

    groups = assign_groups(df, rep.pairs)
    split = grouped_split(df, groups)
    check_no_leak(split)
    for a, b in rep.pairs[["path_a", "path_b"]].itertuples(index=False):
        sides = split.set_index("path").loc[[a, b], "split"]
        assert sides.nunique() == 1, (a, b)
    rep.write(tmp_path)
    print(f"\nozturk dedup ({seconds:.2f}s): {s}")
    print(f"ozturk split: {groups.nunique()} groups, {int((split['split'] == 'test').sum())} test / "
          f"{int((split['split'] == 'train').sum())} train images")
    print(rep.pairs.to_string())
