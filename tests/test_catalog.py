"""Catalog reading, validation, species clean-up, label encoding, splits and summaries."""

from __future__ import annotations

import csv as csv_module
import functools
import io
import logging
import os
import shutil
import time

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import BROKEN
from whaleid.data.catalog import Catalog, read_catalog
from whaleid.data.checks import CatalogError
from whaleid.data.species import SPECIES_FIXES, UNKNOWN_SPECIES, clean_species
from whaleid.data.splits import holdout_photos, kfold, min_photos, open_set_split, split_fold
from whaleid.data.summary import format_summary, summary
from whaleid.errors import UserError

VALID = ["rgb.jpg", "rotated.jpg", "cmyk.jpg", "gray.jpg", "gray16.png", "alpha.png", "palette.png"]


def write_csv(path, text: str):
    path.write_text(text.strip() + "\n")
    return path


def fixture_csv(tmp_path, names):
    lines = ["image,species,individual_id"]
    lines += [f"{n},bottlenose_dolpin,id_{i % 3}" for i, n in enumerate(names)]
    return write_csv(tmp_path / "train.csv", "\n".join(lines))


def make_catalog(counts: dict[str, int], species: dict[str, str] | None = None) -> Catalog:
    """A catalog without photos: ``counts`` maps individual id to its number of photos."""
    rows = []
    for ind, n in counts.items():
        for j in range(n):
            rows.append({"image": f"{ind}_{j}.jpg", "species": (species or {}).get(ind, "x"), "individual_id": ind})
    return Catalog(table=pd.DataFrame(rows), images_dir="/nonexistent")


# Individuals with many, few and single photos, as in real catalogs.
COUNTS = {"a": 23, "b": 12, "c": 7, "d": 5, "e": 4, "f": 3, "g": 2, "h": 2}
COUNTS.update({f"s{i}": 1 for i in range(11)})


# --------------------------------------------------------------------------- reading


def test_broken_and_missing_photos_are_skipped_with_reasons(tmp_path, fixtures, caplog):
    """One bad photo must never stop a long job: it is listed with its reason and skipped."""
    csv = fixture_csv(tmp_path, VALID + list(BROKEN))
    with caplog.at_level(logging.WARNING, logger="whaleid.data.catalog"):
        cat = read_catalog(csv, fixtures / "images")
    assert sorted(cat.table["image"]) == sorted(VALID)
    assert dict(zip(cat.problems["image"], cat.problems["reason"])) == BROKEN
    assert list(cat.problems.columns) == ["image", "reason"]
    assert f"skipped {len(BROKEN)} of {len(VALID) + len(BROKEN)}" in caplog.text
    assert all(p.startswith(str(fixtures / "images")) for p in cat.table["path"])


def test_exists_mode_only_sees_missing_and_empty(tmp_path, fixtures):
    csv = fixture_csv(tmp_path, VALID + list(BROKEN))
    cat = read_catalog(csv, fixtures / "images", check_images="exists")
    assert set(cat.problems["image"]) == {"empty.jpg", "no_such_photo.jpg"}
    assert "truncated.jpg" in set(cat.table["image"])


def test_no_readable_photo_is_an_error_naming_the_folder(tmp_path, fixtures):
    """A catalog with nothing left is almost always a wrong images_dir; say so."""
    csv = fixture_csv(tmp_path, list(BROKEN))
    with pytest.raises(CatalogError, match="no readable photo") as err:
        read_catalog(csv, fixtures / "images")
    assert str(fixtures / "images") in str(err.value)


def test_images_dir_defaults_to_images_next_to_csv(tmp_path, fixtures):
    (tmp_path / "images").mkdir()
    shutil.copy(fixtures / "images" / "rgb.jpg", tmp_path / "images" / "rgb.jpg")
    cat = read_catalog(fixture_csv(tmp_path, ["rgb.jpg"]))
    assert cat.images_dir == (tmp_path / "images").absolute()
    assert cat.table["path"].tolist() == [str((tmp_path / "images" / "rgb.jpg").absolute())]


