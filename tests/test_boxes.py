"""Tests for whaleid.boxes: hand-computed, tiny files in tmp_path."""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from whaleid.boxes import (
    read_boxes,
    read_pixel_boxes,
    read_yolo_boxes,
    source_weights,
    validate_boxes,
)


def test_pixel_csv_string_column(tmp_path):
    p = tmp_path / "detic_body.csv"
    p.write_text("image,box\na.jpg,10 20 110 220\nb.jpg,0 5 30 40\n")
    df = read_pixel_boxes(p)
    assert list(df.columns) == ["image", "x0", "y0", "x1", "y1", "source"]
    assert df.values.tolist() == [
        ["a.jpg", 10, 20, 110, 220, "detic_body"],
        ["b.jpg", 0, 5, 30, 40, "detic_body"],
    ]
    assert df["x0"].dtype == np.int64


def test_pixel_csv_separate_columns_and_source(tmp_path):
    p = tmp_path / "crops.csv"
    p.write_text("img,x0,y0,x1,y1,source\na.jpg,1,2,3,4,fin\nb.jpg,5,6,7,8,\n")
    df = read_pixel_boxes(p, image_col="img")
    assert df.values.tolist() == [
        ["a.jpg", 1, 2, 3, 4, "fin"],
        ["b.jpg", 5, 6, 7, 8, "crops"],
    ]


def test_pixel_csv_empty_boxes_skipped_and_reported(tmp_path, caplog):
    p = tmp_path / "body.csv"
    p.write_text('image,box\na.jpg,1 2 3 4\nb.jpg,\nc.jpg,"  "\nd.jpg,5 6 7 8\n')
    with caplog.at_level(logging.WARNING, logger="whaleid.boxes"):
        df = read_pixel_boxes(p)
    assert df["image"].tolist() == ["a.jpg", "d.jpg"]
    assert df.attrs["skipped"]["image"].tolist() == ["b.jpg", "c.jpg"]
    assert "skipped 2 row(s)" in caplog.text


def test_pixel_csv_bad_box_names_image(tmp_path):
    p = tmp_path / "body.csv"
    p.write_text("image,box\na.jpg,1 2 3\n")
    with pytest.raises(ValueError, match="a.jpg"):
        read_pixel_boxes(p)


def test_yolo_folder_hand_computed(tmp_path):
    d = tmp_path / "yolo_fin"
    d.mkdir()
    # 200x100 image: x 0.25..0.75 -> 50..150; y 0.375..0.625 -> 37.5..62.5
    # low edge floored, high edge ceiled -> (50, 37, 150, 63)
    (d / "a.txt").write_text("0 0.5 0.5 0.5 0.25\n")
    # box running past the right/bottom border is clipped: x 0.9..1.1, y 0.8..1.0
    (d / "b.txt").write_text("0 1.0 0.9 0.2 0.2\n\n")
    sizes = {"a.jpg": (200, 100), "b.jpg": (50, 40)}
    df = read_yolo_boxes(d, sizes)
    assert df.values.tolist() == [
        ["a.jpg", 50, 37, 150, 63, "yolo_fin"],
        ["b.jpg", 45, 32, 50, 40, "yolo_fin"],
    ]


def test_yolo_csv_form(tmp_path):
    p = tmp_path / "yolo.csv"
    p.write_text("image,cx,cy,w,h\na.jpg,0.5,0.5,0.5,0.25\n")
    df = read_yolo_boxes(p, {"a.jpg": (200, 100)}, source="body")
    assert df.values.tolist() == [["a.jpg", 50, 37, 150, 63, "body"]]


def test_yolo_float_noise_does_not_grow_box(tmp_path):
    p = tmp_path / "yolo.csv"
    # 0.3*100 = 30.000000000000004 in floats; must not ceil to 31
    p.write_text("image,cx,cy,w,h\na.jpg,0.2,0.2,0.2,0.2\n")
    df = read_yolo_boxes(p, {"a.jpg": (100, 100)})
    assert df[["x0", "y0", "x1", "y1"]].values.tolist() == [[10, 10, 30, 30]]


def test_yolo_out_of_range_names_file_and_line(tmp_path):
    d = tmp_path / "labels"
    d.mkdir()
    (d / "a.txt").write_text("0 0.5 0.5 0.1 0.1\n0 120 40 30 20\n")
    with pytest.raises(ValueError, match=r"a\.txt:2"):
        read_yolo_boxes(d, {"a.jpg": (200, 100)})


