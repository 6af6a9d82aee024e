"""The resized cache: exact crops, idempotent re-runs, resumption, staleness, box sources."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import BROKEN, centre_blob_masks
from PIL import Image

import whaleid.cache as cache_module
import whaleid.crops as crops
from whaleid.cache import Cache, CacheSettings, build_cache, cache_key
from whaleid.catalog import read_catalog
from whaleid.crops import CropSettings, read_crop_table

GOOD = ["rgb.jpg", "gray.jpg", "rotated.jpg", "cmyk.jpg", "palette.png", "alpha.png"]


@pytest.fixture
def photos(tmp_path, fixtures, monkeypatch):
    """A catalog of real fixture photos (and the broken ones) in a folder the test may modify."""
    monkeypatch.setattr(crops, "saliency_masks", centre_blob_masks)
    images = tmp_path / "images"
    shutil.copytree(fixtures / "images", images)
    names = GOOD + [n for n in BROKEN]
    csv = tmp_path / "train.csv"
    pd.DataFrame({"image": names, "species": "x", "individual_id": [f"id{i % 3}" for i in range(len(names))]}).to_csv(csv, index=False)
    return read_catalog(csv, images, check_images=False, progress=False)


def files_of(cache):
    return {p: p.stat().st_mtime_ns for p in cache.dir.rglob("*.jpg")}


def test_saliency_crops_are_cut_and_resized_exactly(photos, tmp_path):
    cache = build_cache(photos, tmp_path / "cache", CacheSettings(sizes=(32, 64), saliency=CropSettings(enlarge=1.0)), progress=False)
    w, h = Image.open(photos.images_dir / "rgb.jpg").size
    box_w, box_h = 3 * w // 4 - w // 4, 3 * h // 4 - h // 4
    for size in (32, 64):
        cached = Image.open(cache.dir / str(size) / "saliency" / "rgb.jpg")
        assert max(cached.size) == min(size, max(box_w, box_h))
        assert cached.size[0] / cached.size[1] == pytest.approx(box_w / box_h, rel=0.1)
    assert cache.stats == {"photos": len(GOOD) + len(BROKEN), "new": len(GOOD) + len(BROKEN), "reused": 0, "errors": len(BROKEN)}
    table = read_crop_table(cache.dir / "crops.csv")
    assert sorted(pd.read_csv(cache.dir / "failures.csv")["image"]) == sorted(BROKEN)
    assert set(table.loc[table["status"] == "ok", "image"]) == set(GOOD)
    manifest = json.loads((cache.dir / "manifest.json").read_text())
    assert manifest["complete"] and manifest["settings"]["sizes"] == [64, 32] and manifest["sources"] == ["saliency"]


def test_second_run_is_idempotent(photos, tmp_path):
    settings = CacheSettings(sizes=(48,))
    first = build_cache(photos, tmp_path / "cache", settings, progress=False)
    before = files_of(first)
    second = build_cache(photos, tmp_path / "cache", settings, progress=False)
    assert second.dir == first.dir
    assert second.stats["new"] == 0 and second.stats["reused"] == len(GOOD) + len(BROKEN)
    assert files_of(second) == before  # nothing rewritten
    assert len(second.journal()) == len(first.journal())


def test_changed_settings_never_reuse_a_cache(photos, tmp_path):
    a = build_cache(photos, tmp_path / "cache", CacheSettings(sizes=(48,)), progress=False)
    b = build_cache(photos, tmp_path / "cache", CacheSettings(sizes=(48,), background="black"), progress=False)
    c = build_cache(photos, tmp_path / "cache", CacheSettings(sizes=(48,), saliency=CropSettings(threshold=0.3)), progress=False)
    assert len({a.dir, b.dir, c.dir}) == 3
    assert b.stats["reused"] == 0 and c.stats["reused"] == 0
    assert cache_key(CacheSettings(sizes=(48,)), photos.images_dir) == a.dir.name


def test_interrupted_run_resumes_where_it_stopped(photos, tmp_path, monkeypatch):
    real = cache_module._write_photo
    calls = {"n": 0}

    def dies_on_the_fourth(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(cache_module, "_write_photo", dies_on_the_fourth)
    settings = CacheSettings(sizes=(48,))
    with pytest.raises(KeyboardInterrupt):
        build_cache(photos, tmp_path / "cache", settings, batch_size=2, workers=1, progress=False)
    directory = tmp_path / "cache" / cache_key(settings, photos.images_dir)
    assert not json.loads((directory / "manifest.json").read_text())["complete"]
    finished = set(pd.read_csv(directory / "journal.csv")["image"])
    assert 0 < len(finished) < len(GOOD)
    with (directory / "journal.csv").open("a") as f:
        f.write("half-written,row")  # a crash mid-line must not poison the journal
    monkeypatch.setattr(cache_module, "_write_photo", real)
    cache = build_cache(photos, tmp_path / "cache", settings, progress=False)
    assert cache.stats["reused"] == len(finished)
    assert cache.stats["new"] == len(GOOD) + len(BROKEN) - len(finished)
    assert set(cache.journal()["image"]) == set(GOOD) | set(BROKEN)
    assert len(cache.journal()) == len(GOOD) + len(BROKEN)  # no duplicate rows


def test_a_changed_or_deleted_photo_is_redone(photos, tmp_path):
    settings = CacheSettings(sizes=(48,))
    first = build_cache(photos, tmp_path / "cache", settings, progress=False)
    Image.open(photos.images_dir / "rgb.jpg").rotate(90, expand=True).save(photos.images_dir / "rgb.jpg")
    (first.dir / "48" / "saliency" / "gray.jpg").unlink()
    again = build_cache(photos, tmp_path / "cache", settings, progress=False)
    assert again.stats["new"] == 2
    w, h = Image.open(photos.images_dir / "rgb.jpg").size
    row = again.crop_table().set_index("image").loc["rgb.jpg"]
    assert (row.width, row.height) == (w, h)


def test_background_removal_blackens_outside_the_mask(photos, tmp_path):
    settings = CacheSettings(sizes=(64,), crop="none", background="black", feather=0.0)
    cache = build_cache(photos, tmp_path / "cache", settings, progress=False)
    assert cache.sources == ["full"]
    out = np.asarray(Image.open(cache.dir / "64" / "full" / "rgb.jpg").convert("RGB"), dtype=float)
    h, w = out.shape[:2]
    assert out[: h // 8].max() < 20 and out[:, : w // 8].max() < 20  # corners: background
    assert out[3 * h // 8 : 5 * h // 8, 3 * w // 8 : 5 * w // 8].mean() > 20  # centre: the photo


def test_catalog_points_at_cached_files_and_errors_join_problems(photos, tmp_path):
    cache = build_cache(photos, tmp_path / "cache", CacheSettings(sizes=(32, 96)), progress=False)
    cached = cache.catalog(photos, img_size=64)
    assert len(cached) == len(GOOD)
    assert all(p.startswith(str(cache.dir / "96" / "saliency")) for p in cached.paths)
    assert set(cached.problems["image"]) == set(BROKEN)
    assert cached.table["label"].tolist() == photos.table.set_index("image").loc[cached.table["image"], "label"].tolist()
    assert cache.size_for(20) == 32 and cache.size_for(200) == 96
    with pytest.raises(FileNotFoundError):
        Cache(tmp_path)


def test_box_sources_and_sampling_weights(photos, tmp_path):
    boxes = pd.DataFrame(
        [["rgb.jpg", 0, 0, 10, 20, "fin"], ["rgb.jpg", 0, 0, 30, 30, "body"], ["rgb.jpg", 0, 0, 4, 4, "fin"],
         ["gray.jpg", 5, 5, 25, 15, "body"]],
        columns=["image", "x0", "y0", "x1", "y1", "source"],
    )
    with pytest.raises(ValueError, match="boxes"):
        build_cache(photos, tmp_path / "cache", CacheSettings(crop="boxes"), progress=False)
    cache = build_cache(photos, tmp_path / "cache", CacheSettings(sizes=(64,), crop="boxes"), boxes=boxes, progress=False)
    assert cache.sources == ["body", "fin", "full"]
    assert Image.open(cache.dir / "64" / "fin" / "rgb.jpg").size == (10, 20)  # the larger fin box; never upscaled
    assert Image.open(cache.dir / "64" / "body" / "gray.jpg").size == (20, 10)
    cached = cache.catalog(photos, source="fin", probabilities={"body": 0.6, "fin": 0.15, "full": 0.25})
    by_image = cached.table.set_index("image")
    assert by_image.loc["rgb.jpg", "path"].endswith("64/fin/rgb.jpg")
    assert by_image.loc["gray.jpg", "path"].endswith("64/full/gray.jpg")  # no fin box: the full photo
    weights = {p.split("/")[-2]: w for p, w in by_image.loc["gray.jpg", "alternatives"]}
    assert weights == pytest.approx({"body": 0.6 / 0.85, "full": 0.25 / 0.85})
    weights = {p.split("/")[-2]: w for p, w in by_image.loc["rgb.jpg", "alternatives"]}
    assert weights == pytest.approx({"body": 0.6, "fin": 0.15, "full": 0.25})


@pytest.mark.data
def test_real_saliency_cache_on_dorsal_fins(shared_data, tmp_path, monkeypatch):
    monkeypatch.undo()  # the real model
    cat = read_catalog(shared_data / "dorsal-fins" / "train.csv", progress=False)
    cache = build_cache(cat, tmp_path / "cache", CacheSettings(sizes=(128,), background="blur"), progress=False)
    assert cache.stats["new"] == len(cat) and cache.stats["errors"] == 0
    for path in cache.catalog(cat).paths:
        assert max(Image.open(path).size) <= 128
