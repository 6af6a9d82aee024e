"""Read, check and sample crop boxes produced by external detectors.

Users bring boxes from other tools (Detic, YOLO, hand-drawn crops, the public
Happywhale crop CSVs). Everything is converted to one table of integer pixel
boxes ``image, x0, y0, x1, y1, source`` so training can keep several boxes per
photo (e.g. ``body`` and ``fin``) and pick one per epoch, as the 1st-place
Happywhale 2022 solution did.

Conventions
-----------
* Pixel boxes are half-open: ``x0 <= x < x1``, ``y0 <= y < y1``; a valid box
  has ``x0 < x1`` and ``y0 < y1`` and lies inside ``[0, W] x [0, H]``.
* YOLO -> pixel rounding: the low edge is floored and the high edge is ceiled
  (after rounding to 6 decimals to absorb float noise), so the pixel box always
  covers the whole normalised region. E.g. cx=.5 cy=.5 w=.5 h=.25 on a 200x100
  image gives (50, 37, 150, 63).
* Rows whose box is empty/NaN are *not* returned as boxes: a warning with the
  count is logged and the skipped rows are kept in ``df.attrs["skipped"]`` (a
  DataFrame) so callers can report them.
* A source becomes a folder name in the crop cache, so it must match
  ``[A-Za-z0-9_-]{1,64}`` (:data:`SOURCE_PATTERN`); a default taken from a file
  name is made to. Anything wrong in a box file raises :class:`UserError` naming
  the file and line.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import pandas as pd

from whaleid.data.species import MISSING_MARKERS
from whaleid.errors import UserError
from whaleid.files import read_table, read_table_lines

log = logging.getLogger(__name__)

BOX_COLUMNS = ["image", "x0", "y0", "x1", "y1", "source"]
FULL = "full"
#: What a source may be called: it names a folder of the crop cache.
SOURCE_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
_YOLO_TOL = 1e-3
#: Larger coordinates are not pixels of any photo (and would overflow int64 on the way).
_MAX_COORD = 1e9


def _empty_boxes() -> pd.DataFrame:
    df = pd.DataFrame({c: pd.Series(dtype="int64") for c in BOX_COLUMNS})
    df["image"] = df["image"].astype(object)
    df["source"] = df["source"].astype(object)
    return df


def _is_blank(v: object) -> bool:
    """No value: None, NaN, an empty cell or a missing-value marker such as ``nan`` a detector wrote."""
    if v is None:
        return True
    if isinstance(v, float) and math.isnan(v):
        return True
    return isinstance(v, str) and (not v.strip() or v.strip().lower() in MISSING_MARKERS)


def _box_table(rows: list[tuple]) -> pd.DataFrame:
    """The box table of ``(image, x0, y0, x1, y1, source)`` rows, coordinates as int64."""
    df = pd.DataFrame(rows, columns=BOX_COLUMNS) if rows else _empty_boxes()
    for c in ["x0", "y0", "x1", "y1"]:
        df[c] = df[c].astype("int64")
    return df


def _default_source(path: Path) -> str:
    """A file or folder name made into a valid source: ``detic body.csv`` -> ``detic_body``."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", path.stem).strip("_")[:64] or "boxes"


def _source(value: object, where: str, default: str | None = None) -> str:
    """``value`` if it can name a cache folder; blank gives ``default`` where there is one."""
    if default is not None and _is_blank(value):
        return default
    if not SOURCE_PATTERN.fullmatch(str(value)):
        raise UserError(f"{where}: box source {str(value)[:80]!r} must be 1-64 letters, digits, _ or -")
    return str(value)


def _coords(values: Iterable[object], where: str, what: str) -> list[float]:
    """Finite numbers of a plausible size, or a UserError naming the line."""
    try:
        numbers = [float(v) for v in values]
    except (TypeError, ValueError):
        raise UserError(f"{where}: {what} must be numbers, got {[str(v)[:20] for v in values]}") from None
    if not all(math.isfinite(v) and abs(v) <= _MAX_COORD for v in numbers):
        raise UserError(f"{where}: {what} must be finite numbers of pixels or fractions, got {numbers}")
    return numbers


