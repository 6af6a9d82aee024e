"""Filling a crop cache (:mod:`whaleid.preprocess.cache`): photos located, cropped and written on a thread
pool, each journalled as it finishes, so an interrupted run resumes where it stopped."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
from filelock import FileLock, Timeout
from PIL import Image

from whaleid.data.catalog import Catalog
from whaleid.data.images import check_image
from whaleid.errors import UserError
from whaleid.files import atomic_path, disk_full_as_user_error
from whaleid.preprocess.boxes import FULL, SOURCE_PATTERN
from whaleid.preprocess.cache import (
    CACHE_FORMAT,
    DEFAULT_ROOT,
    JOURNAL_COLUMNS,
    SALIENCY,
    Cache,
    CacheSettings,
    boxes_digest,
    cache_key,
    cached_name,
    read_journal,
    read_manifest,
)
from whaleid.preprocess.crops import (
    CROP_COLUMNS,
    Located,
    crop_row,
    locate,
    mask_name,
    problem_rows,
    save_mask,
    write_crop_table,
)
from whaleid.preprocess.saliency import remove_background

__all__ = ["build_cache", "cached_catalog"]

log = logging.getLogger(__name__)


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
        file = cached_name(name)
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
        "boxes": boxes_digest(boxes),
        "sources": sources,
        "complete": False,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    if manifest_path.exists():
        try:
            before = read_manifest(manifest_path)
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
    journal = read_journal(journal_path)
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
