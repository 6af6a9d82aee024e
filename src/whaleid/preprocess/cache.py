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
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
from filelock import FileLock, Timeout
from PIL import Image

from whaleid.data.catalog import Catalog
from whaleid.data.images import check_image
from whaleid.errors import UserError
from whaleid.files import atomic_path, disk_full_as_user_error, safe_name
from whaleid.preprocess.boxes import FULL, SOURCE_PATTERN, source_weights
from whaleid.preprocess.crops import (
    CROP_COLUMNS,
    CropSettings,
    Located,
    crop_row,
    locate,
    mask_name,
    problem_rows,
    save_mask,
    write_crop_table,
)
from whaleid.preprocess.saliency import BACKGROUND_MODES, remove_background
from whaleid.settings import from_dict

__all__ = [
    "CACHE_FORMAT",
    "CROP_MODES",
    "DEFAULT_ROOT",
    "SALIENCY",
    "Cache",
    "CacheSettings",
    "build_cache",
    "cache_key",
    "cached_catalog",
]

log = logging.getLogger(__name__)

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


def _boxes_digest(boxes: pd.DataFrame | None) -> str | None:
    if boxes is None:
        return None
    ordered = boxes[["image", "x0", "y0", "x1", "y1", "source"]].sort_values(["image", "source", "x0", "y0"])
    return hashlib.sha1(ordered.to_csv(index=False).encode()).hexdigest()


def cache_key(settings: CacheSettings, images_dir: str | Path, boxes: pd.DataFrame | None = None) -> str:
    """Short hash naming a cache: same photos + same settings (sizes aside) + same boxes = same folder."""
    crops = {k: v for k, v in settings.to_dict().items() if k != "sizes"}
    images = str(Path(images_dir).resolve())
    blob = json.dumps(
        {"format": CACHE_FORMAT, "settings": crops, "images": images, "boxes": _boxes_digest(boxes)}, sort_keys=True
    )
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def _stat(path: str) -> tuple[int, int]:
    try:
        st = Path(path).stat()
    except OSError:
        return -1, -1
    return int(st.st_size), int(st.st_mtime_ns)


def _resize_longest(image: Image.Image, side: int) -> Image.Image:
    """Longest side to ``side`` keeping the aspect; never upscale (training resizes anyway)."""
    w, h = image.size
    scale = side / max(w, h)
    if scale >= 1.0:
        return image
    return image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.LANCZOS)


def _largest_boxes(boxes: pd.DataFrame) -> dict[str, dict[str, tuple[int, int, int, int]]]:
    """image -> source -> box; where a source has several boxes for one photo the largest is kept."""
    area = (boxes["x1"] - boxes["x0"]) * (boxes["y1"] - boxes["y0"])
    ordered = boxes.assign(_area=area).sort_values("_area", ascending=False).drop_duplicates(["image", "source"])
    out: dict[str, dict[str, tuple[int, int, int, int]]] = {}
    for r in ordered.itertuples():
        out.setdefault(str(r.image), {})[str(r.source)] = (int(r.x0), int(r.y0), int(r.x1), int(r.y1))
    return out


class Cache:
    """A finished (or partial) cache folder: maps catalog photos to their cached files."""

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        manifest = self.dir / "manifest.json"
        if not manifest.exists():
            raise FileNotFoundError(f"{self.dir} is not a whaleid cache (no manifest.json)")
        self.manifest = _read_manifest(manifest)
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
        return _read_journal(self.dir / "journal.csv")

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


def _read_manifest(path: Path) -> dict:
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        manifest = None
    if not isinstance(manifest, dict):
        raise UserError(f"{path}: damaged cache manifest; delete the folder {path.parent} and run again")
    return manifest


def _read_journal(path: Path) -> pd.DataFrame:
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
    named = (table["image"].map(_cached_name).eq(table["file"]) & table["source"].str.fullmatch(SOURCE_PATTERN)) | (
        error & table["file"].eq("") & table["source"].eq("")
    )
    masks = table["mask"].eq("") | table["image"].map(mask_name).eq(table["mask"])
    return table[named & masks].reset_index(drop=True)


def _cached_name(image: str) -> str:
    """File name of a cached photo: never a path, however the image is named."""
    return safe_name(image, ".jpg")