def test_missing_images_dir_is_an_error_unless_images_are_not_checked(tmp_path):
    """CSV-only work (species counts, split logic) must not need the photos."""
    csv = fixture_csv(tmp_path, ["x.jpg", "y.jpg"])
    with pytest.raises(CatalogError, match="images folder not found"):
        read_catalog(csv, tmp_path / "nowhere")
    cat = read_catalog(csv, tmp_path / "nowhere", check_images=False)
    assert len(cat) == 2 and len(cat.problems) == 0
    assert cat.table["path"].iloc[0] == str((tmp_path / "nowhere" / "x.jpg").absolute())


@pytest.mark.parametrize(
    "text,pattern",
    [
        ("image,species\na.jpg,beluga", r"missing required column\(s\) individual_id; found columns: image, species"),
        ("img,id\na.jpg,x", r"missing required column\(s\) image, species, individual_id; found columns: img, id"),
        ("image,species,individual_id", "header but no rows"),
        ("", "no header and no rows"),
        (
            "image,species,individual_id\na.jpg,x,1\nb.jpg,x,2\na.jpg,x,3\nc.jpg,x,1\nc.jpg,x,4",
            r"2 duplicate image name\(s\): a\.jpg \(lines 2, 4\); c\.jpg \(lines 5, 6\)",
        ),
        ("image,species,individual_id\na.jpg,x,1\n,x,2", r"empty image name on line\(s\) 3"),
        ("image,species,individual_id\na.jpg,x,1\nb.jpg,x,", r"empty individual_id on line\(s\) 3"),
        ('image,species,individual_id\na.jpg,x,1\n"b.jpg,x,2', "cannot parse"),
    ],
)
def test_bad_csv_raises_naming_the_culprit(tmp_path, text, pattern):
    csv = tmp_path / "train.csv"
    csv.write_text(text)
    with pytest.raises(CatalogError, match=pattern) as err:
        read_catalog(csv, check_images=False)
    assert str(csv) in str(err.value)


def test_missing_or_binary_csv_raises(tmp_path, fixtures):
    with pytest.raises(CatalogError, match="not found"):
        read_catalog(tmp_path / "absent.csv")
    with pytest.raises(CatalogError, match="cannot parse"):
        read_catalog(fixtures / "images" / "truncated.jpg", check_images=False)


def test_query_catalog_without_labels(tmp_path, fixtures):
    """Test sets list only photos: they must load, unlabelled (label -1, species unknown)."""
    csv = write_csv(tmp_path / "test.csv", "image\nrgb.jpg\ngray.jpg\nempty.jpg")
    with pytest.raises(CatalogError, match="individual_id"):
        read_catalog(csv, fixtures / "images")
    cat = read_catalog(csv, fixtures / "images", require_labels=False)
    assert cat.table["image"].tolist() == ["rgb.jpg", "gray.jpg"]
    assert cat.table["individual_id"].isna().all()
    assert (cat.table["species"] == UNKNOWN_SPECIES).all()
    assert (cat.table["label"] == -1).all()
    assert cat.labels == [] and not cat.has_labels
    assert cat.problems["reason"].tolist() == ["empty file"]


def test_partly_labelled_catalog(tmp_path):
    csv = write_csv(tmp_path / "t.csv", "image,species,individual_id\na.jpg, Beluga ,w1\nb.jpg,,")
    cat = read_catalog(csv, require_labels=False, check_images=False)
    assert cat.table["label"].tolist() == [0, -1]
    assert cat.table["species"].tolist() == ["beluga_whale", UNKNOWN_SPECIES]
    assert cat.labels == ["w1"]


# --------------------------------------------------------------------------- hostile CSVs