def read_pixel_boxes(csv_path: str | Path, image_col: str = "image", box_col: str = "box") -> pd.DataFrame:
    """Read a pixel-box CSV (public Happywhale crop sets) into the box table.

    The box is either a ``"x0 y0 x1 y1"`` string in ``box_col`` or separate
    ``x0, y0, x1, y1`` columns (used when present). ``source`` is taken from a
    ``source`` column when present, else the file stem, so boxes from several
    detector files can be concatenated and still told apart. Rows with an
    empty box are skipped, logged, and returned in ``df.attrs["skipped"]``.
    """
    csv_path = Path(csv_path)
    raw, lines = read_table_lines(csv_path, what="pixel-box CSV")
    if image_col not in raw.columns:
        raise UserError(f"{csv_path}: no image column {image_col!r}")
    sep_cols = ["x0", "y0", "x1", "y1"]
    use_sep = all(c in raw.columns for c in sep_cols)
    if not use_sep and box_col not in raw.columns:
        raise UserError(f"{csv_path}: need a {box_col!r} column or columns x0,y0,x1,y1")
    default = _default_source(csv_path)
    rows, skipped = [], []
    for i, r in raw.iterrows():
        where = f"{csv_path}:{lines[i]}"
        if r.isna().all():
            continue  # a row of empty cells
        if _is_blank(r[image_col]):
            raise UserError(f"{where}: no image name")
        if use_sep:
            vals = [r[c] for c in sep_cols]
            if all(_is_blank(v) for v in vals):
                skipped.append(i)
                continue
            if any(_is_blank(v) for v in vals):
                raise UserError(f"{where}: partial box for {r[image_col]!r}")
        else:
            v = r[box_col]
            if _is_blank(v):
                skipped.append(i)
                continue
            vals = str(v).split()
            if len(vals) != 4:
                raise UserError(f"{where}: box for {r[image_col]!r} must have 4 numbers, got {v!r}")
        x0, y0, x1, y1 = (int(round(x)) for x in _coords(vals, where, f"box for {r[image_col]!r}"))
        if x0 >= x1 or y0 >= y1:
            raise UserError(f"{where}: empty or inverted box for {r[image_col]!r}: ({x0}, {y0}, {x1}, {y1})")
        src = _source(r["source"] if "source" in raw.columns else None, where, default)
        rows.append((str(r[image_col]), x0, y0, x1, y1, src))
    df = _box_table(rows)
    df.attrs["skipped"] = raw.loc[skipped].reset_index(drop=True)
    if skipped:
        log.warning("%s: skipped %d row(s) with an empty box", csv_path, len(skipped))
    return df


def _size_lookup(image_sizes: Mapping[str, tuple[int, int]]) -> dict[str, str]:
    """Map both full names and stems to the image_sizes key."""
    out: dict[str, str] = {}
    for k in image_sizes:
        out[k] = k
        out.setdefault(Path(k).stem, k)
    return out


def _yolo_to_pixels(
    cx: float, cy: float, w: float, h: float, width: int, height: int, where: str
) -> tuple[int, int, int, int]:
    for name, v in (("cx", cx), ("cy", cy), ("w", w), ("h", h)):
        if not (-_YOLO_TOL <= v <= 1 + _YOLO_TOL) or math.isnan(v):
            raise UserError(f"{where}: {name}={v} outside [0, 1]; are these pixel, not YOLO-normalised, values?")
    x0 = math.floor(round((cx - w / 2) * width, 6))
    x1 = math.ceil(round((cx + w / 2) * width, 6))
    y0 = math.floor(round((cy - h / 2) * height, 6))
    y1 = math.ceil(round((cy + h / 2) * height, 6))
    x0, x1 = max(0, x0), min(width, x1)
    y0, y1 = max(0, y0), min(height, y1)
    if x0 >= x1 or y0 >= y1:
        raise UserError(f"{where}: empty box (cx={cx}, cy={cy}, w={w}, h={h} on a {width}x{height} photo)")
    return x0, y0, x1, y1


