from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from whaleid.data.images import open_image
from whaleid.preprocess.saliency import (
    STATUS_NO_REGION,
    STATUS_OK,
    STATUS_TINY_REGION,
    STATUS_WHOLE_FRAME,
    Crop,
    crop_box,
    enlarge_box,
    letterbox,
    saliency_masks,
)

# --- enlarge_box: hand-computed cases -------------------------------------------------


def test_enlarge_box_factor_one_is_identity():
    assert enlarge_box((10, 20, 110, 70), 1.0, 500, 400) == (10, 20, 110, 70)


def test_enlarge_box_100x50_by_1_2_keeps_centre():
    # centre (150, 125); 100x50 -> 120x60 -> x 90..210, y 95..155
    box = enlarge_box((100, 100, 200, 150), 1.2, 1000, 1000)
    assert box == (90, 95, 210, 155)
    assert ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2) == (150, 125)


def test_enlarge_box_clips_at_borders():
    # centre (50, 25); 100x50 -> 200x100 -> x -50..150, y -25..75, clipped to 120x60
    assert enlarge_box((0, 0, 100, 50), 2.0, 120, 60) == (0, 0, 120, 60)
    # near the bottom-right corner: centre (95, 55), 20x20 -> 40x40 -> 75..115, 35..75
    assert enlarge_box((85, 45, 105, 65), 2.0, 100, 60) == (75, 35, 100, 60)


def test_enlarge_box_square_grows_short_side():
    # 100x50 at centre (150, 125), x1.2 -> 120x60, squared -> 120x120: y 65..185
    assert enlarge_box((100, 100, 200, 150), 1.2, 1000, 1000, square=True) == (90, 65, 210, 185)
    # tall box: 20 wide, 80 tall, factor 1 -> 80x80 about centre (50, 50)
    assert enlarge_box((40, 10, 60, 90), 1.0, 200, 200, square=True) == (10, 10, 90, 90)


# --- crop_box on synthetic masks ------------------------------------------------------


def _mask(h: int = 200, w: int = 300) -> np.ndarray:
    return np.zeros((h, w), dtype=np.float32)


def test_crop_box_one_blob_gives_its_box():
    m = _mask()
    m[50:100, 100:200] = 0.9  # x 100..200, y 50..100
    c = crop_box(m, enlarge=1.0)
    assert isinstance(c, Crop)
    assert c.status == STATUS_OK
    assert c.box == (100, 50, 200, 100)
    assert c.mask_area == pytest.approx(100 * 50 / (200 * 300))
    assert c.score == pytest.approx(0.9)
    # enlarged about the same centre
    assert crop_box(m, enlarge=1.2).box == (90, 45, 210, 105)


def test_crop_box_two_blobs_takes_the_larger():
    m = _mask()
    m[10:30, 10:30] = 1.0  # 400 px
    m[120:180, 200:280] = 0.7  # 4800 px
    c = crop_box(m, enlarge=1.0, region="largest")
    assert c.status == STATUS_OK
    assert c.box == (200, 120, 280, 180)
    assert c.score == pytest.approx(0.7)


def test_crop_box_union_boxes_all_regions_above_min_area():
    m = _mask()
    m[10:30, 10:30] = 1.0  # 400 px = 0.67 %
    m[120:180, 200:280] = 0.7  # 4800 px
    m[195:197, 0:2] = 1.0  # 4 px: below min_area, left out
    c = crop_box(m, enlarge=1.0, region="union")
    assert c.status == STATUS_OK
    assert c.box == (10, 10, 280, 180)
    assert c.mask_area == pytest.approx(5200 / 60000)
    assert c.score == pytest.approx((400 * 1.0 + 4800 * 0.7) / 5200)
    with pytest.raises(ValueError, match="region"):
        crop_box(m, region="biggest")


def test_crop_box_whole_frame_is_flagged():
    m = _mask() + 0.9
    m[:10, :] = 0.0  # 95 % salient
    c = crop_box(m)
    assert c.status == STATUS_WHOLE_FRAME and c.box == (0, 0, 300, 200)
    assert c.mask_area == pytest.approx(0.95)
    assert crop_box(m, max_area=1.0, enlarge=1.0).status == STATUS_OK


