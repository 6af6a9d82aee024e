"""Thumbnails with the crop box and saliency mask drawn on them, and contact sheets of a whole catalog.

A person checks at a glance whether each box holds the animal; the explorer
(:mod:`whaleid.app.explore`) shows these thumbnails on its pages.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from whaleid.data.catalog import Catalog
from whaleid.data.images import ImageError, open_image
from whaleid.errors import UserError
from whaleid.files import atomic_path, inside, safe_name
from whaleid.preprocess.crops import CROP_COLUMNS
from whaleid.preprocess.saliency import STATUS_OK

__all__ = [
    "BOX_COLOUR",
    "MASK_COLOUR",
    "Thumb",
    "annotated_thumbnail",
    "at_least",
    "check_crops",
    "contact_sheet",
    "make_thumbs",
]

#: Outline of the crop box: yellow stands out against sea, sky and grey skin.
BOX_COLOUR: tuple[int, int, int] = (255, 255, 0)


#: Tint laid over salient pixels, opacity proportional to the mask (at most half).
MASK_COLOUR: tuple[int, int, int] = (255, 0, 160)


@dataclass(frozen=True)
class Thumb:
    """A thumbnail written for a page, or why there is none."""

    src: str | None  # path relative to out_dir; None when the photo cannot be read
    width: int
    height: int
    note: str  # why there is no thumbnail (or no mask on it); "" when all went well


def _mask_path(crop: dict[str, Any] | None, crops_dir: Path | None) -> Path | None:
    """The mask file the crop table records, relative to ``crops_dir``."""
    value = None if crop is None else crop.get("mask")
    if crops_dir is None or not isinstance(value, str) or not value.strip():
        return None
    return crops_dir / value


def at_least(value: int, least: int, what: str) -> None:
    """Refuse a size or count that is not a whole number of at least ``least``, naming the option."""
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise UserError(f"{what} must be a whole number >= {least}, got {value!r}")


def check_crops(crops: pd.DataFrame) -> pd.DataFrame:
    """A crop table with the columns a thumbnail needs, each photo once, boxes as whole numbers."""
    missing = [c for c in CROP_COLUMNS if c != "mask" and c not in crops.columns]  # masks are optional
    if missing:
        raise UserError(f"crop table lacks column(s) {', '.join(missing)}")
    dup = crops["image"][crops["image"].duplicated()].unique()
    if len(dup):
        raise UserError(f"crop table has {len(dup)} image(s) more than once, e.g. {dup[0]!r}")
    return crops.astype({c: "int64" for c in ("x0", "y0", "x1", "y1", "width", "height")})


def annotated_thumbnail(
    path: str | Path, crop: dict[str, Any] | None, crops_dir: Path | None, size: int
) -> tuple[Image.Image, str]:
    """The photo shrunk to ``size``, mask tinted and crop box drawn, with a note on what could not be drawn.

    Raises :class:`ImageError` when the photo itself cannot be read.
    """
    photo = open_image(path)
    frame = photo.size
    photo.thumbnail((size, size))
    note = ""
    mask_path = _mask_path(crop, crops_dir)
    if mask_path is not None and not inside(mask_path, crops_dir):  # a crop table is a file users can edit
        note = "mask: not inside the crop folder"
    elif mask_path is not None:
        try:
            mask = open_image(mask_path).convert("L").resize(photo.size, Image.Resampling.BILINEAR)
        except ImageError as exc:
            note = f"mask: {exc.reason}"
        else:
            alpha = mask.point(lambda v: v // 2)
            photo = Image.composite(Image.new("RGB", photo.size, MASK_COLOUR), photo, alpha)
    if crop is not None and min(crop["x0"], crop["y0"], crop["x1"], crop["y1"]) >= 0:
        # The box is in the frame the crop table was made in; fall back to the photo's own.
        fw, fh = (crop["width"], crop["height"]) if min(crop["width"], crop["height"]) > 0 else frame
        sx, sy = photo.width / fw, photo.height / fh
        x0, x1 = round(crop["x0"] * sx), max(round(crop["x1"] * sx) - 1, 0)
        y0, y1 = round(crop["y0"] * sy), max(round(crop["y1"] * sy) - 1, 0)
        ImageDraw.Draw(photo).rectangle(
            (min(x0, photo.width - 1), min(y0, photo.height - 1), min(x1, photo.width - 1), min(y1, photo.height - 1)),
            outline=BOX_COLOUR,
            width=max(2, size // 80),
        )
    return photo, note


def _make_thumb(
    image: str, path: str, crop: dict[str, Any] | None, crops_dir: Path | None, thumbs: Path, size: int
) -> Thumb:
    try:
        photo, note = annotated_thumbnail(path, crop, crops_dir, size)
    except ImageError as exc:
        return Thumb(None, 0, 0, exc.reason)
    name = safe_name(image, ".jpg")
    with atomic_path(thumbs / name) as tmp:  # full-resolution chroma keeps the thin box line its own colour
        photo.save(tmp, format="JPEG", quality=90, subsampling=0)
    return Thumb(f"thumbs/{name}", photo.width, photo.height, note)


def contact_sheet(
    catalog: Catalog,
    crops: pd.DataFrame,
    out_png: str | Path,
    crops_dir: str | Path | None = None,
    columns: int = 10,
    size: int = 120,
) -> Path:
    """One image of every photo with its box (and mask), numbered, fallbacks and errors framed in red.

    Made for reports: a person checks at a glance whether each box holds the animal.
    """
    at_least(columns, 1, "contact sheet columns")
    at_least(size, 16, "contact sheet tile size")
    rows = check_crops(crops).set_index("image", drop=False)
    names = catalog.table["image"].astype(str).tolist()
    crops_dir = Path(crops_dir) if crops_dir is not None else None
    n_rows = max(1, -(-len(names) // columns))
    sheet = Image.new("RGB", (columns * size, n_rows * size), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for k, (name, path) in enumerate(zip(names, catalog.paths)):
        crop = rows.loc[name].to_dict() if name in rows.index else None
        x, y = (k % columns) * size, (k // columns) * size
        try:
            thumb, _ = annotated_thumbnail(path, crop, crops_dir, size - 4)
            sheet.paste(thumb, (x + 2, y + 2))
        except ImageError:
            pass  # left blank; the red frame below says the photo is a failure
        if crop is None or crop["status"] != STATUS_OK:
            draw.rectangle((x, y, x + size - 1, y + size - 1), outline=(220, 0, 0), width=3)
        draw.text((x + 4, y + 3), str(k), fill=(255, 255, 255), stroke_width=2, stroke_fill=(0, 0, 0))
    jpeg = Path(out_png).suffix.lower() in (".jpg", ".jpeg")  # JPEG: a tenth of the size, for committed reports
    with atomic_path(out_png) as tmp:
        sheet.save(tmp, format="JPEG" if jpeg else "PNG", quality=85, optimize=True)
    return Path(out_png)


def make_thumbs(
    jobs: dict[str, str],
    crops: dict[str, dict[str, Any]],
    crops_dir: Path | None,
    out_dir: Path,
    size: int,
    progress: bool,
) -> dict[str, Thumb]:
    """Image name -> its thumbnail under ``out_dir/thumbs``, for ``jobs`` (image name -> photo path), made in threads."""
    thumbs = out_dir / "thumbs"
    thumbs.mkdir(parents=True, exist_ok=True)

    def one(item: tuple[str, str]) -> Thumb:
        return _make_thumb(item[0], item[1], crops.get(item[0]), crops_dir, thumbs, size)

    workers = min(8, os.cpu_count() or 2)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = tqdm(
            pool.map(one, jobs.items()), total=len(jobs), desc="thumbnails", unit="photo", disable=not progress
        )
        return dict(zip(jobs, list(results), strict=True))
