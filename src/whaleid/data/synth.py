"""Synthetic catalogs of dolphin dorsal fins, so the demo and the end-to-end tests run without real data.

:func:`make_catalog` writes a Happywhale-style catalog of photos drawn by
:mod:`whaleid.data.render` for individuals drawn by :mod:`whaleid.data.fins`. All randomness
flows from explicit seeds: the same seed gives the same bytes.
"""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np

from whaleid.data.fins import FinIdentity
from whaleid.data.render import render_fin
from whaleid.errors import UserError

__all__ = ["make_catalog"]


def _photo_count(rng: np.random.Generator, photos_per_individual: int | tuple[int, int]) -> int:
    """Skewed toward few photos, like real catalogues where many animals are seen once or twice."""
    if isinstance(photos_per_individual, (int, np.integer)):
        return int(photos_per_individual)
    lo, hi = (int(x) for x in photos_per_individual)
    return lo + min(hi - lo, int((hi - lo + 1) * rng.random() ** 1.8))


def make_catalog(
    out_dir: str | Path,
    n_individuals: int = 40,
    photos_per_individual: int | tuple[int, int] = (2, 8),
    size: int = 256,
    seed: int = 0,
    species: str = "bottlenose_dolphin",
    progress: bool = False,
    variation: float = 1.0,
) -> Path:
    """Write a Happywhale-style catalog (images/*.jpg + train.csv) and return the CSV path.

    Each individual and each photo has its own seed stream derived from (seed, index), so a smaller
    catalog is a prefix of a larger one with the same seed.  File names are opaque hashes, as in
    Happywhale, so nothing about identity can leak through them. Lower `variation` gives easier
    photos (steadier pose and light), for runs that must learn in seconds.
    """
    lo, hi = (
        (photos_per_individual,) * 2 if isinstance(photos_per_individual, (int, np.integer)) else photos_per_individual
    )
    if not 1 <= lo <= hi:
        raise UserError(f"photos per individual must satisfy 1 <= min <= max, got {lo} and {hi}")
    out_dir = Path(out_dir)
    images_dir = out_dir / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    width = max(3, len(str(max(n_individuals - 1, 0))))

    jobs: list[tuple[int, int, FinIdentity]] = []
    for i in range(n_individuals):
        identity = FinIdentity.random(np.random.default_rng([seed, 0, i]))
        count = _photo_count(np.random.default_rng([seed, 1, i]), photos_per_individual)
        jobs.extend((i, k, identity) for k in range(count))

    iterator = jobs
    if progress:
        from tqdm import tqdm

        iterator = tqdm(jobs, desc="synth photos", unit="img")

    rows: list[tuple[str, str, str]] = []
    for i, k, identity in iterator:
        rng = np.random.default_rng([seed, 2, i, k])
        name = hashlib.sha1(f"whaleid-synth:{seed}:{i}:{k}".encode()).hexdigest()[:14] + ".jpg"
        render_fin(identity, rng, size, variation).save(images_dir / name, format="JPEG", quality=90)
        rows.append((name, species, f"fin_{i:0{width}d}"))

    rows.sort()
    csv_path = out_dir / "train.csv"
    with csv_path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "species", "individual_id"])
        writer.writerows(rows)
    return csv_path
