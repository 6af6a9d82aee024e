"""Tests for whaleid.boxes: hand-computed, tiny files in tmp_path."""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from whaleid.boxes import (
    read_pixel_boxes,
    read_yolo_boxes,
    sample_box,
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


BOXES = {"body": (0, 0, 100, 100), "fin": (10, 10, 20, 20), "other": (5, 5, 50, 50)}


def _freqs(df, probs, n=4000, seed=0):
    rng = np.random.default_rng(seed)
    inv = {v: k for k, v in BOXES.items()}
    counts: dict[str, int] = {}
    for _ in range(n):
        b = sample_box(df, probs, rng)
        key = "full" if b is None else inv[b]
        counts[key] = counts.get(key, 0) + 1
    return {k: v / n for k, v in counts.items()}


PROBS = {"body": 0.60, "fin": 0.15, "other": 0.10, "full": 0.15}


def test_sample_box_frequencies_all_present():
    df = _df([["a.jpg", *b, s] for s, b in BOXES.items()])
    f = _freqs(df, PROBS)
    assert set(f) == set(PROBS)
    for s, p in PROBS.items():
        assert abs(f[s] - p) < 0.03, (s, f[s], p)


def test_sample_box_renormalises_missing_source():
    df = _df([["a.jpg", *BOXES[s], s] for s in ("body", "other")])  # no fin
    f = _freqs(df, PROBS, seed=1)
    assert "fin" not in f
    total = 0.60 + 0.10 + 0.15
    for s in ("body", "other", "full"):
        assert abs(f[s] - PROBS[s] / total) < 0.03, (s, f[s])


def test_sample_box_only_full_or_nothing():
    rng = np.random.default_rng(0)
    df = _df([["a.jpg", *BOXES["fin"], "fin"]])
    assert sample_box(df, {"body": 1.0}, rng) is None  # nothing usable -> full image
    assert sample_box(df, {"fin": 1.0, "full": 0.0}, rng) == BOXES["fin"]
    with pytest.raises(ValueError):
        sample_box(df, {"fin": -1.0}, rng)
