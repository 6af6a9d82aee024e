"""Crop table over a catalog: one row per listed photo, broken photos as errors, masks for review."""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import whaleid.preprocess.crops as crops
from conftest import BROKEN, centre_blob_masks
from whaleid.data.catalog import read_catalog
from whaleid.errors import UserError
from whaleid.files import safe_name
from whaleid.preprocess.crops import (
    CROP_COLUMNS,
    CropSettings,
    crop_catalog,
    failures,
    read_crop_table,
    write_crop_table,
)
from whaleid.preprocess.saliency import STATUS_NO_REGION, STATUS_OK


def fixture_catalog(tmp_path, fixtures, check=False):
    names = ["rgb.jpg", "gray.jpg", "rotated.jpg", *BROKEN]
    csv = tmp_path / "photos.csv"
    pd.DataFrame({"image": names, "species": "x", "individual_id": [f"id{i % 3}" for i in range(len(names))]}).to_csv(
        csv, index=False
    )
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
    monkeypatch.setattr(
        crops, "saliency_masks", lambda images, **_: [np.zeros(im.size[::-1], np.float32) for im in images]
    )
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


@pytest.mark.parametrize(
    "values, wrong",
    [
        ({"enlarge": -1}, "enlarge"),
        ({"enlarge": 0}, "enlarge"),
        ({"enlarge": float("nan")}, "enlarge"),
        ({"threshold": 1.5}, "threshold"),
        ({"threshold": -0.1}, "threshold"),
        ({"threshold": "0.5"}, "threshold"),
        ({"min_area": 2}, "min_area"),
        ({"max_area": -1}, "max_area"),
        ({"region": "biggest"}, "region"),
        ({"square": "yes"}, "square"),
        ({"clahe": 1}, "clahe"),
    ],
)
def test_crop_settings_are_checked_when_made(values, wrong):
    with pytest.raises(UserError, match=wrong):
        CropSettings(**values)


def test_extreme_but_valid_settings_still_give_boxes_with_area(tmp_path, fixtures, monkeypatch):
    monkeypatch.setattr(crops, "saliency_masks", centre_blob_masks)
    CropSettings(threshold=0, min_area=0, max_area=1)
    cat = fixture_catalog(tmp_path, fixtures, check=True)
    for enlarge in (1e-6, 0.01, 50.0):
        table = crop_catalog(cat, CropSettings(enlarge=enlarge), progress=False)
        table = table[~table["status"].str.startswith("error")]
        assert len(table) == 3
        assert ((table["x0"] < table["x1"]) & (table["y0"] < table["y1"])).all()
        assert ((table["x0"] >= 0) & (table["x1"] <= table["width"]) & (table["y1"] <= table["height"])).all()


def test_crop_settings_from_json(tmp_path):
    good = tmp_path / "crop_settings.json"
    good.write_text(json.dumps(CropSettings(threshold=0.3, square=True).to_dict()))
    assert CropSettings.from_json(good) == CropSettings(threshold=0.3, square=True)
    (tmp_path / "part.json").write_text('{"enlarge": 1.5}')
    assert CropSettings.from_json(tmp_path / "part.json") == CropSettings(enlarge=1.5)
    cases = {
        "bad.json": ("{threshold: 0.3", "not a JSON file"),
        "list.json": ("[0.3]", "crop settings must be a JSON object"),
        "unknown.json": ('{"treshold": 0.3}', "unknown crop keys.*treshold"),
        "range.json": ('{"enlarge": -1}', "crop setting enlarge must be > 0"),
        "binary.json": (b"\xff\xfe\x00junk", "not a JSON file"),
    }
    for name, (text, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        with pytest.raises(UserError, match=f"{name}: {message}"):
            CropSettings.from_json(path)
    with pytest.raises(UserError, match="cannot read"):
        CropSettings.from_json(tmp_path / "absent.json")


def test_masks_are_named_safely_and_recorded(tmp_path, fixtures, monkeypatch):
    """The mask column names the file written; names from the CSV never become paths."""
    monkeypatch.setattr(crops, "saliency_masks", centre_blob_masks)
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(fixtures / "images" / "rgb.jpg", images / "b.jpg")
    shutil.copy(fixtures / "images" / "palette.png", images / "b.png")
    cat = read_catalog(_csv(tmp_path, ["b.jpg", "b.png"]), images, progress=False)
    table = crop_catalog(cat, masks_dir=tmp_path / "out", progress=False).set_index("image")
    assert table.loc["b.jpg", "mask"] == f"masks/{safe_name('b.jpg', '.png')}"
    assert table.loc["b.jpg", "mask"] != table.loc["b.png", "mask"]  # b.jpg and b.png: two animals, two masks
    assert sorted(p.name for p in (tmp_path / "out" / "masks").iterdir()) == sorted(Path(m).name for m in table["mask"])


def _csv(folder, names):
    csv = folder / "photos.csv"
    pd.DataFrame({"image": names, "species": "x", "individual_id": "a"}).to_csv(csv, index=False)
    return csv
