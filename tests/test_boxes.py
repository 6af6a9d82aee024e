"""Tests for whaleid.preprocess.boxes: hand-computed, tiny files in tmp_path."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from whaleid.errors import UserError
from whaleid.preprocess.boxes import (
    _yolo_to_pixels,
    read_boxes,
    read_pixel_boxes,
    read_yolo_boxes,
    source_weights,
    validate_boxes,
)
from whaleid.preprocess.saliency import enlarge_box


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
    with caplog.at_level(logging.WARNING, logger="whaleid.preprocess.boxes"):
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
    df = _df(
        [
            ["a.jpg", -5, 10, 250, 90, "body"],  # clipped in x
            ["a.jpg", 10, 10, 20, 20, "fin"],  # inside
            ["b.jpg", 0, 0, 60, 41, "body"],  # clipped in x and y
        ]
    )
    out = validate_boxes(df, {"a.jpg": (200, 100), "b.jpg": (50, 40)})
    assert out[["x0", "y0", "x1", "y1"]].values.tolist() == [[0, 10, 200, 90], [10, 10, 20, 20], [0, 0, 50, 40]]
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
    assert boxes[["image", "x0", "y0", "x1", "y1", "source"]].values.tolist() == [
        ["rotated.jpg", 5, 10, 15, 30, "yolo"]
    ]


@pytest.mark.parametrize(
    "content, where",
    [
        ("image,box\na.jpg,1 2 x 4\n", r"bad\.csv:2: box for 'a\.jpg' must be numbers"),
        ("image,box\na.jpg,1 2 3 4\nb.jpg,1 2 inf 4\n", r"bad\.csv:3: .*finite"),
        ("image,box\na.jpg,1 2 1e30 4\n", r"bad\.csv:2: .*finite"),
        ("image,x0,y0,x1,y1\na.jpg,5,5,1,9\n", r"bad\.csv:2: empty or inverted box"),
        ("image,box\n\na.jpg,0 0 0 4\n", r"bad\.csv:3: empty or inverted box"),  # the blank line counts
        ("image,box,source\na.jpg,1 2 3 4,../../escape\n", r"bad\.csv:2: box source '\.\./\.\./escape'"),
        ("image,box,source\na.jpg,1 2 3 4,fin/../x\n", r"bad\.csv:2: box source"),
        ("image,box\n,1 2 3 4\n", r"bad\.csv:2: no image name"),
        ("photo,box\na.jpg,1 2 3 4\n", r"bad\.csv: no image column"),
        ("image,size\na.jpg,1\n", r"bad\.csv: need a 'box' column"),
        ("", r"bad\.csv: empty pixel-box CSV"),
        ('image,box\n"a.jpg,1 2 3 4\n', r"cannot parse .*bad\.csv: line 2: unexpected end of data"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe\xfd", r"cannot parse .*bad\.csv: not UTF-8"),
    ],
)
def test_malformed_pixel_box_files_name_file_and_line(tmp_path, content, where):
    p = tmp_path / "bad.csv"
    p.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(UserError, match=where):
        read_pixel_boxes(p)


@pytest.mark.parametrize(
    "content, where",
    [
        ("image,cx,cy,w,h\na.jpg,0.5,half,0.1,0.1\n", r"y\.csv:2: cx cy w h must be numbers"),
        ("image,cx,cy,w,h\nnone.jpg,0.5,0.5,0.1,0.1\n", r"y\.csv:2: no photo 'none\.jpg'"),
        ("image,cx,cy,w,h\na.jpg,0.5,0.5,0,0.1\n", r"y\.csv:2: empty box"),
        ("image,cx,cy\na.jpg,0.5,0.5\n", r"y\.csv: missing columns"),
        ("image,cx,cy,w,h,source\na.jpg,0.5,0.5,0.1,0.1,..\n", r"y\.csv:2: box source '\.\.'"),
    ],
)
def test_malformed_yolo_csv_names_file_and_line(tmp_path, content, where):
    (tmp_path / "y.csv").write_text(content)
    with pytest.raises(UserError, match=where):
        read_yolo_boxes(tmp_path / "y.csv", {"a.jpg": (100, 100)})


def test_malformed_yolo_label_files(tmp_path):
    d = tmp_path / "labels"
    d.mkdir()
    (d / "a.txt").write_bytes(b"\xff\xfe\x00\x01")
    with pytest.raises(UserError, match=r"a\.txt: not a YOLO label file"):
        read_yolo_boxes(d, {"a.jpg": (100, 100)})
    (d / "a.txt").write_text("0 0.5 0.5 nan 0.1\n")
    with pytest.raises(UserError, match=r"a\.txt:1: cx cy w h must be finite"):
        read_yolo_boxes(d, {"a.jpg": (100, 100)})


def test_default_sources_from_file_names_are_made_valid(tmp_path):
    p = tmp_path / "detic body (v2).csv"
    p.write_text("image,box\na.jpg,1 2 3 4\n")
    assert read_pixel_boxes(p)["source"].tolist() == ["detic_body_v2"]
    with pytest.raises(UserError, match="box source"):
        validate_boxes(_df([["a.jpg", 0, 0, 5, 5, "../x"]]), {"a.jpg": (10, 10)})


def test_read_boxes_errors_name_the_file(tmp_path, fixtures):
    photos = {"rgb.jpg": fixtures / "images" / "rgb.jpg"}
    (tmp_path / "far.csv").write_text("image,box\nrgb.jpg,100 100 200 200\n")
    with pytest.raises(UserError, match=r"far\.csv: box for image 'rgb\.jpg' .* lies outside the 32x24 image"):
        read_boxes(tmp_path / "far.csv", photos)
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(UserError, match=r"empty\.csv: empty box CSV"):
        read_boxes(tmp_path / "empty.csv", photos)
    with pytest.raises(UserError, match="box CSV not found"):
        read_boxes(tmp_path / "absent.csv", photos)


SIDES = st.integers(1, 5000)
COORD = st.integers(-10_000, 10_000)


@settings(max_examples=300, deadline=None)
@given(SIDES, SIDES, COORD, COORD, COORD, COORD)
def test_clipped_boxes_are_inside_with_area_or_rejected(w, h, x0, y0, x1, y1):
    try:
        out = validate_boxes(_df([["a.jpg", x0, y0, x1, y1, "body"]]), {"a.jpg": (w, h)})
    except UserError:
        assert x0 >= x1 or y0 >= y1 or x1 <= 0 or y1 <= 0 or x0 >= w or y0 >= h  # nothing of it on the photo
        return
    bx0, by0, bx1, by1 = out[["x0", "y0", "x1", "y1"]].iloc[0]
    assert 0 <= bx0 < bx1 <= w and 0 <= by0 < by1 <= h
    assert (bx0, by0, bx1, by1) == (max(x0, 0), max(y0, 0), min(x1, w), min(y1, h))


UNIT = st.floats(0, 1)


@settings(max_examples=300, deadline=None)
@given(SIDES, SIDES, UNIT, UNIT, UNIT, UNIT)
def test_yolo_boxes_are_inside_with_area_or_rejected(w, h, cx, cy, bw, bh):
    try:
        x0, y0, x1, y1 = _yolo_to_pixels(cx, cy, bw, bh, w, h, "f:1")
    except UserError as e:
        assert str(e).startswith("f:1: empty box")
        return
    assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h


@settings(max_examples=300, deadline=None)
@given(SIDES, SIDES, st.data(), st.floats(1e-6, 50), st.booleans())
def test_enlarged_boxes_stay_inside_with_area(w, h, data, factor, square):
    """The crop settings allow any enlarge > 0; a box of a salient region stays a box (whaleid.preprocess.saliency)."""
    x0 = data.draw(st.integers(0, w - 1))
    y0 = data.draw(st.integers(0, h - 1))
    x1 = data.draw(st.integers(x0 + 1, w))
    y1 = data.draw(st.integers(y0 + 1, h))
    bx0, by0, bx1, by1 = enlarge_box((x0, y0, x1, y1), factor, w, h, square=square)
    assert 0 <= bx0 < bx1 <= w and 0 <= by0 < by1 <= h
    if factor >= 1:
        assert bx0 <= x0 and by0 <= y0 and bx1 >= x1 and by1 >= y1  # growing never loses the animal