def _write_photo(
    found: Located,
    name: str,
    sources: dict[str, tuple[int, int, int, int]],
    settings: CacheSettings,
    directory: Path,
    mask_file: str,
    stat: tuple[int, int],
) -> list[dict]:
    """Cut, resize and (optionally) remove the background of one photo for every source and size."""
    base = crop_row(name, found, mask_file)
    rows = []
    for source, box in sources.items():
        region = found.image.crop(box)
        big = _resize_longest(region, settings.sizes[0])
        if settings.background is not None:
            x0, y0, x1, y1 = box
            small_mask = np.asarray(
                Image.fromarray(found.mask[y0:y1, x0:x1]).resize(big.size, Image.Resampling.BILINEAR)
            )
            big = remove_background(big, small_mask, settings.background, settings.feather, settings.grayscale)
        elif settings.grayscale:
            big = big.convert("L").convert("RGB")
        file = _cached_name(name)
        for size in settings.sizes:
            with atomic_path(directory / str(size) / source / file) as tmp:
                _resize_longest(big, size).save(tmp, format="JPEG", quality=settings.quality)
        x0, y0, x1, y1 = box
        rows.append(
            {
                **base,
                "x0": x0,
                "y0": y0,
                "x1": x1,
                "y1": y1,
                "source": source,
                "file": file,
                "src_bytes": stat[0],
                "src_mtime": stat[1],
            }
        )
    return rows


def _done(journal: pd.DataFrame, catalog: Catalog, directory: Path, sizes: tuple[int, ...]) -> set[str]:
    """Photos whose journal rows match the photo on disk and whose files, at every size, are readable images.

    A cached file damaged on disk is redone here, not found unreadable later (which would
    drop the photo from training).
    """
    stats = dict(zip(catalog.table["image"].astype(str), map(_stat, catalog.paths)))
    done = set()
    for name, rows in journal.groupby("image"):
        if name not in stats or any((int(r.src_bytes), int(r.src_mtime)) != stats[name] for r in rows.itertuples()):
            continue
        files = [directory / str(s) / r.source / r.file for r in rows.itertuples() if r.file for s in sizes]
        if all(check_image(f) is None for f in files):
            done.add(name)
    return done