@pytest.mark.parametrize(
    "rows,pattern",
    [
        # one field too many on the first row: pandas took column 1 as the index and shifted the rest
        (["a.jpg,beluga,w1,extra", "b.jpg,beluga,w2"], r"line 2 has 4 fields, the header has 3"),
        (["a.jpg,beluga,w1", "b.jpg,beluga"], r"line 3 has 2 fields, the header has 3"),
        (
            ["a.jpg,x,1", "b,x,2,3", "c,x", "d,x,4,5,6", "e,x,5,", "f,x"],
            r"line 3 has 4 fields, line 4 has 2 fields, line 5 has 5 fields and 2 more lines, the header has 3",
        ),
    ],
)
def test_rows_with_another_field_count_name_their_lines(tmp_path, rows, pattern):
    csv = write_csv(tmp_path / "t.csv", "\n".join(["image,species,individual_id", *rows]))
    with pytest.raises(CatalogError, match=pattern) as err:
        read_catalog(csv, check_images=False)
    assert str(err.value).startswith(f"{csv}: ")


def test_line_numbers_count_blank_lines_and_quoted_line_breaks(tmp_path):
    text = 'image,species,individual_id\n"a\nb.jpg",x,1\n\nc.jpg,x,2\nc.jpg,x,3\n'
    (tmp_path / "t.csv").write_text(text)
    with pytest.raises(CatalogError, match=r"c\.jpg \(lines 5, 6\)"):
        read_catalog(tmp_path / "t.csv", check_images=False)


@pytest.mark.parametrize("marker", ["NaN", "None", "null", "N/A", "NA", "nan", "#N/A", " n/a ", "NULL"])
def test_missing_value_markers_are_missing(tmp_path, marker):
    """An id 'NaN' would make every unlabelled photo one animal named NaN."""
    csv = write_csv(tmp_path / "t.csv", f"image,species,individual_id\na.jpg,{marker},w1\nb.jpg,beluga,{marker}")
    with pytest.raises(CatalogError, match=r"empty individual_id on line\(s\) 3 \(.*missing-value marker"):
        read_catalog(csv, check_images=False)
    cat = read_catalog(csv, check_images=False, require_labels=False)
    assert cat.table["species"].tolist() == [UNKNOWN_SPECIES, "beluga_whale"]
    assert cat.table["individual_id"].tolist() == ["w1", None] and cat.labels == ["w1"]


def test_image_names_are_kept_exactly_as_written(tmp_path, fixtures):
    images = tmp_path / "images"
    images.mkdir()
    for name in (" rgb.jpg", "rgb.jpg ", "NaN"):
        shutil.copy(fixtures / "images" / "rgb.jpg", images / name)
    csv = write_csv(tmp_path / "t.csv", "image,species,individual_id\n rgb.jpg,x,1\nrgb.jpg ,x,1\nNaN,x,2")
    cat = read_catalog(csv)
    assert cat.table["image"].tolist() == [" rgb.jpg", "rgb.jpg ", "NaN"] and len(cat.problems) == 0
    blank = write_csv(tmp_path / "b.csv", "image,species,individual_id\na.jpg,x,1\n   ,x,2")
    with pytest.raises(CatalogError, match=r"empty image name on line\(s\) 3"):
        read_catalog(blank, check_images=False)


BAD_NAMES = {
    "cr\rname.jpg": "control character in file name",
    "lf\nname.jpg": "control character in file name",
    "nul\x00name.jpg": "control character in file name",
    "tab\tname.jpg": "control character in file name",
    "del\x7f.jpg": "control character in file name",
    "sep\u2028.jpg": "control character in file name",
    "x" * 300 + ".jpg": "file name too long",
    "sub/" + "é" * 130 + ".jpg": "file name too long",  # 260 bytes in UTF-8
}


