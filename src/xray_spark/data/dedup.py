"""Find exact and near-duplicate images so the split can keep them on one side.

Why two stages for near-duplicates: on chest X-rays a 64-bit perceptual hash at Hamming <= 8 flags far
more pairs than are real duplicates (every frontal chest film has the same coarse layout), so pHash only
proposes *candidates*; a pixel check (Pearson correlation of the 128x128 thumbnails) confirms them.
Pure numpy/scipy/pandas: ingest collects one small row per image to the driver and calls this.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

log = logging.getLogger(__name__)

PAIR_COLUMNS = ["path_a", "path_b", "kind", "hamming", "correlation"]
GROUP_COLUMNS = ["path", "dup_group", "dup_kind", "group_size", "labels", "label_conflict"]
_XOR_BLOCK_ELEMENTS = 8_000_000  # ~64 MB of uint64 per block: bounded memory at ~100k images
_CORR_CHUNK = 256  # rows/pairs per chunk: small uint8 blocks stay in cache
_MD_MAX_GROUPS = 200


@dataclass
class DuplicateReport:
    """Confirmed duplicate pairs, the groups they form, and the counts needed to judge the thresholds.

    pairs: path_a < path_b, kind "exact" (identical pixels; a star per hash group) or "near".
    groups: one row per image in a group of >= 2; dup_kind is "exact", "near" or "exact+near".
    rejected: pHash candidates the thumbnail correlation turned down (kept to audit the threshold).
    """

    pairs: pd.DataFrame
    groups: pd.DataFrame
    rejected: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=PAIR_COLUMNS))
    n_candidates: int = 0
    n_images: int = 0
    n_unchecked: int = 0  # rows without a usable pHash/thumbnail: only exact matching applied to them
    params: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, int]:
        kinds = self.pairs["kind"] if len(self.pairs) else pd.Series(dtype=str)
        groups = self.groups.drop_duplicates("dup_group") if len(self.groups) else self.groups
        return {
            "n_images": int(self.n_images),
            "n_unchecked": int(self.n_unchecked),
            "n_exact_pairs": int((kinds == "exact").sum()),
            "n_near_pairs": int((kinds == "near").sum()),
            "n_candidates": int(self.n_candidates),
            "n_rejected_candidates": int(len(self.rejected)),
            "n_groups": int(len(groups)),
            "n_conflicting_groups": int(groups["label_conflict"].sum()) if len(groups) else 0,
        }

    def write(self, out_dir: Path) -> list[Path]:
        """duplicates_pairs.csv, duplicate_groups.csv and a human-readable duplicates.md."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        pairs_csv, groups_csv, md = out / "duplicates_pairs.csv", out / "duplicate_groups.csv", out / "duplicates.md"
        self.pairs.to_csv(pairs_csv, index=False)
        self.groups.to_csv(groups_csv, index=False)
        md.write_text(self._markdown(), encoding="utf-8")
        return [pairs_csv, groups_csv, md]

    def _markdown(self) -> str:
        s = self.summary()
        lines = ["# Duplicate images", ""]
        if self.params:
            lines += [
                f"Near-duplicate candidates: pHash Hamming <= {self.params.get('max_hamming')}; confirmed when the "
                f"Pearson correlation of {self.params.get('thumb_size')}x{self.params.get('thumb_size')} "
                f"thumbnails >= {self.params.get('min_correlation')}. Exact: identical decoded pixels.",
                "",
            ]
        lines += ["| count | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in s.items()] + [""]
        if not len(self.groups):
            return "\n".join(lines + ["No duplicate groups.", ""])
        ordered = self.groups.sort_values(["label_conflict", "group_size", "dup_group", "path"],
                                          ascending=[False, False, True, True])
        conflicting = ordered[ordered["label_conflict"]]
        lines += [f"## Groups whose labels disagree ({conflicting['dup_group'].nunique()})", ""]
        lines += _md_groups(conflicting) if len(conflicting) else ["None.", ""]
        lines += [f"## All groups ({s['n_groups']})", ""] + _md_groups(ordered)
        if len(self.rejected):
            near_miss = self.rejected.sort_values("correlation", ascending=False).head(20)
            lines += ["## Closest rejected candidates (pHash close, pixels not)", "",
                      "| hamming | correlation | path_a | path_b |", "|---|---|---|---|"]
            lines += [f"| {r.hamming} | {r.correlation:.4f} | {r.path_a} | {r.path_b} |"
                      for r in near_miss.itertuples()] + [""]
        return "\n".join(lines)


def _md_groups(groups: pd.DataFrame) -> list[str]:
    lines: list[str] = []
    for k, (gid, g) in enumerate(groups.groupby("dup_group", sort=False)):
        if k == _MD_MAX_GROUPS:
            lines += [f"... {groups['dup_group'].nunique() - k} more groups in duplicate_groups.csv", ""]
            break
        first = g.iloc[0]
        lines.append(f"- **{gid}** ({first['dup_kind']}, {first['group_size']} images, labels: {first['labels']})")
        lines += [f"  - {p}" for p in g["path"]]
    return lines + [""]


def phash_to_uint64(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """16-hex-char pHashes -> (uint64 array, valid mask); malformed or missing hashes are marked invalid."""
    out = np.zeros(len(values), dtype=np.uint64)
    valid = np.zeros(len(values), dtype=bool)
    for i, v in enumerate(values):
        if isinstance(v, str) and len(v) == 16:
            try:
                out[i] = np.uint64(int(v, 16))
                valid[i] = True
            except ValueError:
                pass
    return out, valid


def _popcount(x: np.ndarray) -> np.ndarray:
    """Bits set per uint64 element (numpy >= 2 has a ufunc; older numpy uses a byte lookup table)."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x)
    table = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)
    return table[x.view(np.uint8)].reshape(*x.shape, 8).sum(axis=-1, dtype=np.uint8)


def hamming_candidates(hashes: np.ndarray, max_hamming: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs i < j with popcount(h_i XOR h_j) <= max_hamming, as (i, j, distance).

    Cost is O(n^2) comparisons (~5e9 for 100k images, tens of seconds in numpy), but memory is
    bounded: rows are processed in blocks so a block x n XOR matrix stays ~64 MB.
    """
    n = len(hashes)
    h = np.asarray(hashes, dtype=np.uint64)
    block = max(1, _XOR_BLOCK_ELEMENTS // max(n, 1))
    ii, jj, dd = [], [], []
    for start in range(0, n, block):
        stop = min(n, start + block)
        dist = _popcount(h[start:stop, None] ^ h[None, start:])  # columns from `start`: upper triangle only
        r, c = np.nonzero(dist <= max_hamming)
        c_abs = c + start
        keep = c_abs > r + start
        ii.append(r[keep] + start)
        jj.append(c_abs[keep])
        dd.append(dist[r[keep], c[keep]])
    if not ii:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.int64)
    return np.concatenate(ii).astype(np.int64), np.concatenate(jj).astype(np.int64), np.concatenate(dd).astype(np.int64)


def _thumb_rows(thumbs: pd.Series, rows: np.ndarray) -> np.ndarray:
    return np.stack([np.frombuffer(thumbs.iat[r], dtype=np.uint8).ravel() for r in rows])


def pair_correlations(thumbs: pd.Series, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Pearson correlation of the uint8 thumbnails of each pair (i[k], j[k]), exact and memory-bounded.

    Integer sums (sum, sum of squares per row; cross products per pair) avoid converting every
    thumbnail of every pair to float: ~20 us per pair, so ~2M candidates cost well under a minute.
    A flat thumbnail has no defined correlation: NaN, which never confirms a pair.
    """
    out = np.empty(len(i), dtype=np.float64)
    if not len(i):
        return out
    rows = np.unique(np.concatenate([i, j]))
    s1 = np.empty(len(rows), dtype=np.int64)
    s2 = np.empty(len(rows), dtype=np.int64)
    for s in range(0, len(rows), _CORR_CHUNK):
        u = _thumb_rows(thumbs, rows[s:s + _CORR_CHUNK])
        s1[s:s + _CORR_CHUNK] = u.sum(axis=1, dtype=np.int64)
        s2[s:s + _CORR_CHUNK] = np.einsum("ij,ij->i", u, u, dtype=np.int64)
    for s in range(0, len(i), _CORR_CHUNK):
        ua, ub = _thumb_rows(thumbs, i[s:s + _CORR_CHUNK]), _thumb_rows(thumbs, j[s:s + _CORR_CHUNK])
        n = ua.shape[1]
        ka, kb = np.searchsorted(rows, i[s:s + _CORR_CHUNK]), np.searchsorted(rows, j[s:s + _CORR_CHUNK])
        cov = n * np.einsum("ij,ij->i", ua, ub, dtype=np.int64) - s1[ka] * s1[kb]  # exact in int64
        var_a = (n * s2[ka] - s1[ka] ** 2).astype(np.float64)
        var_b = (n * s2[kb] - s1[kb] ** 2).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[s:s + _CORR_CHUNK] = cov / np.sqrt(var_a * var_b)
    return out


def _valid_thumbs(thumbs: pd.Series, thumb_size: int) -> np.ndarray:
    expected = thumb_size * thumb_size
    def ok(t: object) -> bool:
        if isinstance(t, np.ndarray):
            return t.dtype == np.uint8 and t.size == expected
        return isinstance(t, (bytes, bytearray, memoryview)) and len(t) == expected

    return np.array([ok(t) for t in thumbs], dtype=bool)


def _hash_codes(values: pd.Series) -> np.ndarray:
    """Integer code per distinct non-empty hash; -1 for missing/empty (never matches anything)."""
    codes, _ = pd.factorize(values.where(values.astype(str).str.len() > 0))
    return codes.astype(np.int64)


def _exact_pairs(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Identical decoded pixels (or identical files): a star per hash group, enough for connectivity
    and linear in the group size (k identical blank images give k-1 pairs, not k^2/2)."""
    ii, jj = [np.empty(0, np.int64)], [np.empty(0, np.int64)]
    for col in ("pixel_sha256", "sha256"):
        if col not in df.columns:
            continue
        codes = _hash_codes(df[col])
        pos = np.flatnonzero(codes >= 0)
        first = pd.Series(pos).groupby(codes[pos]).transform("first").to_numpy()
        dup = pos != first
        ii.append(first[dup])
        jj.append(pos[dup])
    pairs = np.column_stack([np.concatenate(ii), np.concatenate(jj)]).astype(np.int64)
    pairs = np.unique(np.sort(pairs, axis=1), axis=0) if len(pairs) else pairs
    return pairs[:, 0], pairs[:, 1]


def _group_id(paths: list[str]) -> str:
    """Stable id from the members, so adding unrelated images does not rename a group."""
    return "dup-" + hashlib.sha256("\n".join(sorted(paths)).encode()).hexdigest()[:12]


def _groups(df: pd.DataFrame, pairs: pd.DataFrame) -> pd.DataFrame:
    """Connected components over confirmed pairs; one row per image that belongs to a group of >= 2."""
    if not len(pairs):
        return pd.DataFrame(columns=GROUP_COLUMNS)
    pos = pd.Series(np.arange(len(df)), index=df["path"].to_numpy())
    a, b = pos[pairs["path_a"]].to_numpy(), pos[pairs["path_b"]].to_numpy()
    n = len(df)
    graph = coo_matrix((np.ones(len(a), dtype=np.int8), (a, b)), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    members = pd.DataFrame({"path": df["path"].to_numpy(), "label": df["label"].astype(str).to_numpy(), "comp": comp})
    sizes = members["comp"].map(members["comp"].value_counts())
    members = members[sizes.to_numpy() > 1].copy()
    edge_kind = pd.DataFrame({"comp": comp[a], "kind": pairs["kind"].to_numpy()}).groupby("comp")["kind"].agg(
        lambda k: "+".join(sorted(set(k)))
    )
    rows = []
    for c, g in members.groupby("comp"):
        labels = sorted(set(g["label"]))
        gid = _group_id(list(g["path"]))
        rows += [
            {"path": p, "dup_group": gid, "dup_kind": edge_kind[c], "group_size": len(g),
             "labels": ";".join(labels), "label_conflict": len(labels) > 1}
            for p in sorted(g["path"])
        ]
    return pd.DataFrame(rows, columns=GROUP_COLUMNS).sort_values(["dup_group", "path"]).reset_index(drop=True)


def find_duplicates(
    df: pd.DataFrame, *, max_hamming: int = 8, min_correlation: float = 0.95, thumb_size: int = 128
) -> DuplicateReport:
    """Exact duplicates (same decoded pixels) and near duplicates (pHash candidate + thumbnail correlation).

    `df` holds OK images only, one row per file: path, sha256, label, patient_id, pixel_sha256, phash, thumb.
    Near-duplicate search is O(n^2) in the number of images (blockwise, bounded memory); correlation is
    computed only for the candidates. Rows whose pHash or thumbnail is unusable still get exact matching.
    """
    missing = {"path", "label", "phash", "thumb"} - set(df.columns)
    if missing:
        raise ValueError(f"find_duplicates: missing column(s) {', '.join(sorted(missing))}")
    if df["path"].duplicated().any():
        raise ValueError(f"find_duplicates: duplicated path(s), e.g. {df['path'][df['path'].duplicated()].iloc[0]}")
    df = df.reset_index(drop=True)
    paths = df["path"].astype(str).to_numpy()
    hashes, valid = phash_to_uint64(df["phash"])
    valid &= _valid_thumbs(df["thumb"], thumb_size)
    n_unchecked = int((~valid).sum())
    if n_unchecked:
        log.warning("dedup: %d of %d images lack a usable pHash/thumbnail; exact matching only", n_unchecked, len(df))

    ei, ej = _exact_pairs(df)
    same_pixels = _hash_codes(df["pixel_sha256"]) if "pixel_sha256" in df.columns else np.full(len(df), -1)

    vpos = np.flatnonzero(valid)
    ci, cj, cd = hamming_candidates(hashes[vpos], max_hamming)
    ci, cj = vpos[ci], vpos[cj]
    not_exact = ~((same_pixels[ci] >= 0) & (same_pixels[ci] == same_pixels[cj]))
    ci, cj, cd = ci[not_exact], cj[not_exact], cd[not_exact]
    corr = pair_correlations(df["thumb"], ci, cj)
    ok = corr >= min_correlation  # NaN (flat thumbnail) compares False: rejected
    log.info("dedup: %d pHash candidates (<= %d bits), %d confirmed (r >= %.2f), %d rejected; %d exact pairs",
             len(ci), max_hamming, int(ok.sum()), min_correlation, int((~ok).sum()), len(ei))

    exact_ham = np.where(valid[ei] & valid[ej], _popcount(hashes[ei] ^ hashes[ej]).astype(np.int64), -1)
    pairs = _pair_frame(
        np.concatenate([paths[ei], paths[ci[ok]]]),
        np.concatenate([paths[ej], paths[cj[ok]]]),
        np.array(["exact"] * len(ei) + ["near"] * int(ok.sum()), dtype=object),
        np.concatenate([exact_ham, cd[ok]]),
        np.concatenate([np.ones(len(ei)), corr[ok]]),  # identical pixels: correlation 1 by definition
    )
    rejected = _pair_frame(paths[ci[~ok]], paths[cj[~ok]], np.full(int((~ok).sum()), "rejected", dtype=object),
                           cd[~ok], corr[~ok])
    return DuplicateReport(
        pairs=pairs,
        groups=_groups(df, pairs),
        rejected=rejected,
        n_candidates=len(ci),
        n_images=len(df),
        n_unchecked=n_unchecked,
        params={"max_hamming": max_hamming, "min_correlation": min_correlation, "thumb_size": thumb_size},
    )


def _pair_frame(a: np.ndarray, b: np.ndarray, kind: np.ndarray, hamming: np.ndarray, corr: np.ndarray) -> pd.DataFrame:
    """path_a < path_b and a stable row order, so reports diff cleanly between runs."""
    a, b = a.astype(str).astype(object), b.astype(str).astype(object)
    swap = a > b
    pairs = pd.DataFrame({
        "path_a": np.where(swap, b, a), "path_b": np.where(swap, a, b), "kind": kind,
        "hamming": np.asarray(hamming, dtype=np.int64), "correlation": np.asarray(corr, dtype=np.float64),
    }, columns=PAIR_COLUMNS)
    return pairs.sort_values(["kind", "path_a", "path_b"]).reset_index(drop=True)