def test_yolo_small_tolerance_accepted(tmp_path):
    p = tmp_path / "y.csv"
    p.write_text("image,cx,cy,w,h\na.jpg,0.5,0.5,1.0005,1.0\n")
    df = read_yolo_boxes(p, {"a.jpg": (200, 100)})
    assert df[["x0", "y0", "x1", "y1"]].values.tolist() == [[0, 0, 200, 100]]


def _df(rows):
    return pd.DataFrame(rows, columns=["image", "x0", "y0", "x1", "y1", "source"])


def test_validate_clips_and_counts():
    df = _df([
        ["a.jpg", -5, 10, 250, 90, "body"],   # clipped in x
        ["a.jpg", 10, 10, 20, 20, "fin"],     # inside
        ["b.jpg", 0, 0, 60, 41, "body"],      # clipped in x and y
    ])
    out = validate_boxes(df, {"a.jpg": (200, 100), "b.jpg": (50, 40)})
    assert out[["x0", "y0", "x1", "y1"]].values.tolist() == [
        [0, 10, 200, 90], [10, 10, 20, 20], [0, 0, 50, 40]
    ]
    assert out.attrs["n_clipped"] == 2
    assert df.loc[0, "x0"] == -5  # input untouched


@pytest.mark.parametrize("box", [(10, 10, 10, 20), (30, 10, 20, 20), (10, 20, 30, 5)])
def test_validate_degenerate_names_image(box):
    df = _df([["ok.jpg", 0, 0, 5, 5, "b"], ["bad.jpg", *box, "b"]])
    with pytest.raises(ValueError, match="bad.jpg"):
        validate_boxes(df, {"ok.jpg": (100, 100), "bad.jpg": (100, 100)})


def test_validate_box_outside_image_names_image():
    df = _df([["far.jpg", 300, 10, 400, 20, "b"]])
    with pytest.raises(ValueError, match="far.jpg"):
        validate_boxes(df, {"far.jpg": (200, 100)})


PROBS = {"body": 0.60, "fin": 0.15, "other": 0.10, "full": 0.15}


def test_source_weights_all_present_are_the_probabilities():
    assert source_weights({"body", "fin", "other"}, PROBS) == pytest.approx(PROBS)


def test_source_weights_renormalise_a_missing_source():
    total = 0.60 + 0.10 + 0.15
    w = source_weights(["body", "other"], PROBS)  # no fin box for this photo
    assert w == pytest.approx({"body": 0.60 / total, "other": 0.10 / total, "full": 0.15 / total})


def test_source_weights_fall_back_to_the_full_photo():
    assert source_weights({"fin"}, {"body": 1.0}) == {"full": 1.0}  # nothing usable
    assert source_weights({"fin"}, {"fin": 1.0, "full": 0.0}) == {"fin": 1.0}
    assert source_weights(set(), {"full": 2.0, "fin": 1.0}) == {"full": 1.0}
    with pytest.raises(ValueError):
        source_weights({"fin"}, {"fin": -1.0})


def test_read_boxes_pixel_csv_clips_and_drops_other_photos(tmp_path, fixtures):
    photos = {n: fixtures / "images" / n for n in ("rgb.jpg", "rotated.jpg", "truncated.jpg")}
    (tmp_path / "boxes.csv").write_text(
        "image,box,source\nrgb.jpg,2 3 40 20,body\nrotated.jpg,0 0 20 40,fin\nelsewhere.jpg,0 0 5 5,body\n"
    )
    boxes = read_boxes(tmp_path / "boxes.csv", photos)
    # rgb.jpg is 32x24: x1 clipped to 32; rotated.jpg is stored 40x20 but upright 20x40, so its box fits
    assert boxes[["image", "x0", "y0", "x1", "y1", "source"]].values.tolist() == [
        ["rgb.jpg", 2, 3, 32, 20, "body"],
        ["rotated.jpg", 0, 0, 20, 40, "fin"],
    ]


def test_read_boxes_yolo_uses_upright_sizes(tmp_path, fixtures):
    photos = {n: fixtures / "images" / n for n in ("rgb.jpg", "rotated.jpg")}
    (tmp_path / "yolo").mkdir()
    (tmp_path / "yolo" / "rotated.txt").write_text("0 0.5 0.5 0.5 0.5\n")  # upright 20x40 -> 5..15, 10..30
    boxes = read_boxes(tmp_path / "yolo", photos)
    assert boxes[["image", "x0", "y0", "x1", "y1", "source"]].values.tolist() == [["rotated.jpg", 5, 10, 15, 30, "yolo"]]