@pytest.mark.parametrize("check", [True, "exists", False])
def test_names_no_file_system_takes_become_problems(tmp_path, fixtures, check):
    """A line break in a name split every CSV written later; NUL and long names raised tracebacks."""
    text = io.StringIO()
    writer = csv_module.writer(text)
    writer.writerow(["image", "species", "individual_id"])
    writer.writerows([[name, "x", "w"] for name in ["rgb.jpg", *BAD_NAMES]])
    (tmp_path / "t.csv").write_text(text.getvalue())
    cat = read_catalog(tmp_path / "t.csv", fixtures / "images", check_images=check)
    assert cat.table["image"].tolist() == ["rgb.jpg"]
    assert dict(zip(cat.problems["image"], cat.problems["reason"])) == BAD_NAMES


def test_csv_that_is_not_a_regular_file(tmp_path):
    os.symlink("/dev/null", tmp_path / "null.csv")
    os.mkfifo(tmp_path / "pipe.csv")  # reading it would block forever
    for name in ("null.csv", "pipe.csv"):
        with pytest.raises(CatalogError, match="not a regular file"):
            read_catalog(tmp_path / name, check_images=False)
    with pytest.raises(CatalogError, match="is a folder"):
        read_catalog(tmp_path, check_images=False)
    with pytest.raises(CatalogError, match="not found"):
        read_catalog(tmp_path / "dangling.csv", check_images=False)
    with pytest.raises(CatalogError, match="cannot read catalog CSV"):
        read_catalog(tmp_path / ("x" * 300 + ".csv"), check_images=False)


def test_unreadable_csv(tmp_path, monkeypatch):
    csv = write_csv(tmp_path / "t.csv", "image,species,individual_id\na.jpg,x,1")
    monkeypatch.setattr(type(csv), "read_bytes", lambda self: (_ for _ in ()).throw(PermissionError(13, "denied")))
    with pytest.raises(CatalogError, match=f"cannot read catalog CSV {csv}: permission denied"):
        read_catalog(csv, check_images=False)


@pytest.mark.parametrize(
    "data,pattern",
    [
        (bytes(range(256)) * 4, r"not UTF-8 text \(line 2"),
        ("image,species,individual_id\na.jpg,x,1\n".encode("utf-16"), "UTF-16 text"),
        (b"\x00\x01junk\x00,\x02\n\x00\x00", "binary data"),
        (b"\x89PNG\r\n\x1a\n" + bytes(64), "not UTF-8"),
        (b'image,species,individual_id\n"a.jpg,x,1\n', r"line 2: unexpected end of data"),
        (b"image,species,individual_id\n" + b"a" * 200_000 + b",x,1\n", r"line 2: field larger than field limit"),
    ],
)
def test_junk_csv_is_a_catalog_error(tmp_path, data, pattern):
    csv = tmp_path / "t.csv"
    csv.write_bytes(data)
    with pytest.raises(CatalogError, match=pattern) as err:
        read_catalog(csv, check_images=False)
    assert str(csv) in str(err.value) and "\n" not in str(err.value)


def test_utf8_bom_and_crlf_are_read(tmp_path):
    csv = tmp_path / "t.csv"
    csv.write_bytes("\ufeffimage,species,individual_id\r\nä.jpg,x,1\r\n".encode())
    assert read_catalog(csv, check_images=False).table["image"].tolist() == ["ä.jpg"]