def test_crop_box_threshold_is_respected():
    m = _mask()
    m[50:100, 100:200] = 0.4
    assert crop_box(m, threshold=0.5).status == STATUS_NO_REGION
    assert crop_box(m, threshold=0.3).status == STATUS_OK


def test_crop_box_empty_mask_falls_back_to_full_image():
    c = crop_box(_mask())
    assert c.status == STATUS_NO_REGION
    assert c.box == (0, 0, 300, 200)
    assert c.mask_area == 0.0


def test_crop_box_tiny_blob_falls_back():
    m = _mask()
    m[100:105, 100:105] = 1.0  # 25 px = 0.042% < 0.2%
    c = crop_box(m)
    assert c.status == STATUS_TINY_REGION
    assert c.box == (0, 0, 300, 200)
    assert c.mask_area == pytest.approx(25 / 60000)
    # the same blob passes with a lower min_area
    assert crop_box(m, min_area=0.0001).status == STATUS_OK


# --- letterbox ------------------------------------------------------------------------


def test_letterbox_keeps_aspect_and_centres():
    rgb = np.full((100, 400, 3), 255, dtype=np.uint8)
    padded, (top, left, h, w) = letterbox(rgb, 224)
    assert padded.shape == (224, 224, 3)
    assert (top, left, h, w) == (84, 0, 56, 224)  # (224 - 56) // 2 = 84
    assert padded[top : top + h, left : left + w].min() == 255
    assert padded[:top].max() == 0 and padded[top + h :].max() == 0


# --- real photos ----------------------------------------------------------------------


def _photos(shared_data: Path) -> list[Path]:
    hw = sorted((shared_data / "happywhale-sample" / "images").iterdir())[:4]
    fins = sorted((shared_data / "dorsal-fins" / "images").iterdir())[:2]
    return hw + fins


_REAL_CACHE: dict[Path, tuple[list[Image.Image], list[np.ndarray]]] = {}


@pytest.fixture
def real(shared_data: Path) -> tuple[list[Image.Image], list[np.ndarray]]:
    """Photos and their masks, computed once per run (shared_data is function-scoped)."""
    if shared_data not in _REAL_CACHE:
        images = [open_image(p) for p in _photos(shared_data)]
        assert len(images) == 6
        _REAL_CACHE[shared_data] = (images, saliency_masks(images, batch_size=4))
    return _REAL_CACHE[shared_data]


def test_real_masks_full_resolution_in_unit_range(real):
    images, masks = real
    assert len(masks) == len(images)
    for img, m in zip(images, masks):
        assert m.dtype == np.float32
        assert m.shape == (img.height, img.width)
        assert 0.0 <= float(m.min()) and float(m.max()) <= 1.0
        assert float(m.max()) - float(m.min()) > 0.3  # not a flat map


def test_real_crops_mostly_ok_and_smaller_than_image(real):
    images, masks = real
    good = 0
    for img, m in zip(images, masks):
        c = crop_box(m)
        x0, y0, x1, y1 = c.box
        assert 0 <= x0 < x1 <= img.width and 0 <= y0 < y1 <= img.height
        if c.status == STATUS_OK and (x1 - x0) * (y1 - y0) < img.width * img.height:
            good += 1
    assert good >= len(images) - 1


def test_real_masks_independent_of_batching(real):
    images, masks = real
    single = saliency_masks(images[:2], batch_size=1)
    for a, b in zip(single, masks[:2]):
        np.testing.assert_allclose(a, b, atol=1e-4)


def test_real_mask_follows_a_flip(real):
    """A misaligned un-letterbox would break the mask's correspondence with a mirrored photo."""
    images, masks = real
    wide = max(range(len(images)), key=lambda i: images[i].width / images[i].height)
    flipped = saliency_masks([ImageOps.mirror(images[wide])])[0]
    a, b = flipped.ravel(), masks[wide][:, ::-1].ravel()
    assert np.corrcoef(a, b)[0, 1] > 0.8


