"""Is B a crop/rescale/re-encoding of A? Keypoints + geometric check + correlation of the aligned overlap.

Why keypoints + alignment: the 128x128 square thumbnail correlation cannot see a crop (the squeeze
differs). ORB keypoints matched with a RANSAC similarity transform (estimateAffinePartial2D: scale, shift,
small rotation) find the crop; the copy is then warped onto the original and their overlap must
correlate. Keypoints alone are not enough on chest X-rays (every film has clavicles and ribs in the same
places), and correlation alone is not either (different patients reach r ~0.9): a copy must pass both.
Thresholds are config `dedup.copy_*`; thumbnails are copy_hash.aspect_thumbnail's.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


def single_threaded() -> None:
    """One OpenCV thread per Python worker: Spark already runs one worker per core."""
    cv2.setNumThreads(1)


@dataclass(frozen=True)
class CopyCheck:
    """Thresholds of the pixel check (config `dedup.copy_*`)."""

    min_inliers: int = 10
    min_inlier_ratio: float = 0.25
    min_correlation: float = 0.9
    min_overlap: float = 0.5  # of the smaller image's area
    max_rotation_deg: float = 5.0


def match_copy(a: np.ndarray | None, b: np.ndarray | None, check: CopyCheck) -> tuple[int, float]:
    """(RANSAC inliers, correlation of the aligned overlap) for thumbnails a, b; correlation NaN when any
    keypoint test fails, so only a pair that passes every test can reach check.min_correlation."""
    if a is None or b is None or min(a.shape + b.shape) < 16:
        return 0, float("nan")
    orb = cv2.ORB_create(nfeatures=500, edgeThreshold=15, patchSize=15)
    ka, da = orb.detectAndCompute(a, None)
    kb, db = orb.detectAndCompute(b, None)
    if da is None or db is None or len(ka) < 3 or len(kb) < 3:
        return 0, float("nan")
    matches = cv2.BFMatcher(cv2.NORM_HAMMING, crossCheck=True).match(db, da)
    if len(matches) < check.min_inliers:
        return 0, float("nan")
    src = np.float32([kb[m.queryIdx].pt for m in matches])
    dst = np.float32([ka[m.trainIdx].pt for m in matches])
    m, inl = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=3.0)
    inliers = 0 if inl is None else int(inl.sum())
    if m is None or inliers < check.min_inliers or inliers < check.min_inlier_ratio * len(matches):
        return inliers, float("nan")
    if abs(np.degrees(np.arctan2(m[1, 0], m[0, 0]))) > check.max_rotation_deg:
        return inliers, float("nan")
    warped = cv2.warpAffine(b, m, (a.shape[1], a.shape[0]), flags=cv2.INTER_LINEAR)
    mask = cv2.warpAffine(np.full(b.shape, 255, np.uint8), m, (a.shape[1], a.shape[0]),
                          flags=cv2.INTER_NEAREST) == 255
    mask = cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)  # drop resampled rims
    if mask.sum() < check.min_overlap * min(a.size, b.size):
        return inliers, float("nan")
    x, y = a[mask].astype(np.float64), warped[mask].astype(np.float64)
    if x.std() == 0 or y.std() == 0:
        return inliers, float("nan")
    return inliers, float(np.corrcoef(x, y)[0, 1])