# Names people and tools write: unicode, spaces, quotes, commas, control characters, markers.
NAMES = st.one_of(
    st.text(st.characters(blacklist_categories=("Cs",)), min_size=0, max_size=12),
    st.sampled_from(["NaN", "N/A", " a.jpg", "b.jpg ", 'q"uote.jpg', "com,ma.jpg", "cr\r.jpg", "nul\x00", "  "]),
)
IDS = st.one_of(st.text(min_size=0, max_size=6), st.sampled_from(["NaN", "none", "#N/A", " w1 ", ""]))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(NAMES, IDS, IDS), min_size=1, max_size=8), require=st.booleans())
def test_any_table_written_by_the_csv_module_reads_back_or_says_why(tmp_path, rows, require):
    text = io.StringIO()
    writer = csv_module.writer(text)
    writer.writerow(["image", "species", "individual_id"])
    writer.writerows(rows)
    csv = tmp_path / "t.csv"
    csv.write_text(text.getvalue(), encoding="utf-8", newline="")
    try:
        cat = read_catalog(csv, check_images=False, require_labels=require)
    except CatalogError as err:
        message = str(err)
        assert str(csv) in message and "\n" not in message and "\r" not in message
        return
    names = [r[0] for r in rows]
    kept, skipped = cat.table["image"].tolist(), cat.problems["image"].tolist()
    assert sorted(kept + skipped) == sorted(names)  # every name exactly as written, kept or a problem
    assert all(n.strip() for n in kept) and len(set(names)) == len(names)
    assert set(cat.problems["reason"]) <= {"control character in file name", "file name too long"}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=st.one_of(
        st.binary(max_size=200),
        st.lists(st.text(st.sampled_from('ab,"\r\n \x00é'), max_size=12), max_size=6).map(
            lambda lines: ("image,species,individual_id\n" + "\n".join(lines)).encode()
        ),
    )
)
def test_any_bytes_give_a_catalog_or_a_catalog_error(tmp_path, data):
    csv = tmp_path / "t.csv"
    csv.write_bytes(data)
    try:
        read_catalog(csv, check_images=False, require_labels=False)
    except CatalogError as err:
        assert str(csv) in str(err) and "\n" not in str(err)


# --------------------------------------------------------------------------- species


def test_species_cleanup_on_real_spellings():
    raw = pd.Series(
        [
            "bottlenose_dolpin",
            "kiler_whale",
            "beluga",
            "globis",
            "pilot_whale",
            " Humpback Whale ",
            "short-finned pilot whale",
            "long_finned_pilot_whale",
            None,
            "  ",
        ],
        name="species",
    )
    out = clean_species(raw)
    assert out.tolist()[:8] == [
        "bottlenose_dolphin",
        "killer_whale",
        "beluga_whale",
        "short_finned_pilot_whale",
        "short_finned_pilot_whale",
        "humpback_whale",
        "short_finned_pilot_whale",
        "long_finned_pilot_whale",
    ]
    assert out.iloc[8:].isna().all()
    assert out.name == "species"


def test_custom_fixes_replace_the_defaults(tmp_path):
    out = clean_species(pd.Series(["beluga", "orca"]), {"Orca": "killer_whale"})
    assert out.tolist() == ["beluga", "killer_whale"]
    csv = write_csv(tmp_path / "t.csv", "image,species,individual_id\na.jpg,kiler_whale,1")
    assert read_catalog(csv, check_images=False, clean=False).table["species"].tolist() == ["kiler_whale"]
    assert read_catalog(csv, check_images=False).table["species"].tolist() == ["killer_whale"]


# --------------------------------------------------------------------------- labels


def test_labels_are_sorted_codes_and_round_trip(tmp_path):
    csv = write_csv(
        tmp_path / "t.csv", "image,species,individual_id\na.jpg,x,zed\nb.jpg,x,007\nc.jpg,x,zed\nd.jpg,x,abc"
    )
    cat = read_catalog(csv, check_images=False)
    assert cat.labels == ["007", "abc", "zed"]  # ids stay strings: "007" is not 7
    assert cat.table["label"].tolist() == [2, 0, 2, 1]
    assert cat.table["label"].dtype == np.int64
    assert [cat.labels[i] for i in cat.table["label"]] == cat.table["individual_id"].tolist()
    assert cat.decode(cat.encode(["abc", "zed", "007"])) == ["abc", "zed", "007"]
    assert cat.encode(["stranger", None]).tolist() == [-1, -1]
    assert cat.decode([-1]) == [None]
    with pytest.raises(IndexError):
        cat.decode([3])


