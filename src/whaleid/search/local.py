"""Matching two photos' keypoints and verifying the matches geometrically: the local score.

Descriptor matches are LightGlue's (learned, for ALIKED keypoints), or kept by Lowe's ratio test or as mutual nearest neighbours; the score is how many of them
one transform of the photo plane explains (RANSAC). A whale's head or a fin seen
again changes by a similarity (turn, scale, shift), so that is the default model; a full affine
lets chance matches agree more easily (docs/results/local-features.md).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import cv2
import numpy as np

from whaleid.errors import UserError
from whaleid.model import learned
from whaleid.model.keypoints import Keypoints

__all__ = ["GEOMETRIES", "MATCHERS", "MatchConfig", "inliers", "matched_points", "verified"]

GEOMETRIES = ("similarity", "affine")
MATCHERS = ("auto", "lightglue", "ratio", "mutual")  # auto: lightglue for ALIKED keypoints, else ratio


@dataclass(frozen=True)
class MatchConfig:
    matcher: str = "auto"  # lightglue (ALIKED only) | ratio (Lowe's test) | mutual (nearest neighbours both ways)
    ratio: float = 0.8
    geometry: str = "similarity"  # similarity (RANSAC) | affine (MAGSAC): the transform the inliers must share
    reprojection: float = 0.02  # inlier tolerance, as a fraction of the photo's long side
    min_confidence: float = 0.1  # lightglue: matches less sure than this are dropped
    early_stop: float = 0.95  # lightglue: stop its layers once this share of points is confident (-1: never)

    def __post_init__(self) -> None:
        if self.geometry not in GEOMETRIES:
            raise UserError(f"unknown geometry {self.geometry!r}; valid: {', '.join(GEOMETRIES)}")
        if self.matcher not in MATCHERS:
            raise UserError(f"unknown matcher {self.matcher!r}; valid: {', '.join(MATCHERS)}")
        if not 0 < self.ratio <= 1 or self.reprojection <= 0 or not 0 <= self.min_confidence < 1:
            raise UserError("matching: ratio must be in (0, 1], reprojection > 0 and min_confidence in [0, 1)")
        if not (self.early_stop == -1 or 0 < self.early_stop <= 1):
            raise UserError("matching: early_stop must be in (0, 1], or -1 for never")

    def resolved(self, detector: str) -> MatchConfig:
        """This config with ``auto`` made the detector's matcher; LightGlue's weights exist for ALIKED only."""
        matcher = ("lightglue" if detector == "aliked" else "ratio") if self.matcher == "auto" else self.matcher
        if matcher == "lightglue" and detector != "aliked":
            raise UserError(f"LightGlue matches ALIKED keypoints (its shipped weights), not {detector}'s: use ratio")
        return replace(self, matcher=matcher)


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


def inliers(a: Keypoints, b: Keypoints, config: MatchConfig = MatchConfig(matcher="ratio")) -> int:
    """How many descriptor matches between two photos one transform (``config.geometry``) explains."""
    if config.matcher == "lightglue":
        return int(verified(a, [b], config)[0])
    return len(matched_points(a, b, config))


def matched_points(a: Keypoints, b: Keypoints, config: MatchConfig) -> np.ndarray:
    """The verified matches themselves, (n, 4): x, y in ``a`` then x, y in ``b`` (units of each photo's long
    side): what a reviewer is shown of why two photos were found alike."""
    if len(a) < 3 or len(b) < 3:
        return np.zeros((0, 4), np.float32)
    if config.matcher == "lightglue":
        found = learned.match((a.xy, a.descriptors), [(b.xy, b.descriptors)], config.min_confidence, config.early_stop)
        good = np.asarray(found[0], np.int64).reshape(-1, 2)
    else:
        good = np.asarray(_matches(a, b, config), np.int64).reshape(-1, 2)
    src, dst = a.xy[good[:, 0]], b.xy[good[:, 1]]
    keep = _inlier_mask(src, dst, config)
    return np.hstack([src[keep], dst[keep]]).astype(np.float32)


def verified(query: Keypoints, photos: list[Keypoints], config: MatchConfig) -> np.ndarray:
    """Inliers of one photo against each of ``photos``."""
    if config.matcher != "lightglue":
        return np.array([inliers(query, photo, config) for photo in photos], np.float64)
    found = learned.match(
        (query.xy, query.descriptors),
        [(p.xy, p.descriptors) for p in photos],
        config.min_confidence,
        config.early_stop,
    )
    return np.array(
        [_consistent(query.xy[m[:, 0]], p.xy[m[:, 1]], config) for m, p in zip(found, photos, strict=True)],
        np.float64,
    )


def _consistent(src: np.ndarray, dst: np.ndarray, config: MatchConfig) -> int:
    """How many of the matched positions ``src`` -> ``dst`` one transform explains."""
    return int(_inlier_mask(src, dst, config).sum())


def _inlier_mask(src: np.ndarray, dst: np.ndarray, config: MatchConfig) -> np.ndarray:
    """Which of the matched positions ``src`` -> ``dst`` one transform explains."""
    none = np.zeros(len(src), bool)
    if len(src) < 3:
        return none
    if config.geometry == "affine":
        _, mask = cv2.estimateAffine2D(src, dst, method=cv2.USAC_MAGSAC, ransacReprojThreshold=config.reprojection)
    else:  # OpenCV offers only RANSAC for the 4-parameter similarity
        _, mask = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=config.reprojection)
    return none if mask is None else mask.ravel().astype(bool)
