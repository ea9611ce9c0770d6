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


Keypoints = tuple[np.ndarray, np.ndarray]  # (N, 2) float32 positions, (N, 32) uint8 ORB descriptors


def keypoints(img: np.ndarray | None) -> Keypoints | None:
    """ORB keypoints of one thumbnail, or None when it is missing, tiny or featureless. Computed once per
    image and reused for every candidate pair it is in (half the check's time when pairs share images)."""
    if img is None or min(img.shape) < 16:
        return None
    orb = cv2.ORB_create(nfeatures=500, edgeThreshold=15, patchSize=15)
    kps, desc = orb.detectAndCompute(img, None)
    if desc is None or len(kps) < 3:
        return None
    return np.float32([k.pt for k in kps]), desc


def match_copy(a: np.ndarray | None, b: np.ndarray | None, check: CopyCheck) -> tuple[int, float]:
    """(RANSAC inliers, correlation of the aligned overlap) for thumbnails a, b; correlation NaN when any
    keypoint test fails, so only a pair that passes every test can reach check.min_correlation."""
    return match_keypoints(a, keypoints(a), b, keypoints(b), check)


def match_keypoints(a: np.ndarray | None, ka: Keypoints | None, b: np.ndarray | None, kb: Keypoints | None,
                    check: CopyCheck) -> tuple[int, float]:
    """match_copy with each thumbnail's keypoints already computed (`keypoints`)."""
    if a is None or b is None or ka is None or kb is None:
        return 0, float("nan")
    matches = cv2.BFMatcher(cv2.NORM_HAMMING, crossCheck=True).match(kb[1], ka[1])
    if len(matches) < check.min_inliers:
        return 0, float("nan")
    src = kb[0][[m.queryIdx for m in matches]]
    dst = ka[0][[m.trainIdx for m in matches]]
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