def _check_sources(sources: list[str]) -> None:
    """Sources name folders: safe names, and not two that one folder on a case-blind disk (macOS) would hold."""
    bad = [s for s in sources if not SOURCE_PATTERN.fullmatch(s)]
    if bad:
        raise UserError(f"box source {bad[0][:80]!r} must be 1-64 letters, digits, _ or - (it names a cache folder)")
    folded = [s.lower() for s in sources]
    twins = sorted({s for s in sources if folded.count(s.lower()) > 1})
    if twins:
        raise UserError(f"box sources {', '.join(twins)} differ only in case; rename one (they name cache folders)")


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Hold the cache folder for this run; another run into it waits (and then reuses its work)."""
    lock = FileLock(directory / ".lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.warning("another whaleid run is filling the cache %s; waiting for it to finish", directory)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def build_cache(
    catalog: Catalog,
    root: str | Path,
    settings: CacheSettings = CacheSettings(),
    boxes: pd.DataFrame | None = None,
    batch_size: int = 8,
    workers: int = 2,
    progress: bool = True,
) -> Cache:
    """Fill (or finish) the cache of ``catalog`` under ``root``; photos already cached are skipped.

    ``boxes`` (from :mod:`whaleid.preprocess.boxes`) is required with ``crop="boxes"``. Sizes
    cached by earlier runs are kept and written for new photos too. The returned
    cache's ``stats`` say how many photos were new, reused and failed.
    """
    if (settings.crop == "boxes") != (boxes is not None):
        raise ValueError("external boxes are needed exactly when crop='boxes'")
    if settings.crop == "boxes":
        sources = sorted(set(boxes["source"].astype(str)) - {FULL}) + [FULL]
        _check_sources(sources)
    else:
        sources = [SALIENCY if settings.crop == SALIENCY else FULL]
    directory = Path(root) / cache_key(settings, catalog.images_dir, boxes)
    with disk_full_as_user_error(directory):  # each file says which it was; this covers the folder and lock
        directory.mkdir(parents=True, exist_ok=True)
        with _locked(directory):
            return _fill(catalog, directory, settings, sources, boxes, batch_size, workers, progress)


def _fill(
    catalog: Catalog,
    directory: Path,
    settings: CacheSettings,
    sources: list[str],
    boxes: pd.DataFrame | None,
    batch_size: int,
    workers: int,
    progress: bool,
) -> Cache:
    """The work of :func:`build_cache`, with the cache folder held."""
    manifest, settings = _open_manifest(catalog, directory, settings, sources, boxes)
    done, todo = _open_journal(catalog, directory, settings)
    new = _write_photos(catalog, directory, settings, todo, boxes, batch_size, workers, progress)
    cache = Cache(directory)
    table = pd.concat(
        [cache.crop_table(), pd.DataFrame(problem_rows(catalog), columns=CROP_COLUMNS)], ignore_index=True
    )
    write_crop_table(table, directory)
    errors = int(table["status"].str.startswith("error").sum())
    manifest.update(
        complete=True,
        updated=time.strftime("%Y-%m-%dT%H:%M:%S"),
        counts={"photos": len(table), "new": new, "reused": len(done), "errors": errors},
    )
    with atomic_path(directory / "manifest.json") as tmp:
        tmp.write_text(json.dumps(manifest, indent=2))
    cache.manifest, cache.stats = manifest, dict(manifest["counts"])
    return cache


def _open_manifest(
    catalog: Catalog, directory: Path, settings: CacheSettings, sources: list[str], boxes: pd.DataFrame | None
) -> tuple[dict, CacheSettings]:
    """The manifest marked incomplete (sizes already in the cache kept), and the settings with those sizes."""
    manifest_path = directory / "manifest.json"
    manifest = {
        "format": CACHE_FORMAT,
        "images_dir": str(Path(catalog.images_dir).resolve()),
        "boxes": _boxes_digest(boxes),
        "sources": sources,
        "complete": False,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    if manifest_path.exists():
        try:
            before = _read_manifest(manifest_path)
        except UserError as error:  # the journal and the files are checked anyway: start the manifest again
            log.warning("%s", error)
            before = {}
        manifest["created"] = before.get("created", manifest["created"])
        settings = replace(settings, sizes=(*settings.sizes, *before.get("settings", {}).get("sizes", ())))
    manifest["settings"] = settings.to_dict()
    with atomic_path(manifest_path) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2))
    return manifest, settings


def _open_journal(catalog: Catalog, directory: Path, settings: CacheSettings) -> tuple[set, list[int]]:
    """The photos already done (their journal rows kept, stale ones dropped) and the rows still to do."""
    journal_path = directory / "journal.csv"
    journal = _read_journal(journal_path)
    done = _done(journal, catalog, directory, settings.sizes)
    names = catalog.table["image"].astype(str).tolist()
    todo = [i for i, n in enumerate(names) if n not in done]
    journal = journal[journal["image"].isin(done)]
    with atomic_path(journal_path) as tmp:  # drop stale rows (changed or half-written photos) before appending
        journal.to_csv(tmp, index=False, columns=JOURNAL_COLUMNS)
    return done, todo


def _write_photos(
    catalog: Catalog,
    directory: Path,
    settings: CacheSettings,
    todo: list[int],
    boxes: pd.DataFrame | None,
    batch_size: int,
    workers: int,
    progress: bool,
) -> int:
    """Locate, crop and write the ``todo`` photos on a thread pool, journalling each as it finishes; returns how many."""
    journal_path = directory / "journal.csv"
    names = catalog.table["image"].astype(str).tolist()
    by_image = _largest_boxes(boxes) if boxes is not None else {}
    crop_settings = settings.saliency if settings.needs_saliency else None
    new = 0
    with journal_path.open("a", newline="") as log_file, ThreadPoolExecutor(max(1, workers)) as pool:
        pending: deque[Future] = deque()

        def drain(limit: int) -> None:
            nonlocal new
            while len(pending) > limit:
                rows = pending.popleft().result()
                with disk_full_as_user_error(journal_path):
                    pd.DataFrame(rows, columns=JOURNAL_COLUMNS).to_csv(log_file, header=False, index=False)
                    log_file.flush()
                new += 1

        paths = [catalog.paths[i] for i in todo]
        for found in locate(paths, crop_settings, batch_size, workers, progress, desc="cache"):
            name, path = names[todo[found.index]], paths[found.index]
            stat = _stat(path)
            if found.error is not None:
                row = {**crop_row(name, found), "source": "", "file": "", "src_bytes": stat[0], "src_mtime": stat[1]}
                pending.append(_resolved([row]))
            else:
                mask_file = ""
                if found.mask is not None:
                    mask_file = mask_name(name)
                    save_mask(found.mask, directory / mask_file)
                w, h = found.image.size
                if settings.crop == SALIENCY:
                    photo_sources = {SALIENCY: found.crop.box}
                else:  # "none", or the photo's external boxes: both keep the whole photo too
                    photo_sources = {**by_image.get(name, {}), FULL: (0, 0, w, h)}
                pending.append(
                    pool.submit(_write_photo, found, name, photo_sources, settings, directory, mask_file, stat)
                )
            drain(2 * batch_size)
        drain(0)
    return new


def cached_catalog(
    catalog: Catalog,
    settings: CacheSettings,
    root: str | Path = DEFAULT_ROOT,
    boxes: pd.DataFrame | None = None,
    source: str | None = None,
    probabilities: dict[str, float] | None = None,
    progress: bool = True,
) -> Catalog:
    """The catalog as training or embedding should read it: built (or reused) cache, paths swapped."""
    cache = build_cache(catalog, root, settings, boxes=boxes, progress=progress)
    return cache.catalog(catalog, min(settings.sizes), source=source, probabilities=probabilities)


def _resolved(value) -> Future:
    future: Future = Future()
    future.set_result(value)
    return future