def test_subset_keeps_labels_relabel_makes_them_contiguous():
    """Evaluation compares labels with the parent; training a subset needs 0..n-1."""
    cat = make_catalog({"a": 2, "b": 2, "c": 2})
    sub = cat.subset(cat.table["individual_id"] != "b")
    assert sub.labels == ["a", "b", "c"] and sub.table["label"].tolist() == [0, 0, 2, 2]
    assert sub.table.index.tolist() == [0, 1, 2, 3]
    fresh = sub.relabel()
    assert fresh.labels == ["a", "c"] and fresh.table["label"].tolist() == [0, 0, 1, 1]
    assert cat.subset([5, 0]).table["image"].tolist() == ["c_1.jpg", "a_0.jpg"]
    with pytest.raises(ValueError):
        cat.subset(np.ones(3, dtype=bool))


# --------------------------------------------------------------------------- splits


@pytest.mark.parametrize("k", [2, 5])
def test_kfold_stratified_balanced_nothing_dropped(k):
    cat = make_catalog(COUNTS)
    folds = kfold(cat, k=k, seed=3)
    assert folds.shape == (len(cat),) and set(folds) == set(range(k))
    sizes = np.bincount(folds, minlength=k)
    assert sizes.max() - sizes.min() <= 1
    table = cat.table.assign(fold=folds)
    for ind, group in table.groupby("individual_id"):
        per_fold = np.bincount(group["fold"], minlength=k)
        assert per_fold.max() - per_fold.min() <= 1, ind  # spread evenly
        if len(group) >= k:
            assert (per_fold > 0).all(), ind
    singles = table[table["individual_id"].str.startswith("s")]["fold"]
    assert len(singles) == 11 and singles.nunique() > 1  # kept and spread, not dumped in one fold


def test_kfold_is_deterministic_and_independent_of_row_order():
    cat = make_catalog(COUNTS)
    folds = kfold(cat, 5, seed=1)
    assert (kfold(cat, 5, seed=1) == folds).all()
    assert (kfold(cat, 5, seed=2) != folds).any()
    shuffled = cat.subset(np.random.default_rng(0).permutation(len(cat)))
    by_image = dict(zip(shuffled.table["image"], kfold(shuffled, 5, seed=1)))
    assert [by_image[i] for i in cat.table["image"]] == folds.tolist()


def test_kfold_single_photo_individual_is_new_in_its_fold():
    """The documented meaning of a singleton: in its validation fold it has no match in training."""
    cat = make_catalog(COUNTS)
    folds = kfold(cat, 5)
    row = cat.table.index[cat.table["individual_id"] == "s0"][0]
    train, valid = split_fold(cat, folds, folds[row])
    assert "s0" in set(valid.table["individual_id"]) and "s0" not in set(train.table["individual_id"])
    assert len(train) + len(valid) == len(cat)


def test_kfold_refuses_what_it_cannot_do():
    with pytest.raises(ValueError):
        kfold(make_catalog({"a": 3}), k=1)
    with pytest.raises(ValueError):
        kfold(make_catalog({"a": 3}), k=4)
    unlabelled = Catalog(pd.DataFrame({"image": ["a.jpg"], "individual_id": [None]}), "/x")
    with pytest.raises(CatalogError, match="individual_id"):
        kfold(unlabelled, k=2)


def test_open_set_split_holds_out_whole_individuals():
    cat = make_catalog(COUNTS)
    known, new = open_set_split(cat, new_fraction=0.3, seed=0)
    k_ids, n_ids = set(known.table["individual_id"]), set(new.table["individual_id"])
    assert not k_ids & n_ids
    assert k_ids | n_ids == set(COUNTS)
    assert sorted(known.table["image"].tolist() + new.table["image"].tolist()) == sorted(cat.table["image"])
    assert len(n_ids) == round(0.3 * len(COUNTS))
    assert known.labels == cat.labels
    again, _ = open_set_split(cat, 0.3, seed=0)
    other, _ = open_set_split(cat, 0.3, seed=1)
    assert again.table["image"].tolist() == known.table["image"].tolist()
    assert other.table["image"].tolist() != known.table["image"].tolist()


def test_open_set_split_keeps_both_sides_non_empty():
    known, new = open_set_split(make_catalog({"a": 2, "b": 1}), new_fraction=0.01)
    assert known.n_individuals == 1 and new.n_individuals == 1


