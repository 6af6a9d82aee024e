"""Local features: SIFT keypoints matched between two photos and verified geometrically.

A second opinion beside the global embedding (HotSpotter, WildFusion): nicks, scars and callosity
patterns are local and keep their layout from photo to photo, so two photos of one animal share
many keypoints that one affine transform maps onto each other; photos of different animals share
few. OpenCV's SIFT needs no downloaded weights. Descriptors are RootSIFT (Hellinger-normalised),
which matches better than plain SIFT at no cost.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from whaleid.errors import UserError

GEOMETRIES = ("similarity", "affine")


@dataclass(frozen=True)
class LocalConfig:
    """How keypoints are found and matched (the geometry is the one measured best on right whales,
    docs/results/local-features.md; the rest is the probe's first guess, not tuned yet)."""

    max_keypoints: int = 500
    min_side: int = 448  # photos whose short side is smaller are upscaled to it: small crops keep detail
    clahe: bool = True  # local contrast: glare and haze flatten the skin's pattern
    ratio: float = 0.8  # Lowe's ratio test
    geometry: str = "similarity"  # similarity (RANSAC) | affine (MAGSAC): the transform the inliers must share
    reprojection: float = 0.02  # inlier tolerance, as a fraction of the image's long side

    def __post_init__(self):
        if self.geometry not in GEOMETRIES:
            raise UserError(f"unknown geometry {self.geometry!r}; valid: {', '.join(GEOMETRIES)}")
        if not 0 < self.ratio <= 1 or self.max_keypoints < 4 or self.min_side < 16 or self.reprojection <= 0:
            raise UserError("local features: ratio in (0, 1], max_keypoints >= 4, min_side >= 16, reprojection > 0")


@dataclass
class Keypoints:
    """One photo's keypoints: positions (n, 2) in units of the photo's long side, RootSIFT (n, 128) float16."""

    xy: np.ndarray
    descriptors: np.ndarray

    def __len__(self) -> int:
        return len(self.xy)


def extract(image: np.ndarray, config: LocalConfig = LocalConfig(), mask: np.ndarray | None = None) -> Keypoints:
    """Keypoints of an RGB or grey uint8 image; with ``mask`` (same height and width, nonzero = the
    animal), keypoints on water, splash and glare are left out."""
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image
    scale = max(1.0, config.min_side / min(grey.shape))
    if scale > 1:
        grey = cv2.resize(grey, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
        if mask is not None:
            mask = cv2.resize(mask, (grey.shape[1], grey.shape[0]), interpolation=cv2.INTER_NEAREST)
    if config.clahe:
        grey = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(grey)
    sift = cv2.SIFT_create(nfeatures=config.max_keypoints)
    points, descriptors = sift.detectAndCompute(grey, None if mask is None else (mask > 0).astype(np.uint8))
    if descriptors is None or not points:
        return Keypoints(np.zeros((0, 2), np.float32), np.zeros((0, 128), np.float16))
    root = np.sqrt(descriptors / np.maximum(descriptors.sum(axis=1, keepdims=True), 1e-7))  # RootSIFT
    xy = np.array([p.pt for p in points], np.float32) / max(grey.shape)
    return Keypoints(xy, root.astype(np.float16))


def inliers(a: Keypoints, b: Keypoints, config: LocalConfig = LocalConfig()) -> int:
    """How many ratio-test matches between two photos one transform (``config.geometry``) explains."""
    if len(a) < 3 or len(b) < 3:
        return 0
    matcher = cv2.BFMatcher(cv2.NORM_L2)
    pairs = matcher.knnMatch(a.descriptors.astype(np.float32), b.descriptors.astype(np.float32), k=2)
    good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < config.ratio * p[1].distance]
    if len(good) < 3:
        return 0
    src = a.xy[[m.queryIdx for m in good]]
    dst = b.xy[[m.trainIdx for m in good]]
    if config.geometry == "affine":
        _, mask = cv2.estimateAffine2D(src, dst, method=cv2.USAC_MAGSAC, ransacReprojThreshold=config.reprojection)
    else:  # OpenCV 5 offers only RANSAC for the 4-parameter similarity
        _, mask = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=config.reprojection)
    return 0 if mask is None else int(mask.sum())
