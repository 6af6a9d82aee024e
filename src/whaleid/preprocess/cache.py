"""A cache of cropped, resized (optionally background-removed) photos, so training reads small files.

Saliency and decoding full-resolution sea photos cost far more than a training step, so
they are done once. A cache lives in ``<root>/<key>/`` where the key hashes the settings
(all but the sizes), the photo folder and any external boxes: changed settings give a
new cache, never a silently stale one, while a run asking for another size adds it to
the cache of the same crops. Inside: ``manifest.json`` (settings with every size
written so far, sources, counts), ``<size>/<source>/<file>`` where the file is the
photo's :func:`whaleid.files.safe_name` (image names come from users: they may be
absolute or climb out with ``../``), ``journal.csv`` (one line per finished photo and
source with its image name and file, appended as the work goes, which makes an
interrupted run resumable), and at the end ``crops.csv`` / ``failures.csv`` and
``masks/`` for the explorer. One run at a time works in a cache folder (a lock file);
a second one waits, then reuses what the first made.

Sources are the crops kept per photo: ``saliency`` (box from the saliency mask),
``full`` (the whole photo), or one per external box source (e.g. ``body``, ``fin``)
plus ``full``; training can sample among them (:func:`whaleid.preprocess.boxes.source_weights`).

This module is the layout and reading a cache; :mod:`whaleid.preprocess.cache_writer` fills one.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from whaleid.data.catalog import Catalog
from whaleid.errors import UserError
from whaleid.files import safe_name
from whaleid.preprocess.boxes import FULL, SOURCE_PATTERN, source_weights
from whaleid.preprocess.crops import CROP_COLUMNS, CropSettings, mask_name
from whaleid.preprocess.saliency import BACKGROUND_MODES
from whaleid.settings import from_dict

__all__ = [
    "CACHE_FORMAT",
    "CROP_MODES",
    "DEFAULT_ROOT",
    "JOURNAL_COLUMNS",
    "SALIENCY",
    "Cache",
    "CacheSettings",
    "boxes_digest",
    "cache_key",
    "cached_name",
    "read_journal",
    "read_manifest",
]

#: 2: files named by :func:`whaleid.files.safe_name`, sizes outside the key.
CACHE_FORMAT = "whaleid.cache/2"


CROP_MODES = ("none", "saliency", "boxes")


SALIENCY = "saliency"


#: Where caches go unless told otherwise (ignored by git).
DEFAULT_ROOT = Path(".cache/whaleid")


JOURNAL_COLUMNS = ["source", "file", *CROP_COLUMNS, "src_bytes", "src_mtime"]


@dataclass(frozen=True)
class CacheSettings:
    """Everything that changes the cached pixels; all of it but ``sizes`` goes into the cache key."""

    sizes: tuple[int, ...] = (256,)
    crop: str = SALIENCY
    saliency: CropSettings = field(default_factory=CropSettings)
    background: str | None = None
    feather: float = 0.02
    grayscale: bool = False
    quality: int = 92

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "sizes", tuple(sorted({int(s) for s in self.sizes}, reverse=True)))
        except (TypeError, ValueError):
            raise UserError(f"cache sizes must be whole numbers of pixels, got {self.sizes!r}") from None
        if not self.sizes or min(self.sizes) < 16:
            raise UserError(f"cache sizes must be >= 16 pixels, got {self.sizes}")
        if self.crop not in CROP_MODES:
            raise UserError(f"unknown crop mode {self.crop!r}; valid: {', '.join(CROP_MODES)}")
        if self.background is not None and self.background not in BACKGROUND_MODES:
            raise UserError(f"unknown background {self.background!r}; valid: {', '.join(BACKGROUND_MODES)}")
        if not 0 <= self.feather <= 1:
            raise UserError(f"feather must be between 0 and 1 (a share of the crop's size), got {self.feather}")
        if not 1 <= self.quality <= 100:
            raise UserError(f"JPEG quality must be between 1 and 100, got {self.quality}")

    @property
    def needs_saliency(self) -> bool:
        return self.crop == SALIENCY or self.background is not None

    def to_dict(self) -> dict:
        return asdict(self)


def boxes_digest(boxes: pd.DataFrame | None) -> str | None:
    if boxes is None:
        return None
    ordered = boxes[["image", "x0", "y0", "x1", "y1", "source"]].sort_values(["image", "source", "x0", "y0"])
    return hashlib.sha1(ordered.to_csv(index=False).encode()).hexdigest()


def cache_key(settings: CacheSettings, images_dir: str | Path, boxes: pd.DataFrame | None = None) -> str:
    """Short hash naming a cache: same photos + same settings (sizes aside) + same boxes = same folder."""
    crops = {k: v for k, v in settings.to_dict().items() if k != "sizes"}
    images = str(Path(images_dir).resolve())
    blob = json.dumps(
        {"format": CACHE_FORMAT, "settings": crops, "images": images, "boxes": boxes_digest(boxes)}, sort_keys=True
    )
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


class Cache:
    """A finished (or partial) cache folder: maps catalog photos to their cached files."""

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        manifest = self.dir / "manifest.json"
        if not manifest.exists():
            raise FileNotFoundError(f"{self.dir} is not a whaleid cache (no manifest.json)")
        self.manifest = read_manifest(manifest)
        if self.manifest.get("format") != CACHE_FORMAT:
            raise UserError(f"{manifest}: unknown cache format {self.manifest.get('format')!r}; build the cache again")
        self.settings = from_dict(CacheSettings, self.manifest["settings"], "cache")
        self.stats: dict[str, int] = dict(self.manifest.get("counts", {}))

    @property
    def sources(self) -> list[str]:
        return list(self.manifest["sources"])

    @property
    def complete(self) -> bool:
        return bool(self.manifest.get("complete"))

    def journal(self) -> pd.DataFrame:
        return read_journal(self.dir / "journal.csv")

    def crop_table(self, source: str | None = None) -> pd.DataFrame:
        """One row per photo, as :mod:`whaleid.preprocess.crops` writes it: the row of ``source``, or of the first source the photo has."""
        journal = self.journal()
        errors = journal["status"].str.startswith("error")
        order = [source] if source else self.sources
        rows = journal[journal["source"].isin(order)].assign(_rank=lambda t: t["source"].map(order.index))
        rows = rows.sort_values("_rank", kind="stable").drop_duplicates("image")
        return pd.concat([rows, journal[errors]], ignore_index=True)[CROP_COLUMNS]

    def _alternatives(self, name: str, files: dict, probabilities: dict[str, float]) -> tuple[tuple[str, float], ...]:
        weights = source_weights([s for s in self.sources if (name, s) in files], probabilities)
        return tuple((files[(name, s)], w) for s, w in weights.items() if (name, s) in files)

    def size_for(self, img_size: int) -> int:
        """The smallest cached size that is at least ``img_size``, else the largest (least upscaling)."""
        fitting = [s for s in self.settings.sizes if s >= img_size]
        return min(fitting) if fitting else max(self.settings.sizes)

    def catalog(
        self,
        catalog: Catalog,
        img_size: int | None = None,
        source: str | None = None,
        probabilities: dict[str, float] | None = None,
    ) -> Catalog:
        """The catalog with ``path`` pointing at cached files; photos with no cached file join ``problems``.

        ``source`` picks the crop used for ``path`` (default: the first source, falling
        back to ``full`` where a photo lacks that box). With ``probabilities`` an
        ``alternatives`` column lists ``(path, weight)`` pairs for training to sample.
        """
        size = self.size_for(img_size) if img_size else max(self.settings.sizes)
        journal = self.journal()
        ok = journal[~journal["status"].str.startswith("error")]
        files = {(r.image, r.source): str(self.dir / str(size) / r.source / r.file) for r in ok.itertuples()}
        source = source or self.sources[0]
        table = catalog.table.copy()
        paths = [files.get((name, source)) or files.get((name, FULL)) for name in table["image"].astype(str)]
        present = np.array([p is not None for p in paths], dtype=bool)
        table["path"] = paths
        if probabilities is not None:
            table["alternatives"] = [
                self._alternatives(name, files, probabilities) for name in table["image"].astype(str)
            ]
        errors = journal[journal["status"].str.startswith("error")].set_index("image")["status"]
        missing = table.loc[~present, ["image"]].assign(
            reason=[errors.get(n, "not in the cache") for n in table.loc[~present, "image"].astype(str)]
        )
        problems = pd.concat([catalog.problems, missing], ignore_index=True)
        return replace(catalog, table=table[present].reset_index(drop=True), problems=problems)


def read_manifest(path: Path) -> dict:
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        manifest = None
    if not isinstance(manifest, dict):
        raise UserError(f"{path}: damaged cache manifest; delete the folder {path.parent} and run again")
    return manifest


def read_journal(path: Path) -> pd.DataFrame:
    """Journal rows; a line cut short by a crash or a full disk is dropped (its photo is simply redone).

    So is a row whose file or mask is not a name this module makes (an edited or foreign
    journal): files are only ever read and written inside the cache folder.
    """
    if not path.exists():
        return pd.DataFrame(columns=JOURNAL_COLUMNS)
    table = pd.read_csv(
        path,
        dtype={"image": str, "source": str, "file": str, "status": str, "mask": str, "src_mtime": str},
        keep_default_na=False,
        on_bad_lines="skip",
        engine="python",
    )
    numeric = ["x0", "y0", "x1", "y1", "width", "height", "mask_area", "score", "src_bytes"]
    table[numeric] = table[numeric].apply(pd.to_numeric, errors="coerce")
    whole = table["src_mtime"].astype(str).str.fullmatch(r"-?\d+")  # nanoseconds: too long for a float
    table = table[whole].dropna(subset=numeric).fillna("")
    error = table["status"].str.startswith("error")
    named = (table["image"].map(cached_name).eq(table["file"]) & table["source"].str.fullmatch(SOURCE_PATTERN)) | (
        error & table["file"].eq("") & table["source"].eq("")
    )
    masks = table["mask"].eq("") | table["image"].map(mask_name).eq(table["mask"])
    return table[named & masks].reset_index(drop=True)


def cached_name(image: str) -> str:
    """File name of a cached photo: never a path, however the image is named."""
    return safe_name(image, ".jpg")
