"""Matching two photos' keypoints and verifying the matches geometrically: the local score.

Descriptor matches are kept by Lowe's ratio test or as mutual nearest neighbours; the score is
how many of them one transform of the photo plane explains (RANSAC). A whale's head or a fin seen
again changes by a similarity (turn, scale, shift), so that is the default model; a full affine
lets chance matches agree more easily (docs/results/local-features.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from whaleid.errors import UserError
from whaleid.model.keypoints import Keypoints

__all__ = ["GEOMETRIES", "MATCHERS", "MatchConfig", "inliers"]

GEOMETRIES = ("similarity", "affine")
MATCHERS = ("ratio", "mutual")


@dataclass(frozen=True)
class MatchConfig:
    matcher: str = "ratio"  # ratio (Lowe's test) | mutual (nearest neighbours both ways)
    ratio: float = 0.8
    geometry: str = "similarity"  # similarity (RANSAC) | affine (MAGSAC): the transform the inliers must share
    reprojection: float = 0.02  # inlier tolerance, as a fraction of the photo's long side

    def __post_init__(self) -> None:
        if self.geometry not in GEOMETRIES:
            raise UserError(f"unknown geometry {self.geometry!r}; valid: {', '.join(GEOMETRIES)}")
        if self.matcher not in MATCHERS:
            raise UserError(f"unknown matcher {self.matcher!r}; valid: {', '.join(MATCHERS)}")
        if not 0 < self.ratio <= 1 or self.reprojection <= 0:
            raise UserError("matching: ratio must be in (0, 1] and reprojection > 0")


def _matches(a: Keypoints, b: Keypoints, config: MatchConfig) -> list[tuple[int, int]]:
    binary = a.descriptors.dtype == np.uint8
    norm = cv2.NORM_HAMMING if binary else cv2.NORM_L2
    da, db = (
        (a.descriptors, b.descriptors)
        if binary
        else (a.descriptors.astype(np.float32), b.descriptors.astype(np.float32))
    )
    if config.matcher == "mutual":
        return [(m.queryIdx, m.trainIdx) for m in cv2.BFMatcher(norm, crossCheck=True).match(da, db)]
    pairs = cv2.BFMatcher(norm).knnMatch(da, db, k=2)
    return [
        (p[0].queryIdx, p[0].trainIdx) for p in pairs if len(p) == 2 and p[0].distance < config.ratio * p[1].distance
    ]


def inliers(a: Keypoints, b: Keypoints, config: MatchConfig = MatchConfig()) -> int:
    """How many descriptor matches between two photos one transform (``config.geometry``) explains."""
    if len(a) < 3 or len(b) < 3:
        return 0
    good = _matches(a, b, config)
    if len(good) < 3:
        return 0
    src = a.xy[[i for i, _ in good]]
    dst = b.xy[[j for _, j in good]]
    if config.geometry == "affine":
        _, mask = cv2.estimateAffine2D(src, dst, method=cv2.USAC_MAGSAC, ransacReprojThreshold=config.reprojection)
    else:  # OpenCV offers only RANSAC for the 4-parameter similarity
        _, mask = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=config.reprojection)
    return 0 if mask is None else int(mask.sum())
