"""Two scores of "same individual" made one: each calibrated into a probability on validation pairs
(isotonic regression, as WildFusion does), then averaged. Learned, not guessed: a cosine of 0.6 and
40 inliers mean what the validation photos say they mean.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.isotonic import IsotonicRegression

from whaleid.errors import UserError


@dataclass
class Calibration:
    """A monotone map from a raw score to P(same individual), stored as its breakpoints (no pickle)."""

    x: np.ndarray
    y: np.ndarray

    @classmethod
    def fit(cls, scores: np.ndarray, same: np.ndarray) -> Calibration:
        scores, same = np.asarray(scores, np.float64), np.asarray(same, bool)
        if scores.shape != same.shape or not same.any() or same.all():
            raise UserError("calibrating a score needs validation pairs of the same and of different individuals")
        model = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip").fit(scores, same)
        return cls(model.X_thresholds_.astype(np.float64), model.y_thresholds_.astype(np.float64))

    def __call__(self, scores: np.ndarray) -> np.ndarray:
        return np.interp(np.asarray(scores, np.float64), self.x, self.y)

    def to_dict(self) -> dict:
        return {"x": self.x.tolist(), "y": self.y.tolist()}

    @classmethod
    def from_dict(cls, data: dict) -> Calibration:
        return cls(np.asarray(data["x"], np.float64), np.asarray(data["y"], np.float64))


@dataclass
class Fusion:
    """The global cosine and the local inlier count, each calibrated, averaged with weight ``local``."""

    cosine: Calibration
    inliers: Calibration
    local: float = 0.5

    def __call__(self, cosines: np.ndarray, inliers: np.ndarray) -> np.ndarray:
        return (1 - self.local) * self.cosine(cosines) + self.local * self.inliers(inliers)

    def to_dict(self) -> dict:
        return {"cosine": self.cosine.to_dict(), "inliers": self.inliers.to_dict(), "local": self.local}

    @classmethod
    def from_dict(cls, data: dict) -> Fusion:
        return cls(Calibration.from_dict(data["cosine"]), Calibration.from_dict(data["inliers"]), float(data["local"]))