def test_real_clahe_runs_and_keeps_shape(real):
    images, _ = real
    m = saliency_masks(images[:1], clahe=True)[0]
    assert m.shape == (images[0].height, images[0].width)
    assert 0.0 <= float(m.min()) and float(m.max()) <= 1.0


# --- remove_background: hand-computed on tiny synthetic images ---------------------------

from whaleid.preprocess.saliency import remove_background  # noqa: E402

_COLOUR = (200, 100, 50)


def _const_image(colour=_COLOUR, h: int = 20, w: int = 20) -> Image.Image:
    return Image.fromarray(np.full((h, w, 3), colour, dtype=np.uint8))


def _left_mask(h: int = 20, w: int = 20) -> np.ndarray:
    m = np.zeros((h, w), dtype=np.float32)
    m[:, : w // 2] = 1.0
    return m


def test_remove_background_black_hard_edge():
    out = np.asarray(remove_background(_const_image(), _left_mask(), mode="black", feather=0))
    assert out.shape == (20, 20, 3)
    assert (out[:, 10:] == 0).all()
    assert (out[:, :10] == np.array(_COLOUR, dtype=np.uint8)).all()


def test_remove_background_mean_fills_with_photo_mean():
    arr = np.zeros((20, 20, 3), dtype=np.uint8)
    arr[:, :10] = (200, 100, 50)
    arr[:, 10:] = (0, 50, 100)  # photo mean = (100, 75, 75)
    out = np.asarray(remove_background(Image.fromarray(arr), _left_mask(), mode="mean", feather=0))
    assert (out[:, 10:] == np.array([100, 75, 75], dtype=np.uint8)).all()
    assert (out[:, :10] == np.array([200, 100, 50], dtype=np.uint8)).all()


def test_remove_background_blur_of_constant_image_is_unchanged():
    img = _const_image()
    for feather in (0.0, 0.05):
        out = np.asarray(remove_background(img, _left_mask(), mode="blur", feather=feather))
        assert (out == np.asarray(img)).all()


def test_remove_background_blur_smooths_texture():
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, size=(20, 20, 3), dtype=np.uint8)
    out = np.asarray(remove_background(Image.fromarray(arr), _left_mask(), mode="blur", feather=0)).astype(float)
    assert (out[:, :10] == arr[:, :10]).all()
    # the blurred right half varies far less than the noisy original there
    assert out[:, 10:].std() < 0.5 * arr[:, 10:].astype(float).std()


def test_remove_background_feather_softens_only_the_edge():
    out = np.asarray(remove_background(_const_image(), _left_mask(), mode="black", feather=0.05)).astype(int)
    red = out[:, :, 0]
    # columns 9 and 10 sit on the boundary: strictly between background 0 and photo 200
    assert ((red[:, 9] > 0) & (red[:, 9] < 200)).all()
    assert ((red[:, 10] > 0) & (red[:, 10] < 200)).all()
    assert (red[:, 9] > red[:, 10]).all()
    # far from the boundary the pixels keep their hard-edge values
    assert (red[:, 0] == 200).all()
    assert (red[:, 19] == 0).all()


def test_remove_background_grayscale_is_three_equal_channels():
    img, mask = _const_image(), _left_mask()
    out = np.asarray(remove_background(img, mask, mode="black", feather=0, grayscale=True)).astype(int)
    assert out.shape == (20, 20, 3)
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    ref = np.asarray(remove_background(img, mask, mode="black", feather=0).convert("L")).astype(int)
    assert np.abs(out[..., 0] - ref).max() <= 1
    # the greyscale of (200,100,50) is neither 0 nor any of the input channels' extremes
    assert 0 < out[0, 0, 0] < 200 and (out[:, 10:] == 0).all()


def test_remove_background_rejects_wrong_mask_shape():
    with pytest.raises(ValueError, match="mask shape"):
        remove_background(_const_image(), np.ones((20, 19), dtype=np.float32))
    with pytest.raises(ValueError, match="mask shape"):
        remove_background(_const_image(), np.ones((20, 20, 1), dtype=np.float32))


def test_remove_background_rejects_bad_mode():
    with pytest.raises(ValueError, match="black.*blur.*mean"):
        remove_background(_const_image(), _left_mask(), mode="white")