def _resolve(lookup: dict[str, str], name: str, where: str) -> str:
    """The ``image_sizes`` key of a photo named by a box: YOLO boxes need its size."""
    key = lookup.get(name) or lookup.get(Path(name).stem)
    if key is None:
        raise UserError(f"{where}: no photo {name!r} in the catalog (YOLO boxes need its size)")
    return key


def _yolo_label_rows(folder: Path, image_sizes: Mapping[str, tuple[int, int]], source: str) -> list[tuple]:
    """Box rows from a folder of ``<image stem>.txt`` label files, one ``class cx cy w h`` per line."""
    lookup = _size_lookup(image_sizes)
    rows = []
    for f in sorted(folder.glob("*.txt")):
        try:
            lines = f.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError:
            raise UserError(f"{f}: not a YOLO label file (not UTF-8 text)") from None
        except OSError as e:
            raise UserError(f"cannot read YOLO label file {f}: {e.strerror or e}") from None
        for ln, text in enumerate(lines, start=1):
            if not text.strip():
                continue
            where = f"{f}:{ln}"
            parts = text.split()
            if len(parts) < 5:
                raise UserError(f"{where}: expected 'class cx cy w h', got {text[:80]!r}")
            cx, cy, w, h = _coords(parts[1:5], where, "cx cy w h")
            key = _resolve(lookup, f.stem, where)
            W, H = image_sizes[key]
            rows.append((key, *_yolo_to_pixels(cx, cy, w, h, W, H, where), source))
    return rows


def _yolo_csv_rows(path: Path, image_sizes: Mapping[str, tuple[int, int]], source: str) -> list[tuple]:
    """Box rows from a CSV with columns ``image, cx, cy, w, h`` (optional ``source``)."""
    lookup = _size_lookup(image_sizes)
    raw, lines = read_table_lines(path, what="YOLO box CSV")
    missing = {"image", "cx", "cy", "w", "h"} - set(raw.columns)
    if missing:
        raise UserError(f"{path}: missing columns {sorted(missing)}")
    rows = []
    for i, r in raw.iterrows():
        where = f"{path}:{lines[i]}"
        if r.isna().all():
            continue  # a row of empty cells
        if _is_blank(r["image"]):
            raise UserError(f"{where}: no image name")
        key = _resolve(lookup, str(r["image"]), where)
        W, H = image_sizes[key]
        box = _yolo_to_pixels(*_coords([r[c] for c in ("cx", "cy", "w", "h")], where, "cx cy w h"), W, H, where)
        rows.append((key, *box, _source(r["source"] if "source" in raw.columns else None, where, source)))
    return rows


def read_yolo_boxes(
    path: str | Path, image_sizes: Mapping[str, tuple[int, int]], source: str | None = None
) -> pd.DataFrame:
    """Read YOLO-normalised boxes and convert them to clipped pixel boxes.

    ``path`` is a folder of ``<image stem>.txt`` label files (``class cx cy w h``
    per line) or a CSV with columns ``image, cx, cy, w, h`` (optional
    ``source``). ``image_sizes`` maps image name -> ``(width, height)``; the
    YOLO format stores no size, so it is needed for the conversion. Values
    outside [0, 1] (beyond 1e-3) almost always mean pixel coordinates were
    mislabelled as YOLO, so they raise ``ValueError`` naming file and line.
    ``source`` defaults to the folder/file stem.
    """
    path = Path(path)
    src_default = _source(source, f"{path}: source", _default_source(path))
    read = _yolo_label_rows if path.is_dir() else _yolo_csv_rows
    return _box_table(read(path, image_sizes, src_default))


