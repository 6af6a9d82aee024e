"""Synthetic catalog: deterministic, Happywhale-shaped, and carrying identity only in the fin's shape."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from whaleid.data.fins import WIDTH_FRAC, FinIdentity, fin_silhouette, pose_matrix
from whaleid.data.render import render_fin, render_fin_photo
from whaleid.data.synth import _photo_count, make_catalog
from whaleid.errors import UserError


def _identity(i: int, seed: int = 0) -> FinIdentity:
    return FinIdentity.random(np.random.default_rng([seed, 0, i]))


def _pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img, dtype=np.int16)


def _tree_digest(root: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((root / "images").iterdir())}


# ---------------------------------------------------------------------------------------------- determinism


def test_identity_is_seeded() -> None:
    assert FinIdentity.random(np.random.default_rng(7)) == FinIdentity.random(np.random.default_rng(7))
    assert FinIdentity.random(np.random.default_rng(7)) != FinIdentity.random(np.random.default_rng(8))


def test_render_is_seeded() -> None:
    ident = _identity(0)
    a = render_fin(ident, np.random.default_rng(1), 96)
    b = render_fin(ident, np.random.default_rng(1), 96)
    c = render_fin(ident, np.random.default_rng(2), 96)
    assert a.mode == "RGB" and a.size == (96, 96)
    assert np.array_equal(_pixels(a), _pixels(b))
    assert np.abs(_pixels(a) - _pixels(c)).mean() > 3.0


def test_catalog_is_seeded(tmp_path: Path) -> None:
    kw = dict(n_individuals=4, photos_per_individual=(1, 3), size=64)
    csv_a = make_catalog(tmp_path / "a", seed=3, **kw)
    csv_b = make_catalog(tmp_path / "b", seed=3, **kw)
    csv_c = make_catalog(tmp_path / "c", seed=4, **kw)
    assert csv_a.read_bytes() == csv_b.read_bytes()
    assert _tree_digest(tmp_path / "a") == _tree_digest(tmp_path / "b")
    assert csv_a.read_bytes() != csv_c.read_bytes()
    assert set(_tree_digest(tmp_path / "a").values()).isdisjoint(_tree_digest(tmp_path / "c").values())


def test_smaller_catalog_is_a_prefix_of_a_larger_one(tmp_path: Path) -> None:
    """Per-individual seed streams: growing the catalog must not change the animals already in it."""
    small = pd.read_csv(make_catalog(tmp_path / "s", 3, (1, 4), 48, seed=5))
    large = pd.read_csv(make_catalog(tmp_path / "l", 6, (1, 4), 48, seed=5))
    merged = small.merge(large, on="image", suffixes=("_s", "_l"))
    assert len(merged) == len(small)
    assert (merged.individual_id_s == merged.individual_id_l).all()
    digest_s, digest_l = _tree_digest(tmp_path / "s"), _tree_digest(tmp_path / "l")
    assert all(digest_l[name] == digest for name, digest in digest_s.items())


# ---------------------------------------------------------------------------------------------- CSV format


def test_catalog_format_and_counts(tmp_path: Path) -> None:
    csv_path = make_catalog(
        tmp_path / "cat", n_individuals=7, photos_per_individual=(2, 5), size=80, seed=1, progress=True
    )
    assert csv_path == tmp_path / "cat" / "train.csv"
    assert csv_path.read_text().splitlines()[0] == "image,species,individual_id"
    df = pd.read_csv(csv_path)
    assert list(df.columns) == ["image", "species", "individual_id"]
    assert df.image.is_unique
    assert (df.species == "bottlenose_dolphin").all()
    assert sorted(df.individual_id.unique()) == [f"fin_{i:03d}" for i in range(7)]
    counts = df.individual_id.value_counts()
    assert counts.between(2, 5).all()
    assert counts.nunique() > 1  # a random count per individual, not a constant
    files = sorted(p.name for p in (tmp_path / "cat" / "images").iterdir())
    assert files == sorted(df.image)
    for name in df.image[:5]:
        with Image.open(tmp_path / "cat" / "images" / name) as im:
            assert im.format == "JPEG" and im.mode == "RGB" and im.size == (80, 80)


def test_fixed_photo_count_and_species(tmp_path: Path) -> None:
    df = pd.read_csv(make_catalog(tmp_path, n_individuals=3, photos_per_individual=2, size=40, species="orca"))
    assert len(df) == 6
    assert (df.individual_id.value_counts() == 2).all()
    assert (df.species == "orca").all()


def test_photo_counts_are_skewed_toward_few(tmp_path) -> None:
    """Like real catalogues: many animals with 1-2 photos, a few with many."""
    counts = np.array([_photo_count(np.random.default_rng([0, 1, i]), (1, 8)) for i in range(400)])
    assert counts.min() == 1 and counts.max() == 8
    assert (counts <= 2).mean() > 0.35  # a uniform draw would give 0.25
    assert (counts >= 7).mean() > 0.03
    with pytest.raises(UserError, match="1 <= min <= max"):
        make_catalog(tmp_path, 2, (3, 2))


# ---------------------------------------------------------------------------------------------- identity


_PX = 80.0  # raster pixels per fin height
_RASTER = np.array([[_PX, 0.0, 0.5 * _PX], [0.0, -_PX, 1.5 * _PX], [0.0, 0.0, 1.0]])  # fin coords -> raster
_RASTER_SIZE = (int(2.75 * _PX), int(1.6 * _PX))


def _unposed_upper_fin(photo) -> np.ndarray:
    """Undo the photo's pose and keep the fin above v = 0.25 (never under the waterline; holds the
    nicks): what is left is the individual's shape as this photo shows it."""
    back = _RASTER @ np.linalg.inv(photo.matrix)
    mask = cv2.warpAffine(photo.fin_mask, back[:2], _RASTER_SIZE, flags=cv2.INTER_LINEAR)
    return mask[: int(_RASTER[1, 2] - 0.25 * _PX)]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.minimum(a, b).sum() / max(np.maximum(a, b).sum(), 1e-6))


