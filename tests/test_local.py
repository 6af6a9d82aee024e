"""Local features: a photo finds a transformed copy of itself by many geometrically consistent
keypoints, and an unrelated photo by few."""

import cv2
import numpy as np
import pytest

from whaleid.errors import UserError
from whaleid.model.keypoints import KeypointConfig, Keypoints, KeypointSet, extract, extract_files
from whaleid.search.local import MatchConfig, inliers


@pytest.fixture(scope="module")
def photos(synth_csv):
    images = sorted((synth_csv.parent / "images").glob("*.jpg"))
    return [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in images]


def transformed(image: np.ndarray) -> np.ndarray:
    """Rotated 15 degrees, scaled by 0.8, with colours shifted and a gamma: the same animal, another shot."""
    h, w = image.shape[:2]
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), 15, 0.8)
    turned = cv2.warpAffine(image, matrix, (w, h), borderMode=cv2.BORDER_REFLECT)
    recoloured = np.clip(255 * (turned / 255.0) ** 0.8 * np.array([1.0, 0.9, 1.1]) + 10, 0, 255)
    return recoloured.astype(np.uint8)


@pytest.mark.parametrize("detector", ["sift", "orb"])
@pytest.mark.parametrize("matcher", ["ratio", "mutual"])
def test_a_transformed_copy_matches_by_many_inliers_and_an_unrelated_photo_by_few(photos, detector, matcher):
    config, match = KeypointConfig(detector=detector), MatchConfig(matcher=matcher)
    query = extract(photos[0], config)
    same = inliers(query, extract(transformed(photos[0]), config), match)
    others = [inliers(query, extract(p, config), match) for p in photos[10:20]]
    assert len(query) > 50
    assert same >= 20, same
    assert same > 3 * max(others), (same, others)


def test_both_geometries_find_the_copy(photos):
    for geometry in ("affine", "similarity"):
        match = MatchConfig(geometry=geometry)
        assert inliers(extract(photos[1]), extract(transformed(photos[1])), match) >= 20


def test_a_mask_keeps_keypoints_on_the_animal_only(photos):
    image = photos[2]
    mask = np.zeros(image.shape[:2], np.uint8)
    mask[: image.shape[0] // 2] = 255  # the top half only
    found = extract(image, KeypointConfig(), mask)
    assert len(found) > 0 and found.xy[:, 1].max() <= 0.5 + 0.01


def test_rootsift_descriptors_are_unit_length_and_blank_photos_have_none(photos):
    found = extract(photos[3])
    norms = np.linalg.norm(found.descriptors.astype(np.float32), axis=1)
    assert np.allclose(norms, 1.0, atol=1e-2)
    blank = extract(np.full((64, 64, 3), 128, np.uint8))
    assert len(blank) == 0 and inliers(blank, found) == 0
    assert inliers(Keypoints(found.xy[:2], found.descriptors[:2]), found) == 0


def test_bad_settings_are_refused_with_the_valid_ones():
    with pytest.raises(UserError, match="similarity, affine"):
        MatchConfig(geometry="homography")
    with pytest.raises(UserError, match="ratio, mutual"):
        MatchConfig(matcher="flann")
    with pytest.raises(UserError, match="ratio"):
        MatchConfig(ratio=1.5)
    with pytest.raises(UserError, match="sift, orb"):
        KeypointConfig(detector="akaze")


def test_a_keypoint_set_keeps_each_photo_through_save_take_and_concat(tmp_path, synth_csv, photos):
    paths = sorted((synth_csv.parent / "images").glob("*.jpg"))[:3] + [tmp_path / "missing.jpg"]
    found = extract_files(paths, KeypointConfig(), threads=2)
    assert len(found) == 4 and len(found[3]) == 0  # a photo that does not open has no keypoints, in its place
    assert np.array_equal(found[1].xy, extract(photos[1]).xy)  # the same as one photo alone, in order
    loaded = KeypointSet.load(found.save(tmp_path / "k.npz"), KeypointConfig())
    joined = KeypointSet.concat([loaded.take([2, 0]), found.take([1])])
    for got, want in zip((joined[i] for i in range(3)), (found[2], found[0], found[1])):
        assert np.array_equal(got.xy, want.xy) and np.array_equal(got.descriptors, want.descriptors)
    with pytest.raises(UserError, match="does not hold keypoints"):
        KeypointSet.load(tmp_path / "k.npz", KeypointConfig(detector="orb"))  # 128 float16 columns are not ORB's
    (tmp_path / "bad.npz").write_bytes(b"not an archive")
    with pytest.raises(UserError, match="not a keypoints file"):
        KeypointSet.load(tmp_path / "bad.npz", KeypointConfig())
