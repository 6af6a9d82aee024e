"""The second stage of the Identifier: the global shortlist re-scored by local-feature matches.

The K photos nearest a query by cosine are matched keypoint to keypoint (:mod:`whaleid.search.local`);
the cosine and the inlier count, each calibrated into P(same individual) on validation pairs
(:mod:`whaleid.search.fusion`), are fused, and individuals are ranked by their best fused photo.
Photos beyond the shortlist keep their cosine with zero inliers: the fusion is monotone, so they
stay behind every shortlisted photo, and the new_individual threshold reads one kind of score.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from whaleid.errors import UserError
from whaleid.model.keypoints import KeypointConfig
from whaleid.search.fusion import Calibration, Fusion
from whaleid.search.local import MatchConfig, verified

__all__ = ["RerankConfig", "fit_fusion", "pair_inliers"]


@dataclass
class RerankConfig:
    """Recipe settings of the re-ranking stage (``identify.rerank``)."""

    shortlist: int = 20  # K: the photos nearest by cosine that are matched
    local_weight: float = 0.5  # weight of the calibrated local score in the fused probability
    keypoints: KeypointConfig = field(default_factory=KeypointConfig)
    match: MatchConfig = field(default_factory=MatchConfig)
    threads: int | None = None  # matching threads; default: every core

    def __post_init__(self) -> None:
        self.match = self.match.resolved(self.keypoints.detector)
        if isinstance(self.shortlist, bool) or not isinstance(self.shortlist, int) or self.shortlist < 1:
            raise UserError(f"rerank.shortlist must be an integer >= 1, got {self.shortlist!r}")
        weight = self.local_weight
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 <= weight <= 1:
            raise UserError(f"rerank.local_weight must be a number in [0, 1], got {weight!r}")


def pair_inliers(queries, gallery, pairs: np.ndarray, config: RerankConfig) -> np.ndarray:
    """Inliers of each (query row, gallery photo ``pairs[row, j]``) pair; -1 entries score 0.

    ``queries`` and ``gallery`` are :class:`KeypointSet` or :class:`KeypointFiles`: each photo is read
    once. LightGlue runs one pair at a time, torch spreading each over the cores; OpenCV's pairs run
    on threads (its matcher and RANSAC release the GIL). A progress bar shows on a
    terminal.
    """
    if queries.config != gallery.config:
        raise UserError(
            "the queries' keypoints were extracted with other settings than the gallery's: extract them again"
        )
    query = [queries[i] for i in range(len(pairs))]
    photos = {int(j): gallery[int(j)] for j in np.unique(pairs[pairs >= 0])}
    counts = np.zeros(pairs.shape, np.float64)
    bar = tqdm(total=pairs.size, desc="matching", unit="pair", disable=None if len(pairs) > 1 else True)

    def row(i: int) -> None:
        shown = np.flatnonzero(pairs[i] >= 0)
        counts[i, shown] = verified(query[i], [photos[int(j)] for j in pairs[i, shown]], config.match)
        bar.update(pairs.shape[1])

    if config.match.matcher == "lightglue":
        for i in range(len(pairs)):
            row(i)
    else:
        with ThreadPoolExecutor(config.threads or os.cpu_count() or 1) as pool:
            list(pool.map(row, range(len(pairs))))
    bar.close()
    return counts


def fit_fusion(cosines: np.ndarray, counts: np.ndarray, same: np.ndarray, local_weight: float) -> Fusion:
    """Both scores calibrated on validation shortlist pairs (``same``: of one individual)."""
    same, cosines, counts = (np.asarray(a).ravel() for a in (same, cosines, counts))
    return Fusion(Calibration.fit(cosines, same), Calibration.fit(counts, same), float(local_weight))