def test_holdout_photos_leaves_every_individual_known():
    """Held photos are 'known' queries only if their individual stays in the reference set."""
    cat = make_catalog(COUNTS)
    rest, held = holdout_photos(cat, fraction=0.25, seed=0)
    eligible = sum(n for n in COUNTS.values() if n >= 2)
    assert len(held) == round(0.25 * eligible)
    assert len(rest) + len(held) == len(cat)
    assert not set(rest.table["image"]) & set(held.table["image"])
    assert set(rest.table["individual_id"]) == set(COUNTS)
    assert set(held.table["individual_id"]) <= {k for k, n in COUNTS.items() if n >= 2}
    assert held.n_individuals > 2  # drawn across individuals, not all from one
    rest_hi, held_hi = holdout_photos(cat, fraction=0.99)
    assert set(rest_hi.table["individual_id"]) == set(COUNTS)
    assert len(held_hi) == eligible - sum(1 for n in COUNTS.values() if n >= 2)


def test_min_photos():
    cat = make_catalog(COUNTS)
    kept = min_photos(cat, 4)
    assert set(kept.table["individual_id"]) == {"a", "b", "c", "d", "e"}
    assert len(kept) == 23 + 12 + 7 + 5 + 4
    assert kept.labels == cat.labels
    assert len(min_photos(cat, 1)) == len(cat)


def test_splits_that_cannot_be_made_say_what_to_change():
    with pytest.raises(CatalogError, match="at least 2 individuals .*the catalog has 1"):
        open_set_split(make_catalog({"a": 5}), 0.3)
    for fraction in (0, 1, -0.2):
        with pytest.raises(UserError, match=f"new_fraction must be above 0 and below 1, got {fraction}"):
            open_set_split(make_catalog(COUNTS), fraction)
    with pytest.raises(UserError, match="at least 2 folds, got 1"):
        kfold(make_catalog(COUNTS), k=1)
    with pytest.raises(UserError, match="use at most 3 folds"):
        kfold(make_catalog({"a": 3}), k=4)
    with pytest.raises(UserError, match="above 0 and below 1, got 0"):
        holdout_photos(make_catalog(COUNTS), 0)


def test_min_photos_above_every_count_is_an_error():
    with pytest.raises(CatalogError, match=r"no individual has 24 or more photos \(the most any has is 23\)"):
        min_photos(make_catalog(COUNTS), 24)
    unlabelled = Catalog(pd.DataFrame({"image": ["a.jpg"], "individual_id": [None]}), "/x")
    with pytest.raises(CatalogError, match="no photo has an individual_id"):
        min_photos(unlabelled, 1)


def test_to_csv_is_atomic_and_round_trips(tmp_path, monkeypatch):
    cat = make_catalog({"a": 2, "b": 1})
    cat.table.loc[0, "image"] = ' spaced, and "quoted".jpg'
    out = tmp_path / "known.csv"
    cat.to_csv(out)
    again = read_catalog(out, check_images=False, clean=False)
    columns = ["image", "species", "individual_id"]
    assert again.table[columns].values.tolist() == cat.table[columns].values.tolist()
    before = out.read_bytes()

    def fail(*args, **kwargs):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(pd.DataFrame, "to_csv", fail)
    with pytest.raises(OSError):
        make_catalog({"z": 1}).to_csv(out)
    assert out.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["known.csv"]


# --------------------------------------------------------------------------- summary


def test_summary_numbers():
    counts = {"a": 12, "b": 10, "c": 3, "d": 1, "e": 1}
    cat = make_catalog(counts, species={"a": "beluga_whale", "b": "beluga_whale", "c": "blue_whale"})
    cat.problems = pd.DataFrame({"image": ["z.jpg", "y.jpg"], "reason": ["missing file", "missing file"]})
    s = summary(cat)
    assert s["photos"] == 27 and s["individuals"] == 5 and s["problems"] == 2
    assert s["species"] == {"beluga_whale": 22, "blue_whale": 3, "x": 2}
    assert s["photos_per_individual"] == {1: 2, 2: 0, 3: 1, 4: 0, 5: 0, 6: 0, 7: 0, 8: 0, 9: 0, "10+": 2}
    assert s["problem_reasons"] == {"missing file": 2}
    text = format_summary(s)
    assert "27" in text and "beluga_whale" in text and "10+" in text and "missing file" in text