def test_photos_of_one_individual_share_its_fin_shape() -> None:
    """Two photos of one individual show the same fin more closely than any two photos of different
    individuals -- including 'twins' with the very same fin outline and only other nicks."""
    base = [_identity(i, seed=11) for i in range(6)]
    twins = [dataclasses.replace(b, nicks=base[(k + 1) % len(base)].nicks) for k, b in enumerate(base)]
    shapes, labels = [], []
    for k, ident in enumerate(base + twins):
        for p in range(2):
            shapes.append(_unposed_upper_fin(render_fin_photo(ident, np.random.default_rng([11, 1, k, p]), 256)))
            labels.append(k)
    same, different = [], []
    for a in range(len(shapes)):
        for b in range(a + 1, len(shapes)):
            (same if labels[a] == labels[b] else different).append(_iou(shapes[a], shapes[b]))
    assert len(same) == 12
    assert min(same) > max(different), (min(same), max(different))
    assert min(same) > 0.95


def test_fin_pixels_follow_the_mask() -> None:
    """The ground-truth mask must be what is drawn: the fin's pixels differ from the water around it."""
    contrasts = []
    for k in range(12):
        photo = render_fin_photo(_identity(k), np.random.default_rng([7, k]), 128)
        img = np.asarray(photo.image, dtype=np.float32)
        inside = photo.fin_mask > 0.99
        ring = (cv2.dilate(inside.astype(np.uint8), np.ones((9, 9), np.uint8)) > 0) & (photo.fin_mask < 0.01)
        contrasts.append(np.abs(img[inside].mean(0) - img[ring].mean(0)).max())
    assert np.median(contrasts) > 20


def test_nicks_are_resolvable_at_128px() -> None:
    """Learnability: even at the smallest framing, the deepest nick cuts a few pixels into the fin."""
    for i in range(20):
        ident = _identity(i, seed=2)
        smooth = dataclasses.replace(ident, nicks=())
        m = pose_matrix(ident, 128, width_frac=WIDTH_FRAC[0], center_x=0.5, base_y=0.7, angle_deg=0, shear=0, aspect=1)
        scale = m[0, 0]
        assert max(n.depth for n in ident.nicks) * scale >= 2.5
        assert len(ident.nicks) >= 2
        removed = fin_silhouette(smooth, 128) - fin_silhouette(ident, 128)
        assert removed.min() > -0.25  # nicks only ever cut into the fin (cv2 anti-aliasing aside)
        assert removed.sum() > 10  # pixels of fin area cut away by the nicks


def test_fin_is_framed_for_learning() -> None:
    """The fin spans a decent fraction of the frame and stays inside it."""
    widths = []
    for k in range(30):
        photo = render_fin_photo(_identity(k % 10), np.random.default_rng([3, k]), 128)
        cols = np.nonzero((photo.fin_mask > 0.5).any(axis=0))[0]
        rows = np.nonzero((photo.fin_mask > 0.5).any(axis=1))[0]
        widths.append((cols.max() - cols.min() + 1) / 128)
        assert cols.min() > 0 and cols.max() < 127 and rows.min() > 0
    assert 0.25 <= min(widths) and max(widths) <= 0.7
    assert max(widths) - min(widths) > 0.15  # scale varies between photos


def test_colour_does_not_identify_the_individual() -> None:
    """Fin grey and sea colour vary per photo, not per animal: one-way ANOVA of mean colours across
    individuals finds nothing (a per-individual colour would give F in the hundreds)."""
    n_ind, n_photo = 8, 6
    whole = np.zeros((n_ind, n_photo, 3))
    fin = np.zeros((n_ind, n_photo, 3))
    for i in range(n_ind):
        ident = _identity(i, seed=9)
        for p in range(n_photo):
            photo = render_fin_photo(ident, np.random.default_rng([9, i, p]), 64)
            img = np.asarray(photo.image, dtype=np.float64)
            whole[i, p] = img.reshape(-1, 3).mean(0)
            fin[i, p] = img[photo.fin_mask > 0.9].mean(0)

    def anova_f(x: np.ndarray) -> np.ndarray:
        between = n_photo * ((x.mean(1) - x.mean((0, 1))) ** 2).sum(0) / (n_ind - 1)
        within = ((x - x.mean(1, keepdims=True)) ** 2).sum((0, 1)) / (n_ind * (n_photo - 1))
        return between / within

    assert anova_f(whole).max() < 4.0
    assert anova_f(fin).max() < 4.0
    assert whole.std(axis=(0, 1)).min() > 5  # and colours do vary


def test_variation_zero_is_a_clean_canonical_photo() -> None:
    """With variation off, the fin is drawn identically whatever the rng: only the water differs."""
    ident = _identity(4)
    a = render_fin_photo(ident, np.random.default_rng(1), 96, variation=0.0)
    b = render_fin_photo(ident, np.random.default_rng(2), 96, variation=0.0)
    assert np.array_equal(a.matrix, b.matrix) and np.array_equal(a.fin_mask, b.fin_mask)
    inside = a.fin_mask > 0.99
    assert np.abs(_pixels(a.image)[inside] - _pixels(b.image)[inside]).max() <= 2
    assert np.array_equal(fin_silhouette(ident, 96) > 0.5, (a.fin_mask > 0.5) & (fin_silhouette(ident, 96) > 0.5))
