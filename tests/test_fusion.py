"""Fusion: calibrations are monotone maps to probabilities, checked on a hand-computed example."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from whaleid.errors import UserError
from whaleid.search.fusion import Calibration, Fusion


def test_isotonic_calibration_on_a_hand_computed_example():
    # Scores 1..6 with labels 0 0 1 0 1 1: pool-adjacent-violators merges (3, 4) into 0.5.
    calibration = Calibration.fit(np.arange(1.0, 7.0), np.array([0, 0, 1, 0, 1, 1], bool))
    assert np.allclose(calibration(np.arange(1.0, 7.0)), [0, 0, 0.5, 0.5, 1, 1])
    assert calibration(np.array([-5.0, 100.0])).tolist() == [0.0, 1.0]  # clipped outside the range seen


def test_the_fused_score_averages_the_calibrated_probabilities_and_survives_json():
    cosine = Calibration(np.array([0.0, 1.0]), np.array([0.0, 1.0]))
    inliers = Calibration(np.array([0.0, 10.0, 40.0]), np.array([0.0, 0.2, 1.0]))
    fusion = Fusion(cosine, inliers, local=0.25)
    # 0.75 * 0.6 + 0.25 * (0.2 + 0.8 * 15/30) = 0.45 + 0.15
    assert fusion(np.array([0.6]), np.array([25.0])) == pytest.approx([0.6])
    again = Fusion.from_dict(fusion.to_dict())
    assert np.array_equal(
        again(np.array([0.1, 0.9]), np.array([5.0, 60.0])), fusion(np.array([0.1, 0.9]), np.array([5.0, 60.0]))
    )


@given(st.lists(st.tuples(st.floats(-1, 1), st.booleans()), min_size=2, max_size=60))
def test_calibration_is_monotone_and_a_probability(pairs):
    scores = np.array([s for s, _ in pairs])
    same = np.array([b for _, b in pairs])
    if same.all() or not same.any():
        with pytest.raises(UserError):
            Calibration.fit(scores, same)
        return
    calibration = Calibration.fit(scores, same)
    grid = np.linspace(-1.5, 1.5, 101)
    values = calibration(grid)
    assert np.all(np.diff(values) >= -1e-12) and values.min() >= 0 and values.max() <= 1
