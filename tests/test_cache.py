"""The resized cache: exact crops, idempotent re-runs, resumption, staleness, box sources."""

import errno
import json
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from filelock import FileLock
from PIL import Image

import whaleid.preprocess.cache_writer as writer_module
import whaleid.preprocess.crops as crops
from conftest import BROKEN, centre_blob_masks
from test_files import tmpfs
from whaleid.data.catalog import read_catalog
from whaleid.data.images import check_image
from whaleid.errors import UserError
from whaleid.preprocess.cache import Cache, CacheSettings, cache_key
from whaleid.preprocess.cache_writer import build_cache
from whaleid.preprocess.crops import CropSettings, read_crop_table

GOOD = ["rgb.jpg", "gray.jpg", "rotated.jpg", "cmyk.jpg", "palette.png", "alpha.png"]


@pytest.fixture
def photos(tmp_path, fixtures, monkeypatch):
    """A catalog of real fixture photos (and the broken ones) in a folder the test may modify."""
    monkeypatch.setattr(crops, "saliency_masks", centre_blob_masks)
    images = tmp_path / "images"
    shutil.copytree(fixtures / "images", images)
    names = GOOD + [n for n in BROKEN]
    csv = tmp_path / "train.csv"
    pd.DataFrame({"image": names, "species": "x", "individual_id": [f"id{i % 3}" for i in range(len(names))]}).to_csv(
        csv, index=False
    )
    return read_catalog(csv, images, check_images=False, progress=False)


def files_of(cache):
    return {p: p.stat().st_mtime_ns for p in cache.dir.rglob("*.jpg")}


def cached(cache, size, source, image):
    """The cached file of ``image``, as the journal records it."""
    journal = cache.journal().set_index(["image", "source"])
    return cache.dir / str(size) / source / journal.loc[(image, source), "file"]


def test_saliency_crops_are_cut_and_resized_exactly(photos, tmp_path):
    cache = build_cache(
        photos, tmp_path / "cache", CacheSettings(sizes=(32, 64), saliency=CropSettings(enlarge=1.0)), progress=False
    )
    w, h = Image.open(photos.images_dir / "rgb.jpg").size
    box_w, box_h = 3 * w // 4 - w // 4, 3 * h // 4 - h // 4
    for size in (32, 64):
        crop = Image.open(cached(cache, size, "saliency", "rgb.jpg"))
        assert max(crop.size) == min(size, max(box_w, box_h))
        assert crop.size[0] / crop.size[1] == pytest.approx(box_w / box_h, rel=0.1)
    assert cache.stats == {
        "photos": len(GOOD) + len(BROKEN),
        "new": len(GOOD) + len(BROKEN),
        "reused": 0,
        "errors": len(BROKEN),
    }
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
    c = build_cache(
        photos, tmp_path / "cache", CacheSettings(sizes=(48,), saliency=CropSettings(threshold=0.3)), progress=False
    )
    assert len({a.dir, b.dir, c.dir}) == 3
    assert b.stats["reused"] == 0 and c.stats["reused"] == 0
    assert cache_key(CacheSettings(sizes=(48,)), photos.images_dir) == a.dir.name


