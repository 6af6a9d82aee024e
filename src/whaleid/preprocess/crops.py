"""The crop table: where the animal is in every photo of a catalog, with the evidence to audit it.

One row per photo (``CROP_COLUMNS``): the box in original pixels, the photo size, the
salient region's area and mean score, a status (``ok``, ``fallback: ...`` or
``error: <reason>``) and, when asked, a small PNG of the saliency mask for the explorer.
Rows that are not ``ok`` are also written to ``failures.csv``, as the Kaggle crop
datasets did, so the doubtful photos can be reviewed or boxed by hand.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from whaleid.data.catalog import Catalog
from whaleid.data.images import ImageError, open_image
from whaleid.errors import UserError
from whaleid.files import atomic_path, read_table, safe_name
from whaleid.preprocess.saliency import REGIONS, STATUS_OK, Crop, crop_box, saliency_masks
from whaleid.settings import from_dict

__all__ = [
    "CROP_COLUMNS",
    "MASK_SIDE",
    "CropSettings",
    "Located",
    "crop_catalog",
    "crop_row",
    "error_status",
    "failures",
    "locate",
    "mask_name",
    "problem_rows",
    "read_crop_table",
    "save_mask",
    "write_crop_table",
]

CROP_COLUMNS = ["image", "x0", "y0", "x1", "y1", "width", "height", "mask_area", "score", "status", "mask"]
_PIXELS = ["x0", "y0", "x1", "y1", "width", "height"]  # whole numbers; -1 in the row of a photo that failed
_NUMBERS = [*_PIXELS, "mask_area", "score"]
#: Longest side of the mask PNGs kept for review: enough to see the outline, tiny on disk.
MASK_SIDE = 256


@dataclass(frozen=True)
class CropSettings:
    """How saliency becomes a box (see :func:`whaleid.preprocess.saliency.crop_box`).

    Checked when made: a negative ``enlarge`` gave inverted boxes and ``0`` empty ones,
    both marked ok.
    """

    threshold: float = 0.5
    enlarge: float = 1.2
    square: bool = False
    min_area: float = 0.002
    region: str = "union"
    clahe: bool = False
    max_area: float = 0.9

    def __post_init__(self) -> None:
        for name in ("threshold", "enlarge", "min_area", "max_area"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise UserError(f"crop setting {name} must be a number, got {value!r}")
        for name in ("square", "clahe"):
            if not isinstance(getattr(self, name), bool):
                raise UserError(f"crop setting {name} must be true or false, got {getattr(self, name)!r}")
        if self.enlarge <= 0:
            raise UserError(f"crop setting enlarge must be > 0 (1.2 grows the box by 20 %), got {self.enlarge}")
        for name in ("threshold", "min_area", "max_area"):
            if not 0 <= getattr(self, name) <= 1:
                raise UserError(f"crop setting {name} must be between 0 and 1, got {getattr(self, name)}")
        if self.region not in REGIONS:
            raise UserError(f"crop setting region must be one of {', '.join(REGIONS)}, got {self.region!r}")

    def box(self, mask: np.ndarray) -> Crop:
        """Where these settings cut a photo with this saliency mask."""
        return crop_box(mask, self.threshold, self.enlarge, self.square, self.min_area, self.region, self.max_area)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, path: str | Path) -> CropSettings:
        """Settings saved by ``whaleid crop`` (``crop_settings.json``); any key may be left out."""
        try:
            values = json.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as error:
            raise UserError(f"{path}: cannot read crop settings ({error.strerror or error})") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise UserError(f"{path}: not a JSON file of crop settings ({error})") from None
        if not isinstance(values, dict):
            raise UserError(f"{path}: crop settings must be a JSON object, got {type(values).__name__}")
        try:
            return from_dict(cls, values, "crop")
        except UserError as error:
            raise UserError(f"{path}: {error}") from None


@dataclass
class Located:
    """One photo after saliency: the decoded image, its mask and crop, or why it failed."""

    index: int
    image: Image.Image | None
    mask: np.ndarray | None
    crop: Crop | None
    error: str | None = None


def error_status(reason: str) -> str:
    return f"error: {reason}"


def _open(path: str) -> Image.Image | str:
    try:
        return open_image(path)
    except ImageError as error:
        return error.reason


def locate(
    paths: Sequence[str],
    settings: CropSettings | None = CropSettings(),
    batch_size: int = 8,
    workers: int = 2,
    progress: bool = True,
    desc: str = "crop",
) -> Iterator[Located]:
    """Open, mask and box photos in order; ``settings=None`` skips the saliency model.

    A thread pool decodes the next batch while the model runs on this one, and only two
    batches of photos are ever in memory, so a 50,000-photo catalog streams.
    """
    if batch_size < 1:
        raise UserError(f"batch size must be >= 1, got {batch_size}")
    batches = [list(range(i, min(i + batch_size, len(paths)))) for i in range(0, len(paths), batch_size)]
    with (
        ThreadPoolExecutor(max(1, workers)) as pool,
        tqdm(total=len(paths), desc=desc, unit="photo", disable=not progress) as bar,
    ):
        pending = [pool.submit(_open, paths[i]) for i in batches[0]] if batches else []
        for b, batch in enumerate(batches):
            opened = [f.result() for f in pending]
            if b + 1 < len(batches):
                pending = [pool.submit(_open, paths[i]) for i in batches[b + 1]]
            good = [k for k, im in enumerate(opened) if not isinstance(im, str)]
            masks = (
                saliency_masks([opened[k] for k in good], batch_size=batch_size, clahe=settings.clahe)
                if settings is not None and good
                else [None] * len(good)
            )
            by_position = dict(zip(good, masks))
            for k, i in enumerate(batch):
                if isinstance(opened[k], str):
                    yield Located(i, None, None, None, opened[k])
                    continue
                mask = by_position[k]
                crop = None if mask is None else settings.box(mask)
                yield Located(i, opened[k], mask, crop)
            bar.update(len(batch))


def save_mask(mask: np.ndarray, path: Path) -> None:
    """Mask as an 8-bit PNG, longest side ``MASK_SIDE``: the explorer overlays it on thumbnails."""
    h, w = mask.shape
    scale = min(1.0, MASK_SIDE / max(h, w))
    small = cv2.resize(mask, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    with atomic_path(path) as tmp:
        Image.fromarray(np.clip(small * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L").save(tmp, format="PNG")


def crop_row(name: str, found: Located, mask_file: str = "") -> dict:
    if found.error is not None:
        return dict(
            image=name,
            x0=-1,
            y0=-1,
            x1=-1,
            y1=-1,
            width=-1,
            height=-1,
            mask_area=0.0,
            score=0.0,
            status=error_status(found.error),
            mask="",
        )
    w, h = found.image.size
    crop = found.crop or Crop((0, 0, w, h), 0.0, 0.0, STATUS_OK)  # no saliency asked for: the caller's box
    x0, y0, x1, y1 = crop.box
    return dict(
        image=name,
        x0=x0,
        y0=y0,
        x1=x1,
        y1=y1,
        width=w,
        height=h,
        mask_area=crop.mask_area,
        score=crop.score,
        status=crop.status,
        mask=mask_file,
    )


def problem_rows(catalog: Catalog) -> list[dict]:
    """Photos the catalog already found unreadable still get their row, so every listed photo is accounted for."""
    return [crop_row(str(p.image), Located(-1, None, None, None, str(p.reason))) for p in catalog.problems.itertuples()]


def mask_name(image: str) -> str:
    """Mask file of a photo, relative to the output folder: ``masks/<safe name>.png``, whatever the image name."""
    return f"masks/{safe_name(image, '.png')}"


def crop_catalog(
    catalog: Catalog,
    settings: CropSettings = CropSettings(),
    masks_dir: str | Path | None = None,
    batch_size: int = 8,
    workers: int = 2,
    progress: bool = True,
) -> pd.DataFrame:
    """Crop table of a catalog; with ``masks_dir`` each mask is saved there, as the ``mask`` column says."""
    names = catalog.table["image"].astype(str).tolist()
    rows = []
    for found in locate(catalog.paths, settings, batch_size, workers, progress):
        name = names[found.index]
        mask_file = ""
        if masks_dir is not None and found.mask is not None:
            mask_file = mask_name(name)
            save_mask(found.mask, Path(masks_dir) / mask_file)
        rows.append(crop_row(name, found, mask_file))
    return pd.DataFrame(rows + problem_rows(catalog), columns=CROP_COLUMNS)


def failures(table: pd.DataFrame) -> pd.DataFrame:
    """The rows a person should look at: fallbacks and errors."""
    return table[table["status"] != STATUS_OK].reset_index(drop=True)


def write_crop_table(table: pd.DataFrame, out_dir: str | Path) -> tuple[Path, Path]:
    """``crops.csv`` (every photo) and ``failures.csv`` (the rest), written atomically.

    Every cell is quoted: a name with a carriage return, which minimal quoting leaves bare,
    came back as two rows.
    """
    out_dir = Path(out_dir)
    paths = out_dir / "crops.csv", out_dir / "failures.csv"
    for frame, path in zip((table, failures(table)), paths):
        with atomic_path(path) as tmp:
            frame.to_csv(tmp, index=False, quoting=csv.QUOTE_ALL)
    return paths


def read_crop_table(path: str | Path) -> pd.DataFrame:
    """A ``crops.csv`` as written by :func:`write_crop_table`; any other file, or a cell that should hold a
    number and does not (an edited table), is a :class:`UserError` naming the file."""
    table = read_table(path, what="crop table").fillna("")
    missing = [c for c in CROP_COLUMNS if c not in table.columns]
    if missing:
        raise UserError(f"{path}: not a crop table (missing {', '.join(missing)})")
    numbers = table[_NUMBERS].apply(pd.to_numeric, errors="coerce").astype(float)
    wrong = ~np.isfinite(numbers)
    wrong[_PIXELS] |= numbers[_PIXELS] % 1 != 0
    if wrong.to_numpy().any():
        row, column = next((r, c) for c in _NUMBERS for r in wrong.index[wrong[c]])
        raise UserError(
            f"{path}: {column} of {table.at[row, 'image'][:80]!r} is {table.at[row, column]!r}, not a "
            f"{'whole number' if column in _PIXELS else 'number'}: write the table again with `whaleid crop`"
        )
    return table.assign(**numbers.astype({c: "int64" for c in _PIXELS}))
