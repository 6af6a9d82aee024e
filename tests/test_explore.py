"""The static HTML explorer: pages, thumbnails with box and mask, failures, and a real browser."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from markupsafe import escape
from PIL import Image

from conftest import BROKEN
from whaleid.app.explore import build_explorer
from whaleid.app.thumbnails import BOX_COLOUR, MASK_COLOUR, annotated_thumbnail, contact_sheet
from whaleid.data.catalog import read_catalog
from whaleid.errors import UserError
from whaleid.preprocess.saliency import STATUS_NO_REGION, STATUS_OK, STATUS_TINY_REGION

SEA = (30, 80, 120)
W, H = 120, 80  # every readable photo; thumbnails at THUMB=60 are 60x40 (scale 1/2)
THUMB = 60
ODD_IMAGE = 'odd <b>&"name.jpg'
ODD_ID = "<script>alert(1)</script>"
# individual -> photos; sorted by photo count the contact sheets are fin_a, fin_b, then the singles.
PHOTOS = {
    "fin_a": ["a1.jpg", "a2.jpg", "a3.jpg"],
    "fin_b": ["b1.jpg", "b2.jpg"],
    ODD_ID: [ODD_IMAGE],
    "fin_c": ["c1.jpg"],
}
BOX = (30, 20, 90, 60)  # a1.jpg's crop box in the photo: (15, 10, 45, 30) in its thumbnail


def _crops() -> pd.DataFrame:
    def row(image, status, box=(0, 0, W, H), area=0.0, score=0.0, mask=""):
        size = (-1, -1) if status.startswith("error: ") else (W, H)
        return (image, *box, *size, area, score, status, mask)

    columns = ["image", "x0", "y0", "x1", "y1", "width", "height", "mask_area", "score", "status", "mask"]
    return pd.DataFrame(
        columns=columns,
        data=[
            row("a1.jpg", STATUS_OK, BOX, 0.50, 0.90, "masks/a1.png"),
            row("a2.jpg", STATUS_OK, (10, 10, 50, 50), 0.05, 0.70),
            row("a3.jpg", STATUS_OK, (0, 0, 60, 40), 0.30, 0.20, np.nan),
            row("c1.jpg", STATUS_OK, (5, 5, 100, 70), 0.20, 0.60),
            row("b1.jpg", STATUS_NO_REGION),
            row("b2.jpg", STATUS_TINY_REGION, area=0.001, score=0.1),
            row(ODD_IMAGE, "error: model failed", (-1, -1, -1, -1)),
        ],
    )


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple:
    """A catalog of flat 'sea' photos plus the broken fixture files, crops and one mask."""
    root = tmp_path_factory.mktemp("explore_data")
    images = root / "images"
    images.mkdir()
    rows = []
    for ind, names in PHOTOS.items():
        for name in names:
            Image.new("RGB", (W, H), SEA).save(images / name, quality=95)
            rows.append((name, "bottlenose_dolphin" if ind != "fin_c" else "humpback_whale", ind))
    fixture_images = Path(__file__).parent / "fixtures" / "images"
    for name in BROKEN:
        if (fixture_images / name).exists():
            shutil.copy(fixture_images / name, images / name)
        rows.append((name, "bottlenose_dolphin", "fin_a"))
    pd.DataFrame(rows, columns=["image", "species", "individual_id"]).to_csv(root / "train.csv", index=False)
    catalog = read_catalog(root / "train.csv", check_images=True, progress=False)
    # a1.jpg's mask: the right half of the photo is salient (stored downscaled, smaller than the thumbnail).
    mask = np.zeros((H // 4, W // 4), dtype=np.uint8)
    mask[:, W // 8 :] = 255
    (root / "crops" / "masks").mkdir(parents=True)
    Image.fromarray(mask, "L").save(root / "crops" / "masks" / "a1.png")
    return catalog, _crops(), root / "crops"


@pytest.fixture(scope="module")
def site(data, tmp_path_factory) -> Path:
    catalog, crops, crops_dir = data
    out = tmp_path_factory.mktemp("explore_site")
    index = build_explorer(catalog, out, crops, crops_dir, thumb_size=THUMB, progress=False)
    assert index == out / "index.html"
    return out


def _read(site: Path, page: str) -> str:
    return (site / page).read_text(encoding="utf-8")


def _thumb_of(site: Path, page: str, image: str) -> Path:
    html_text = _read(site, page)
    src = re.search(r'<img src="(thumbs/[^"]+)"[^>]* alt="' + re.escape(str(escape(image))) + '"', html_text)
    assert src, f"no thumbnail for {image} on {page}"
    return site / src.group(1)


def _sections(html_text: str, cls: str) -> list[str]:
    return re.findall(rf'<section class="{cls}"[^>]*><h2>(.*?)</h2>', html_text)


def test_pages_charts_and_summary_are_written(site, data):
    catalog = data[0]
    for name in ["index.html", "individuals.html", "failures.html", "worst.html", "style.css"]:
        assert (site / name).stat().st_size > 0, name
    for chart in ["species.png", "photos_per_individual.png"]:
        assert (site / chart).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    index = _read(site, "index.html")
    for section in [
        'id="summary"',
        'id="species"',
        'id="photos-per-individual"',
        'src="species.png"',
        'href="individuals.html"',
        'href="failures.html"',
        'href="worst.html"',
    ]:
        assert section in index
    numbers = dict(re.findall(r'<th scope="row">([^<]*)</th><td class="n">([^<]*)</td>', index))
    assert numbers["photos"] == str(len(catalog)) == "7"
    assert numbers["individuals"] == "4"
    assert numbers["species"] == "2"
    assert numbers["problems (listed but unreadable)"] == str(len(BROKEN))
    assert numbers[f"crop status: {STATUS_OK}"] == "4"
    assert numbers[f"crop status: {STATUS_NO_REGION}"] == "1"
    assert numbers["crop status: error: model failed"] == "1"
    assert "http" not in index and "<script" not in index


def test_one_contact_sheet_per_individual_largest_first(site):
    page = _read(site, "individuals.html")
    assert _sections(page, "individual") == ["fin_a", "fin_b", "&lt;script&gt;alert(1)&lt;/script&gt;", "fin_c"]
    thumbs = sorted(p.name for p in (site / "thumbs").iterdir())
    assert len(thumbs) == len(set(thumbs)) == 7  # one per readable photo, reused by every page
    assert all(_thumb_of(site, "individuals.html", n).exists() for names in PHOTOS.values() for n in names)
    assert "odd &lt;b&gt;&amp;&#34;name.jpg" in page and ODD_ID not in page


def test_contact_sheets_are_capped(data, tmp_path):
    catalog, crops, crops_dir = data
    build_explorer(
        catalog, tmp_path, crops, crops_dir, thumb_size=THUMB, per_individual=2, max_individuals=2, progress=False
    )
    page = _read(tmp_path, "individuals.html")
    assert _sections(page, "individual") == ["fin_a", "fin_b"]
    assert "a1.jpg" in page and "a2.jpg" in page and "a3.jpg" not in page
    assert "3 photos, showing 2" in page


def test_failures_name_fallbacks_errors_and_broken_photos(site):
    page = _read(site, "failures.html")
    assert 'id="failures"' in page
    for name in ["b1.jpg", "b2.jpg", "odd &lt;b&gt;&amp;&#34;name.jpg", *BROKEN]:
        assert f"<b>{name}</b>" in page, name
    for text in [STATUS_NO_REGION, STATUS_TINY_REGION, "error: model failed", *BROKEN.values()]:
        assert text in page, text
    for ok in ["a1.jpg", "a2.jpg", "c1.jpg"]:
        assert ok not in page
    # readable photos get a thumbnail, broken ones a placeholder with their reason
    assert _thumb_of(site, "failures.html", "b1.jpg").exists()
    assert page.count('<div class="unreadable">') == len(BROKEN)


def test_worst_crops_sorted_by_mask_area_and_score(data, tmp_path):
    catalog, crops, crops_dir = data
    build_explorer(catalog, tmp_path, crops, crops_dir, thumb_size=THUMB, worst=2, progress=False)
    page = _read(tmp_path, "worst.html")
    smallest, lowest = (
        re.search(rf'<section id="{s}">(.*?)</section>', page, re.DOTALL).group(1) for s in ("smallest", "lowest-score")
    )
    names = re.compile(r"<figcaption><b>([^<]*)</b>")
    assert names.findall(smallest) == ["a2.jpg", "c1.jpg"]  # mask areas 0.05, 0.20 (b2 is not ok)
    assert names.findall(lowest) == ["a3.jpg", "c1.jpg"]  # scores 0.20, 0.60


def test_thumbnail_shows_crop_box_and_mask(site):
    thumb = Image.open(_thumb_of(site, "individuals.html", "a1.jpg")).convert("RGB")
    assert thumb.size == (THUMB, THUMB * H // W)
    px = np.asarray(thumb).astype(int)

    def near(xy, colour, tol=30):
        return np.abs(px[xy[1], xy[0]] - np.array(colour)).max() <= tol

    alpha = 127 / 255  # a full mask tints at half opacity
    tinted = tuple(round(s * (1 - alpha) + m * alpha) for s, m in zip(SEA, MASK_COLOUR, strict=True))
    assert near((15, 20), BOX_COLOUR) and near((44, 20), BOX_COLOUR)  # left and right edge of the box
    assert near((30, 10), BOX_COLOUR) and near((30, 29), BOX_COLOUR)  # top and bottom edge
    assert near((22, 20), SEA) and near((5, 35), SEA)  # inside the box and outside, not salient
    assert near((38, 20), tinted) and near((55, 35), tinted)  # salient right half
    # a photo without a mask gets the box only
    plain = np.asarray(Image.open(_thumb_of(site, "individuals.html", "a2.jpg")).convert("RGB")).astype(int)
    assert np.abs(plain[35, 55] - SEA).max() <= 30 and np.abs(plain[15, 5] - BOX_COLOUR).max() <= 30


def test_without_crops_or_failures(tmp_path, data):
    catalog = data[0]
    clean = catalog.subset(catalog.table["individual_id"] != ODD_ID)
    clean.problems = clean.problems.iloc[:0]
    build_explorer(clean, tmp_path, thumb_size=THUMB, progress=False)
    assert "No failures" in _read(tmp_path, "failures.html")
    assert _read(tmp_path, "worst.html").count("No crop table given") == 2
    assert "crop status" not in _read(tmp_path, "index.html")
    thumb = np.asarray(Image.open(_thumb_of(tmp_path, "individuals.html", "a1.jpg")).convert("RGB")).astype(int)
    assert np.abs(thumb - SEA).max() <= 30  # no box, no mask


def test_crop_table_without_required_columns_is_refused(data, tmp_path):
    with pytest.raises(ValueError, match="score, status"):
        build_explorer(data[0], tmp_path, data[1].drop(columns=["score", "status"]), progress=False)


@pytest.mark.browser
def test_pages_render_in_chromium(site, tmp_path):
    chromium = Path("/usr/bin/chromium")
    if not chromium.exists():
        if os.environ.get("CI"):  # `make test` installs it; CI must not pass by skipping
            pytest.fail(f"{chromium} not found in CI")
        pytest.skip(f"{chromium} not found (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed (pip install playwright)")
    expected = {
        "index.html": ["summary", "species", "photos-per-individual"],
        "individuals.html": [f"individual-{i}" for i in range(1, 5)],
        "failures.html": ["failures"],
        "worst.html": ["smallest", "lowest-score"],
    }
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium), headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 700})
            errors: list[str] = []
            page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
            page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url} {r.failure}"))
            page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
            for name, ids in expected.items():
                page.goto((site / name).as_uri(), wait_until="load")
                found = page.evaluate("ids => ids.filter(id => document.getElementById(id) !== null)", ids)
                assert found == ids, name
                images = page.evaluate(
                    "Array.from(document.images).map(i => [i.getAttribute('src'), i.complete && i.naturalWidth > 0])"
                )
                assert images and all(ok for _, ok in images), (name, images)
                assert page.evaluate("getComputedStyle(document.body).margin") == "0px", "style.css not applied"
                shot = tmp_path / f"{name}.png"
                page.screenshot(path=str(shot), full_page=True)
                assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 1000
            assert errors == []
        finally:
            browser.close()


def test_contact_sheet_tiles_every_photo_and_frames_failures(data, tmp_path):
    catalog, crops, crops_dir = data
    size = 64  # thumbnails 60x40 pasted at (2, 2) of each tile
    sheet = np.asarray(
        Image.open(contact_sheet(catalog, crops, tmp_path / "sheet.png", crops_dir, columns=3, size=size))
    )
    names = catalog.table["image"].tolist()
    assert sheet.shape == (-(-len(names) // 3) * size, 3 * size, 3)
    for k, name in enumerate(names):
        x, y = (k % 3) * size, (k // 3) * size
        framed = tuple(sheet[y + size // 2, x + 1]) == (220, 0, 0)
        assert framed == (name not in {"a1.jpg", "a2.jpg", "a3.jpg", "c1.jpg"}), name
    k = names.index("a1.jpg")
    x, y = (k % 3) * size + 2, (k // 3) * size + 2
    assert tuple(sheet[y + 20, x + 15]) == BOX_COLOUR  # left edge of BOX at half scale


@pytest.mark.parametrize(
    "options, wrong",
    [
        ({"thumb_size": 0}, "thumbnail size"),
        ({"per_individual": 0}, "photos per individual"),
        ({"worst": -1}, "worst crops"),
        ({"max_individuals": 0}, "number of individuals"),
    ],
)
def test_explorer_options_are_checked(data, tmp_path, options, wrong):
    with pytest.raises(UserError, match=wrong):
        build_explorer(data[0], tmp_path, progress=False, **options)


@pytest.mark.parametrize("options, wrong", [({"columns": 0}, "columns"), ({"size": 4}, "tile size")])
def test_contact_sheet_options_are_checked(data, tmp_path, options, wrong):
    with pytest.raises(UserError, match=wrong):
        contact_sheet(data[0], data[1], tmp_path / "sheet.png", data[2], **options)
    assert not (tmp_path / "sheet.png").exists()


def test_a_mask_outside_the_crop_folder_is_not_read(data, tmp_path):
    catalog, crops, crops_dir = data
    outside = tmp_path / "secret.png"
    Image.new("L", (W, H), 255).save(outside)
    for mask in (str(outside), "../" * 12 + str(outside).lstrip("/")):
        row = crops.set_index("image").loc["a1.jpg"].to_dict() | {"mask": mask}
        thumb, note = annotated_thumbnail(catalog.images_dir / "a1.jpg", row, crops_dir, THUMB)
        assert note == "mask: not inside the crop folder"
        assert np.abs(np.asarray(thumb, dtype=int)[25, 55] - SEA).max() <= 30  # outside the box: no tint


def test_thumbnails_of_any_image_name_stay_in_the_site(tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    Image.new("RGB", (W, H), SEA).save(victim / "photo.jpg")
    images = tmp_path / "d" / "images"
    images.mkdir(parents=True)
    names = [str(victim / "photo.jpg"), "../../victim/photo.jpg"]
    csv = tmp_path / "d" / "t.csv"
    pd.DataFrame({"image": names, "species": "x", "individual_id": ["a", "b"]}).to_csv(csv, index=False)
    catalog = read_catalog(csv, images, progress=False)
    before = (victim / "photo.jpg").read_bytes()
    site = tmp_path / "site"
    build_explorer(catalog, site, thumb_size=THUMB, progress=False)
    assert sorted(p.name for p in victim.iterdir()) == ["photo.jpg"] and (victim / "photo.jpg").read_bytes() == before
    thumbs = [_thumb_of(site, "individuals.html", n) for n in names]
    assert len(set(thumbs)) == 2 and all(t.resolve().parent == (site / "thumbs").resolve() for t in thumbs)
    assert not [p for p in site.rglob("*.tmp")]