def test_interrupted_run_resumes_where_it_stopped(photos, tmp_path, monkeypatch):
    real = writer_module._write_photo
    calls = {"n": 0}

    def dies_on_the_fourth(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(writer_module, "_write_photo", dies_on_the_fourth)
    settings = CacheSettings(sizes=(48,))
    with pytest.raises(KeyboardInterrupt):
        build_cache(photos, tmp_path / "cache", settings, batch_size=2, workers=1, progress=False)
    directory = tmp_path / "cache" / cache_key(settings, photos.images_dir)
    assert not json.loads((directory / "manifest.json").read_text())["complete"]
    finished = set(pd.read_csv(directory / "journal.csv")["image"])
    assert 0 < len(finished) < len(GOOD)
    with (directory / "journal.csv").open("a") as f:
        f.write("half-written,row")  # a crash mid-line must not poison the journal
    monkeypatch.setattr(writer_module, "_write_photo", real)
    cache = build_cache(photos, tmp_path / "cache", settings, progress=False)
    assert cache.stats["reused"] == len(finished)
    assert cache.stats["new"] == len(GOOD) + len(BROKEN) - len(finished)
    assert set(cache.journal()["image"]) == set(GOOD) | set(BROKEN)
    assert len(cache.journal()) == len(GOOD) + len(BROKEN)  # no duplicate rows


def test_a_changed_or_deleted_photo_is_redone(photos, tmp_path):
    settings = CacheSettings(sizes=(48,))
    first = build_cache(photos, tmp_path / "cache", settings, progress=False)
    Image.open(photos.images_dir / "rgb.jpg").rotate(90, expand=True).save(photos.images_dir / "rgb.jpg")
    cached(first, 48, "saliency", "gray.jpg").unlink()
    again = build_cache(photos, tmp_path / "cache", settings, progress=False)
    assert again.stats["new"] == 2
    w, h = Image.open(photos.images_dir / "rgb.jpg").size
    row = again.crop_table().set_index("image").loc["rgb.jpg"]
    assert (row.width, row.height) == (w, h)


def test_background_removal_blackens_outside_the_mask(photos, tmp_path):
    settings = CacheSettings(sizes=(64,), crop="none", background="black", feather=0.0)
    cache = build_cache(photos, tmp_path / "cache", settings, progress=False)
    assert cache.sources == ["full"]
    out = np.asarray(Image.open(cached(cache, 64, "full", "rgb.jpg")).convert("RGB"), dtype=float)
    h, w = out.shape[:2]
    assert out[: h // 8].max() < 20 and out[:, : w // 8].max() < 20  # corners: background
    assert out[3 * h // 8 : 5 * h // 8, 3 * w // 8 : 5 * w // 8].mean() > 20  # centre: the photo


def test_catalog_points_at_cached_files_and_errors_join_problems(photos, tmp_path):
    cache = build_cache(photos, tmp_path / "cache", CacheSettings(sizes=(32, 96)), progress=False)
    cached = cache.catalog(photos, img_size=64)
    assert len(cached) == len(GOOD)
    assert all(p.startswith(str(cache.dir / "96" / "saliency")) for p in cached.paths)
    assert set(cached.problems["image"]) == set(BROKEN)
    assert (
        cached.table["label"].tolist() == photos.table.set_index("image").loc[cached.table["image"], "label"].tolist()
    )
    assert cache.size_for(20) == 32 and cache.size_for(200) == 96
    with pytest.raises(FileNotFoundError):
        Cache(tmp_path)


def test_box_sources_and_sampling_weights(photos, tmp_path):
    boxes = pd.DataFrame(
        [
            ["rgb.jpg", 0, 0, 10, 20, "fin"],
            ["rgb.jpg", 0, 0, 30, 30, "body"],
            ["rgb.jpg", 0, 0, 4, 4, "fin"],
            ["gray.jpg", 5, 5, 25, 15, "body"],
        ],
        columns=["image", "x0", "y0", "x1", "y1", "source"],
    )
    with pytest.raises(ValueError, match="boxes"):
        build_cache(photos, tmp_path / "cache", CacheSettings(crop="boxes"), progress=False)
    cache = build_cache(
        photos, tmp_path / "cache", CacheSettings(sizes=(64,), crop="boxes"), boxes=boxes, progress=False
    )
    assert cache.sources == ["body", "fin", "full"]
    assert Image.open(cached(cache, 64, "fin", "rgb.jpg")).size == (10, 20)  # the larger fin box; never upscaled
    assert Image.open(cached(cache, 64, "body", "gray.jpg")).size == (20, 10)
    catalog = cache.catalog(photos, source="fin", probabilities={"body": 0.6, "fin": 0.15, "full": 0.25})
    by_image = catalog.table.set_index("image")
    assert by_image.loc["rgb.jpg", "path"] == str(cached(cache, 64, "fin", "rgb.jpg"))
    assert by_image.loc["gray.jpg", "path"] == str(cached(cache, 64, "full", "gray.jpg"))  # no fin box: the full photo
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


def snapshot(folder, skip):
    """Every file under ``folder`` (but ``skip``) with its bytes and mtime."""
    return {
        p: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file() and skip not in p.parents
    }


@pytest.fixture
def hostile(tmp_path, fixtures, monkeypatch):
    """A catalog naming photos outside its folder (absolute, ``../``), a 244-byte name, and b.jpg next to b.png.

    The ``../`` name climbs as many folders from the photos as a cached crop lies below
    ``tmp_path``: a crop named after it would land on the victim photo itself.
    """
    monkeypatch.setattr(crops, "saliency_masks", centre_blob_masks)
    victim = tmp_path / "victim"
    victim.mkdir()
    shutil.copy(fixtures / "images" / "rgb.jpg", victim / "photo.jpg")
    shutil.copy(fixtures / "images" / "palette.png", victim / "abs.png")
    images = tmp_path / "data" / "a" / "b" / "c" / "images"
    images.mkdir(parents=True)
    long_name = "L" * 240 + ".jpg"
    shutil.copy(fixtures / "images" / "cmyk.jpg", images / long_name)
    shutil.copy(fixtures / "images" / "rgb.jpg", images / "b.jpg")
    shutil.copy(fixtures / "images" / "palette.png", images / "b.png")
    names = [str(victim / "abs.png"), "../../../../../victim/photo.jpg", long_name, "b.jpg", "b.png"]
    csv = tmp_path / "data" / "train.csv"
    ids = ["v", "v", "l", "b1", "b2"]
    pd.DataFrame({"image": names, "species": "x", "individual_id": ids}).to_csv(csv, index=False)
    return read_catalog(csv, images, progress=False), tmp_path / "out"


def test_hostile_image_names_write_nothing_outside_the_output_folder(hostile, tmp_path):
    catalog, out = hostile
    before = snapshot(tmp_path, out)
    table = crops.crop_catalog(catalog, masks_dir=out / "crops", progress=False)
    crops.write_crop_table(table, out / "crops")
    boxes = pd.DataFrame({"image": catalog.table["image"], "x0": 0, "y0": 0, "x1": 8, "y1": 8, "source": "fin"})
    caches = [
        build_cache(catalog, out / "cache", settings, boxes=box_table, progress=False)
        for settings, box_table in [
            (CacheSettings(sizes=(32, 64)), None),
            (CacheSettings(sizes=(32,), crop="boxes"), boxes),
        ]
    ]
    assert snapshot(tmp_path, out) == before  # the victim's photos untouched, nothing new beside them
    for cache in caches:
        assert cache.stats == {"photos": 5, "new": 5, "reused": 0, "errors": 0}
        for path in cache.catalog(catalog).paths:
            assert Path(path).resolve().parent.parent.parent == cache.dir.resolve()
    assert set(table["status"]) == {"ok"}
    assert sorted(table["image"]) == sorted(catalog.table["image"])  # the table keeps the names as given
    for mask in table["mask"]:
        assert (out / "crops" / mask).resolve().parent == (out / "crops" / "masks").resolve()
    masks = sorted((out / "crops" / "masks").iterdir())
    assert len(masks) == 5 and all(len(p.name) < 80 for p in masks)


def test_b_jpg_and_b_png_are_two_photos_in_the_cache(hostile):
    catalog, out = hostile
    cache = build_cache(catalog, out / "cache", CacheSettings(sizes=(64,), crop="none"), progress=False)
    paths = cache.catalog(catalog).table.set_index("image")["path"]
    assert paths["b.jpg"] != paths["b.png"]
    jpg, png = (np.asarray(Image.open(paths[n]).convert("RGB"), dtype=int) for n in ("b.jpg", "b.png"))
    rgb = np.asarray(Image.open(catalog.images_dir / "b.jpg").convert("RGB"), dtype=int)
    assert jpg.shape == rgb.shape and np.abs(jpg - rgb).mean() < 8  # b.jpg's own pixels
    assert jpg.shape != png.shape or np.abs(jpg - png).mean() > 8


def test_a_cache_is_reused_at_any_size_it_has_and_grows_new_ones(photos, tmp_path):
    root = tmp_path / "cache"
    first = build_cache(photos, root, CacheSettings(sizes=(64, 128)), progress=False)
    again = build_cache(photos, root, CacheSettings(sizes=(64,)), progress=False)  # e.g. embed --img-size 64
    assert again.dir == first.dir
    assert again.stats["new"] == 0 and again.stats["reused"] == len(GOOD) + len(BROKEN)
    assert again.settings.sizes == (128, 64)
    bigger = build_cache(photos, root, CacheSettings(sizes=(32,)), progress=False)
    assert bigger.dir == first.dir and bigger.settings.sizes == (128, 64, 32)
    assert bigger.stats["new"] == len(GOOD)  # the broken photos have no file to add
    for size in (32, 64, 128):
        assert all(check_image(cached(bigger, size, "saliency", n)) is None for n in GOOD)
    assert [Path(p).parent.parent.name for p in bigger.catalog(photos, img_size=40).paths] == ["64"] * len(GOOD)
    assert build_cache(photos, root, CacheSettings(sizes=(32, 64, 128)), progress=False).stats["new"] == 0


def test_a_damaged_cached_file_is_redone(photos, tmp_path):
    settings = CacheSettings(sizes=(48,))
    first = build_cache(photos, tmp_path / "cache", settings, progress=False)
    damaged = cached(first, 48, "saliency", "rgb.jpg")
    damaged.write_bytes(damaged.read_bytes()[:100])
    again = build_cache(photos, tmp_path / "cache", settings, progress=False)
    assert again.stats["new"] == 1
    assert check_image(damaged) is None
    assert "rgb.jpg" in set(again.catalog(photos).table["image"])


def test_concurrent_runs_both_report_every_photo(photos, tmp_path):
    settings = CacheSettings(sizes=(48,))
    with ThreadPoolExecutor(2) as pool:
        runs = [
            pool.submit(build_cache, photos, tmp_path / "cache", settings, batch_size=2, progress=False)
            for _ in range(2)
        ]
        stats = [r.result().stats for r in runs]
    total = len(GOOD) + len(BROKEN)
    assert all(s["photos"] == total and s["errors"] == len(BROKEN) for s in stats)
    assert sorted(s["new"] for s in stats) == [0, total]  # the second waited, then reused all
    cache = Cache(tmp_path / "cache" / cache_key(settings, photos.images_dir))
    assert len(cache.journal()) == total and len(cache.catalog(photos)) == len(GOOD)


def test_a_run_waits_for_the_one_holding_the_cache(photos, tmp_path, caplog):
    settings = CacheSettings(sizes=(48,))
    directory = tmp_path / "cache" / cache_key(settings, photos.images_dir)
    directory.mkdir(parents=True)
    lock = FileLock(directory / ".lock")
    lock.acquire()
    with ThreadPoolExecutor(1) as pool:
        run = pool.submit(build_cache, photos, tmp_path / "cache", settings, progress=False)
        time.sleep(0.5)
        assert not run.done()
        lock.release()
        assert run.result(timeout=60).stats["photos"] == len(GOOD) + len(BROKEN)
    assert "another whaleid run is filling the cache" in caplog.text


@pytest.mark.parametrize("room", ["4k", "8k", "24k", "40k"])  # full at different writes: journal, masks, crops
def test_disk_full_while_caching_then_a_rerun_finishes(photos, tmp_path, room):
    """On a real tmpfs too small for the cache: one clear error, no temp or half file, and the re-run completes."""
    settings = CacheSettings(sizes=(64,), background="black")
    with tmpfs(tmp_path / "small", room) as small:
        with pytest.raises(UserError, match=r"^disk full while writing .*: free space and re-run$"):
            build_cache(photos, small, settings, workers=1, progress=False)
        leftovers = [p for p in small.rglob("*") if p.is_file()]
        assert not [p for p in leftovers if p.name.endswith(".tmp")]
        assert all(check_image(p) is None for p in leftovers if p.suffix in (".jpg", ".png"))
        subprocess.run(["mount", "-o", "remount,size=4m", str(small)], check=True)
        cache = build_cache(photos, small, settings, workers=1, progress=False)
        assert cache.stats["photos"] == len(GOOD) + len(BROKEN) and cache.stats["errors"] == len(BROKEN)
        assert len(cache.catalog(photos)) == len(GOOD)
        assert not [p for p in small.rglob("*.tmp")]


def test_disk_full_while_appending_the_journal(photos, tmp_path, monkeypatch):
    real = pd.DataFrame.to_csv

    def cut_short(frame, target=None, *args, **kwargs):
        if hasattr(target, "write"):  # the journal, appended line by line
            target.write(real(frame, None, *args, **kwargs)[:20])
            target.flush()
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(frame, target, *args, **kwargs)

    monkeypatch.setattr(pd.DataFrame, "to_csv", cut_short)
    settings = CacheSettings(sizes=(48,))
    with pytest.raises(UserError, match=r"disk full while writing .*journal\.csv: free space and re-run"):
        build_cache(photos, tmp_path / "cache", settings, progress=False)
    monkeypatch.setattr(pd.DataFrame, "to_csv", real)
    cache = build_cache(photos, tmp_path / "cache", settings, progress=False)  # the cut line dropped, its photo redone
    assert cache.stats["new"] + cache.stats["reused"] == len(GOOD) + len(BROKEN)
    assert sorted(cache.journal()["image"]) == sorted(GOOD + list(BROKEN))


def test_journal_rows_pointing_outside_the_cache_are_dropped(photos, tmp_path):
    settings = CacheSettings(sizes=(48,))
    first = build_cache(photos, tmp_path / "cache", settings, progress=False)
    journal = pd.read_csv(first.dir / "journal.csv", dtype=str, keep_default_na=False)
    journal.loc[journal["image"] == "rgb.jpg", "file"] = "../../../../victim.jpg"
    journal.to_csv(first.dir / "journal.csv", index=False)
    assert "rgb.jpg" not in set(first.journal()["image"])
    assert build_cache(photos, tmp_path / "cache", settings, progress=False).stats["new"] == 1


def test_bad_box_sources_never_become_folders(photos, tmp_path):
    boxes = pd.DataFrame(
        [["rgb.jpg", 0, 0, 10, 10, "../../escape"]], columns=["image", "x0", "y0", "x1", "y1", "source"]
    )
    with pytest.raises(UserError, match="box source '../../escape'"):
        build_cache(photos, tmp_path / "cache", CacheSettings(crop="boxes"), boxes=boxes, progress=False)
    assert not (tmp_path / "escape").exists()
    boxes["source"] = ["Fin"]
    twins = pd.concat([boxes, boxes.assign(source="fin")], ignore_index=True)
    with pytest.raises(UserError, match="Fin, fin differ only in case"):
        build_cache(photos, tmp_path / "cache", CacheSettings(crop="boxes"), boxes=twins, progress=False)
