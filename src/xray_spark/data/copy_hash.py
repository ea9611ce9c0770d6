"""Pure functions behind cross-source copy detection: aspect-kept thumbnails and crop-tolerant hashes.

Why windows: a 64-bit pHash of the whole image changes completely when one source republishes another's
radiograph cropped (Ozturk cut 10-30% of a side off Cohen's originals, usually unevenly). A crop of A is,
up to resampling, one window of A; so every image also hashes a grid of windows of itself (each side
trimmed by 0, step, 2*step, ... with at most `max_trim` removed per axis) and a copy's whole-image hash
lands close to its original's hash of the nearest window. Uneven crops need the full 4-D grid, not
centred crops only (measured on cohen-sample: most crops keep one edge).

The pixel check that confirms a candidate is in copy_check.py (it needs OpenCV; decoding does not).
"""

from __future__ import annotations

import functools
import struct

import numpy as np
from PIL import Image

_HEADER = struct.Struct(">HH")  # height, width of a packed thumbnail
_HASH_SIDE = 32  # pHash: DCT of 32x32 box means, low 8x8 block, bit = coefficient > median
_RESAMPLE = Image.Resampling.BILINEAR


def aspect_thumbnail(gray: np.ndarray, side: int = 256) -> np.ndarray:
    """(H, W) uint8 -> the same image with its long side `side` px, aspect kept (a crop changes the aspect,
    so squeezing to a square would distort one image against the other)."""
    h, w = gray.shape
    scale = side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(np.ascontiguousarray(gray)).resize(size, _RESAMPLE))


def pack(thumb: np.ndarray) -> bytes:
    """A 2-D uint8 thumbnail as bytes that carry their own shape (the aspect varies per image)."""
    return _HEADER.pack(*thumb.shape) + np.ascontiguousarray(thumb, dtype=np.uint8).tobytes()


def unpack(data: bytes | None) -> np.ndarray | None:
    """pack()'s inverse; None for missing or malformed bytes (such a pair is never confirmed)."""
    if data is None or len(data) < _HEADER.size:
        return None
    h, w = _HEADER.unpack_from(data)
    body = np.frombuffer(data, np.uint8, offset=_HEADER.size)
    return body.reshape(h, w) if h and w and body.size == h * w else None


@functools.cache
def trims(step: float, max_trim: float) -> tuple[tuple[float, float], ...]:
    """(first, last) fractions cut off one axis on a `step` grid, <= `max_trim` in all; (0, 0) first."""
    n = int(round(max_trim / step))
    return tuple((i * step, j * step) for i in range(n + 1) for j in range(n + 1 - i))


@functools.cache
def _dct_rows() -> np.ndarray:
    k, x = np.arange(8)[:, None], np.arange(_HASH_SIDE)[None, :]
    return np.cos(np.pi * (2 * x + 1) * k / (2 * _HASH_SIDE)).astype(np.float32)  # (8, 32)


@functools.lru_cache(maxsize=64)  # the long side is always the thumbnail size: one entry serves every image
def _dct_of_windows(n: int, grid: tuple[tuple[float, float], ...]) -> np.ndarray:
    """(windows * 8, n): for each window of one axis, its 32 box means (cells of >= 1 px, integer edges)
    followed by the low 8 rows of the DCT, as one linear map of the axis' n pixels (read-only: cached)."""
    frac = np.linspace(0.0, 1.0, _HASH_SIDE + 1)
    lo = np.array([a for a, _ in grid])[:, None]
    hi = 1.0 - np.array([b for _, b in grid])[:, None]
    e = np.rint((lo + (hi - lo) * frac[None, :]) * n).astype(np.int64)
    e = np.maximum(e, e[:, :1] + np.arange(_HASH_SIDE + 1)).clip(0, n)  # (windows, 33)
    px = np.arange(n)
    inside = (px >= e[:, :-1, None]) & (px < e[:, 1:, None])  # (windows, 32, n)
    box = inside / np.maximum(inside.sum(-1, keepdims=True), 1)
    out = np.einsum("kc,wcn->wkn", _dct_rows(), box).reshape(len(grid) * 8, n).astype(np.float32)
    out.setflags(write=False)
    return out


def window_hashes(thumb: np.ndarray, step: float = 0.0375, max_trim: float = 0.3) -> np.ndarray:
    """pHash (64 bits, as int64 bit patterns) of every window of trims(step, max_trim) on both axes, row-major
    (top/bottom trims outer, left/right inner); index 0 is the whole image.

    Why separable: a window is a y-range times an x-range, and "32x32 box means, then the low 8x8 DCT" is
    linear in each axis, so all windows' coefficients are two matrix products (Ay @ image @ Ax.T, ~1 ms)
    instead of hundreds of resizes (~45 ms).
    """
    grid = trims(step, max_trim)
    ay, ax = _dct_of_windows(thumb.shape[0], grid), _dct_of_windows(thumb.shape[1], grid)
    low = (ay @ thumb.astype(np.float32)) @ ax.T  # (wy * 8, wx * 8)
    n = len(grid)
    low = low.reshape(n, 8, n, 8).transpose(0, 2, 1, 3).reshape(n * n, 64)
    bits = low > np.median(low, axis=1, keepdims=True)
    return np.packbits(bits, axis=1).view(">u8").ravel().astype(np.uint64).view(np.int64)
