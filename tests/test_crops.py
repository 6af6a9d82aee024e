"""Crop table over a catalog: one row per listed photo, broken photos as errors, masks for review."""

import numpy as np
import pandas as pd
import pytest
from conftest import BROKEN, centre_blob_masks
from PIL import Image

import whaleid.crops as crops
from whaleid.catalog import read_catalog
from whaleid.crops import (
    CROP_COLUMNS,
    CropSettings,
    crop_catalog,
    failures,
    read_crop_table,
    write_crop_table,
)
from whaleid.preprocess import STATUS_NO_REGION, STATUS_OK


def fixture_catalog(tmp_path, fixtures, check=False):
    names = ["rgb.jpg", "gray.jpg", "rotated.jpg", *BROKEN]
    csv = tmp_path / "photos.csv"
    pd.DataFrame({"image": names, "species": "x", "individual_id": [f"id{i % 3}" for i in range(len(names))]}).to_csv(csv, index=False)
    return read_catalog(csv, fixtures / "images", check_images=check, progress=False)


@pytest.mark.parametrize("check", [False, True])
def test_every_listed_photo_gets_a_row_and_broken_ones_are_errors(tmp_path, fixtures, monkeypatch, check):
    monkeypatch.setattr(crops, "saliency_masks", centre_blob_masks)
    cat = fixture_catalog(tmp_path, fixtures, check=check)  # check=True: broken photos arrive as catalog problems
    table = crop_catalog(cat, CropSettings(enlarge=1.0), masks_dir=tmp_path / "out", batch_size=2, progress=False)
    assert list(table.columns) == CROP_COLUMNS
    assert sorted(table["image"]) == sorted(["rgb.jpg", "gray.jpg", "rotated.jpg", *BROKEN])
    status = table.set_index("image")["status"]
    for name, reason in BROKEN.items():
        assert status[name] == f"error: {reason}"
    rgb = table.set_index("image").loc["rgb.jpg"]
    w, h = Image.open(fixtures / "images" / "rgb.jpg").size
    assert (rgb.width, rgb.height) == (w, h)
    assert (rgb.x0, rgb.y0, rgb.x1, rgb.y1) == (w // 4, h // 4, 3 * w // 4, 3 * h // 4)
    assert rgb.status == STATUS_OK and rgb.score == pytest.approx(0.9)
    mask = Image.open(tmp_path / "out" / rgb["mask"])
    assert mask.mode == "L" and max(mask.size) <= crops.MASK_SIDE
    assert mask.size[0] / mask.size[1] == pytest.approx(w / h, rel=0.05)
    assert set(failures(table)["image"]) == set(BROKEN)


def test_no_region_is_a_fallback_to_the_full_photo(tmp_path, fixtures, monkeypatch):
    monkeypatch.setattr(crops, "saliency_masks", lambda images, **_: [np.zeros(im.size[::-1], np.float32) for im in images])
    table = crop_catalog(fixture_catalog(tmp_path, fixtures, check=True), progress=False)
    row = table.set_index("image").loc["gray.jpg"]
    assert row.status == STATUS_NO_REGION
    assert (row.x0, row.y0, row.x1, row.y1) == (0, 0, row.width, row.height)
    assert "gray.jpg" in set(failures(table)["image"])


def test_crop_table_round_trip_and_failures_csv(tmp_path, fixtures, monkeypatch):
    monkeypatch.setattr(crops, "saliency_masks", centre_blob_masks)
    table = crop_catalog(fixture_catalog(tmp_path, fixtures), progress=False)
    crops_csv, failures_csv = write_crop_table(table, tmp_path)
    back = read_crop_table(crops_csv)
    pd.testing.assert_frame_equal(back, table, check_dtype=False)
    assert sorted(pd.read_csv(failures_csv)["image"]) == sorted(BROKEN)
    pd.DataFrame({"image": ["a.jpg"]}).to_csv(tmp_path / "other.csv", index=False)
    with pytest.raises(ValueError, match="not a crop table"):
        read_crop_table(tmp_path / "other.csv")


@pytest.mark.data
@pytest.mark.parametrize("folder", ["happywhale-sample", "dorsal-fins"])
def test_real_photos_boxes_lie_inside_and_most_are_ok(shared_data, folder, tmp_path):
    csv = shared_data / folder / "train.csv"
    cat = read_catalog(csv, progress=False)
    cat = cat.subset(np.arange(min(8, len(cat))))
    table = crop_catalog(cat, masks_dir=tmp_path, progress=False)
    assert len(table) == len(cat)
    assert (table["x0"] >= 0).all() and (table["y0"] >= 0).all()
    assert (table["x1"] <= table["width"]).all() and (table["y1"] <= table["height"]).all()
    assert (table["x0"] < table["x1"]).all() and (table["y0"] < table["y1"]).all()
    assert (table["status"] == STATUS_OK).mean() >= 0.75
    assert all((tmp_path / m).exists() for m in table["mask"] if m)