# --------------------------------------------------------------------------- real data


@pytest.mark.data
def test_real_right_whale_heads(shared_data):
    start = time.perf_counter()
    cat = read_catalog(shared_data / "right-whale-heads" / "train.csv")
    elapsed = time.perf_counter() - start
    assert len(cat) == 2728 and cat.n_individuals == 277 and len(cat.problems) == 0
    s = summary(cat)
    assert s["species"] == {"north_atlantic_right_whale": 2728}
    assert s["photos_per_individual"][1] == 20
    assert elapsed < 15, f"checking 2,728 small JPEGs took {elapsed:.1f}s"


@pytest.mark.data
def test_real_happywhale_sample_cleanup_with_photos(shared_data):
    cat = read_catalog(shared_data / "happywhale-sample" / "train.csv")
    s = summary(cat)
    assert len(cat) == 100 and len(cat.problems) == 0
    assert s["species"]["bottlenose_dolphin"] == 20 and s["species"]["beluga_whale"] == 10
    assert "bottlenose_dolpin" not in s["species"] and "beluga" not in s["species"]


@functools.cache
def _read_once(csv: str) -> Catalog:
    return read_catalog(csv, check_images=False)


@pytest.fixture
def happywhale(shared_data):
    """The 51,033-row Happywhale CSV, read once: no photos, so images are not checked."""
    return _read_once(str(shared_data / "happywhale-train.csv"))


@pytest.mark.data
def test_real_happywhale_species_cleanup(happywhale):
    raw = pd.read_csv(happywhale.csv_path)["species"]
    assert set(SPECIES_FIXES) <= set(raw)  # the typos really are in the raw data
    s = summary(happywhale)
    assert s["photos"] == 51033 and s["individuals"] == 15587
    assert len(s["species"]) == 26 and len(set(raw)) == 30
    assert not set(SPECIES_FIXES) & set(s["species"])
    assert s["species"]["bottlenose_dolphin"] == 9664 + 1117
    assert s["species"]["short_finned_pilot_whale"] == 367 + 262 + 116
    assert s["photos_per_individual"][1] == 9258


@pytest.mark.data
def test_real_happywhale_splits_at_scale(happywhale):
    start = time.perf_counter()
    folds = kfold(happywhale, k=5, seed=0)
    assert time.perf_counter() - start < 5
    sizes = np.bincount(folds)
    assert sizes.max() - sizes.min() <= 1
    per = pd.crosstab(happywhale.table["individual_id"], folds)
    big = per[per.sum(axis=1) >= 5]
    assert (big > 0).all(axis=None) and ((per.max(axis=1) - per.min(axis=1)) <= 1).all()
    train, valid = split_fold(happywhale, folds, 0)
    new_share = (~valid.table["individual_id"].isin(set(train.table["individual_id"]))).mean()
    assert 0.1 < new_share < 0.3  # close to Happywhale's expected 15-17% new individuals
    known, new = open_set_split(happywhale, 0.3)
    assert not set(known.table["individual_id"]) & set(new.table["individual_id"])
    assert len(known) + len(new) == 51033
    rest, held = holdout_photos(happywhale, 0.2)
    assert rest.n_individuals == 15587


@pytest.mark.data
def test_real_happywhale_csv_reads_fast(shared_data):
    start = time.perf_counter()
    cat = read_catalog(shared_data / "happywhale-train.csv", check_images=False)
    assert len(cat) == 51033 and len(cat.problems) == 0
    assert time.perf_counter() - start < 3