def validate_boxes(df: pd.DataFrame, image_sizes: Mapping[str, tuple[int, int]]) -> pd.DataFrame:
    """Clip boxes to their image and reject degenerate ones.

    Detectors routinely return boxes a few pixels past the border; those are
    clipped (count in ``out.attrs["n_clipped"]`` and a logged warning).
    A box with ``x0 >= x1`` or ``y0 >= y1`` (before or after clipping, e.g.
    entirely outside the image) raises :class:`UserError` naming the image, as
    do an image missing from ``image_sizes`` and a source that cannot name a
    folder. Returns a new DataFrame.
    """
    lookup = _size_lookup(image_sizes)
    out = df.copy()
    n_clipped = 0
    for i, r in out.iterrows():
        name = str(r["image"])
        key = lookup.get(name) or lookup.get(Path(name).stem)
        if key is None:
            raise UserError(f"box for image {name!r}: image size unknown")
        W, H = image_sizes[key]
        _source(r["source"], f"box for image {name!r}")
        x0, y0, x1, y1 = (int(r[c]) for c in ("x0", "y0", "x1", "y1"))
        if x0 >= x1 or y0 >= y1:
            raise UserError(f"degenerate box for image {name!r}: ({x0}, {y0}, {x1}, {y1})")
        c = (max(0, x0), max(0, y0), min(W, x1), min(H, y1))
        if c[0] >= c[2] or c[1] >= c[3]:
            raise UserError(f"box for image {name!r} ({x0}, {y0}, {x1}, {y1}) lies outside the {W}x{H} image")
        if c != (x0, y0, x1, y1):
            n_clipped += 1
            out.loc[i, ["x0", "y0", "x1", "y1"]] = c
    for col in ["x0", "y0", "x1", "y1"]:
        out[col] = out[col].astype("int64")
    out.attrs["n_clipped"] = n_clipped
    if n_clipped:
        log.warning("clipped %d box(es) to their image", n_clipped)
    return out


def source_weights(present: Iterable[str], probabilities: Mapping[str, float]) -> dict[str, float]:
    """How often each of one photo's crops is shown in training, summing to 1.

    Mixing crops (1st place: body 60 %, fin 15 %, others, full image) is a strong
    augmentation. ``probabilities`` maps source -> weight; the special source ``"full"``
    (the whole photo) is always available. Sources absent for this photo are dropped and
    the remaining weights renormalised; with nothing left the photo is shown whole.
    """
    for s, p in probabilities.items():
        if p < 0 or not math.isfinite(p):
            raise UserError(f"probability for source {s!r} must be >= 0, got {p}")
    available = set(present) | {FULL}
    kept = {s: float(p) for s, p in probabilities.items() if p > 0 and s in available}
    total = sum(kept.values())
    return {s: p / total for s, p in kept.items()} if kept else {FULL: 1.0}


def read_boxes(path: str | Path, photos: Mapping[str, str | Path]) -> pd.DataFrame:
    """Any box file a user hands the CLI, as a validated box table for these photos.

    A folder, or a CSV with ``cx`` columns, is read as YOLO (sizes from the photos'
    headers, upright as :func:`whaleid.data.images.open_image` shows them); any other CSV as
    pixel boxes. ``photos`` maps image name -> path. Pixel boxes of other photos are
    dropped (YOLO ones must all be in ``photos``); the rest are clipped to their photo.
    """
    from PIL import Image

    path = Path(path)
    sizes: dict[str, tuple[int, int]] = {}
    for name, file in photos.items():
        try:
            with Image.open(file) as im:
                w, h = im.size
                turned = im.getexif().get(0x0112) in (5, 6, 7, 8)  # EXIF orientation: quarter turn
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            continue  # unreadable photos get their error row elsewhere
        sizes[name] = (h, w) if turned else (w, h)
    yolo = path.is_dir() or "cx" in read_table(path, what="box CSV").columns
    boxes = read_yolo_boxes(path, sizes) if yolo else read_pixel_boxes(path)
    try:
        return validate_boxes(boxes[boxes["image"].isin(sizes)], sizes)
    except UserError as e:
        raise UserError(f"{path}: {e}") from None
