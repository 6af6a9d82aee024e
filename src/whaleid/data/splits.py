"""Splits for validation, all deterministic for a given ``seed``.

:func:`kfold` (stratified by individual), :func:`open_set_split` (whole individuals held
out: they are "new"), :func:`holdout_photos` (some photos of known individuals held out:
they are "known") and :func:`min_photos`; and the open-set split every experiment uses,
:class:`OpenSetSplit`: fit (trained on), val (chooses), test (scored). Individuals are held
out whole (their photos are "new" queries), and optionally some photos of the remaining
individuals too ("known" queries, Happywhale-style); the training part is cut again the
same way for validation. The test part is never used for any choice.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from whaleid.data.catalog import Catalog
from whaleid.data.checks import CatalogError
from whaleid.errors import UserError
from whaleid.files import atomic_path

__all__ = [
    "OpenSetSplit",
    "holdout_photos",
    "kfold",
    "min_photos",
    "open_set_split",
    "split_fold",
    "write_folds",
]


def _require_labels(catalog: Catalog, what: str) -> pd.Series:
    ids = catalog.table["individual_id"]
    if len(catalog) == 0:
        raise CatalogError(f"{what}: the catalog has no photos")
    if ids.isna().any():
        raise CatalogError(f"{what} needs an individual_id on every photo; {int(ids.isna().sum())} have none")
    return ids


def _groups(catalog: Catalog, rng: np.random.Generator) -> list[np.ndarray]:
    """Row positions per individual, individuals and their photos in seeded random order.

    Shuffling starts from ids and image names in sorted order, so a split depends on
    the seed and the catalog's content, not on the order of the CSV's rows.
    """
    codes, _ = pd.factorize(catalog.table["individual_id"], sort=True)
    names = catalog.table["image"].astype(str).to_numpy()
    order = np.lexsort((names, codes))
    bounds = np.flatnonzero(np.diff(codes[order])) + 1
    groups = np.split(order, bounds)
    return [rng.permutation(groups[i]) for i in rng.permutation(len(groups))]


def kfold(catalog: Catalog, k: int = 5, seed: int = 0) -> np.ndarray:
    """Fold number (0..k-1) for each row, stratified by individual.

    Each individual's photos are spread over the folds as evenly as possible: one with
    ``c`` photos has ``c // k`` in every fold and its ``c % k`` remaining photos in the
    folds that are smallest at that moment (ties broken at random), which also keeps
    fold sizes within 1 of each other. Nothing is dropped, however few photos an
    individual has (unlike sklearn's StratifiedKFold, which warns or fails when a class
    has fewer than ``k`` members).

    What this means for validation on fold ``f`` (train on the others): an individual
    with fewer than ``k`` photos is missing from some folds, and one with a **single**
    photo is only ever in one fold, where its photo has no match in the training part:
    the right answer for it is ``new_individual``. Such rows play the role of
    Happywhale's new individuals; :func:`split_fold` gives the parts to compute this.
    """
    if k < 2:
        raise UserError(f"k-fold needs at least 2 folds, got {k} (0 folds means no k-fold)")
    _require_labels(catalog, "kfold")
    if k > len(catalog):
        raise UserError(f"{k} folds for only {len(catalog)} photos: use at most {len(catalog)} folds")
    rng = np.random.default_rng(seed)
    folds = np.empty(len(catalog), dtype=np.int64)
    sizes = np.zeros(k, dtype=np.int64)
    base = np.arange(k)
    for rows in _groups(catalog, rng):
        q, r = divmod(len(rows), k)
        extra = np.argsort(sizes + rng.random(k) * 0.5, kind="stable")[:r]
        folds[rows] = np.concatenate([np.tile(base, q), extra])
        sizes += q
        sizes[extra] += 1
    return folds


def split_fold(catalog: Catalog, folds: np.ndarray, fold: int) -> tuple[Catalog, Catalog]:
    """(train, valid) for one fold of :func:`kfold`; labels unchanged in both."""
    folds = np.asarray(folds)
    if folds.shape != (len(catalog),):
        raise ValueError(f"folds has shape {folds.shape}, catalog has {len(catalog)} rows")
    valid = folds == fold
    return catalog.subset(~valid), catalog.subset(valid)


def open_set_split(catalog: Catalog, new_fraction: float = 0.3, seed: int = 0) -> tuple[Catalog, Catalog]:
    """(known, new): about ``new_fraction`` of the *individuals* held out whole.

    No individual is in both parts; each part has at least one individual. Use the new
    part as queries whose right answer is ``new_individual``. Labels unchanged.
    """
    if not 0 < new_fraction < 1:
        raise UserError(
            f"new_fraction must be above 0 and below 1, got {new_fraction}: it is the share of "
            "individuals held out as new (0.3 holds out about 30 %)"
        )
    ids = _require_labels(catalog, "open_set_split")
    uniques = np.array(sorted(ids.unique()), dtype=object)
    if len(uniques) < 2:
        raise CatalogError(
            f"split needs at least 2 individuals (one known, one held out as new); the catalog has {len(uniques)}"
        )
    n_new = min(len(uniques) - 1, max(1, round(new_fraction * len(uniques))))
    rng = np.random.default_rng(seed)
    new_ids = set(uniques[rng.choice(len(uniques), n_new, replace=False)])
    is_new = ids.isin(new_ids).to_numpy()
    return catalog.subset(~is_new), catalog.subset(is_new)


def holdout_photos(catalog: Catalog, fraction: float = 0.2, seed: int = 0) -> tuple[Catalog, Catalog]:
    """(rest, held): about ``fraction`` of the photos of individuals with 2+ photos held out.

    Every individual keeps at least one photo in ``rest``, so each held photo is a
    "known" query (its individual is in the reference set). Single-photo individuals
    stay in ``rest``. ``fraction`` counts over the photos of individuals with 2+
    photos; the held photos are drawn uniformly among those that may go. Labels unchanged.
    """
    if not 0 < fraction < 1:
        raise UserError(f"fraction of photos held out must be above 0 and below 1, got {fraction}")
    _require_labels(catalog, "holdout_photos")
    rng = np.random.default_rng(seed)
    candidates: list[np.ndarray] = []
    eligible = 0
    for rows in _groups(catalog, rng):
        if len(rows) >= 2:
            eligible += len(rows)
            candidates.append(rows[1:])  # rows[0] (random) always stays
    pool = np.concatenate(candidates) if candidates else np.empty(0, dtype=np.int64)
    n_held = min(len(pool), round(fraction * eligible))
    held = np.zeros(len(catalog), dtype=bool)
    held[rng.choice(pool, n_held, replace=False)] = True
    return catalog.subset(~held), catalog.subset(held)


def min_photos(catalog: Catalog, n: int) -> Catalog:
    """Only the individuals with at least ``n`` photos (unlabelled rows dropped); labels unchanged.

    Raises :class:`CatalogError` when no individual has that many: an empty catalog would
    only fail later, further from its cause.
    """
    ids = catalog.table["individual_id"]
    per = ids.value_counts()
    kept = catalog.subset((ids.map(per) >= n).fillna(False).to_numpy(dtype=bool))
    if len(kept) == 0:
        most = f"the most any has is {int(per.max())}" if len(per) else "no photo has an individual_id"
        raise CatalogError(f"no individual has {n} or more photos ({most}): lower the minimum (--min-photos)")
    return kept


PARTS = ("fit", "val", "test")


def _cut(part: Catalog, new_fraction: float, holdout: float, seed: int) -> tuple[Catalog, Catalog]:
    """(what stays, the queries): individuals held out whole, plus a share of the others' photos."""
    known, new = open_set_split(part, new_fraction, seed=seed)
    if not holdout:
        return known, new
    rest, held = holdout_photos(known, holdout, seed=seed)
    queries = pd.concat([new.table, held.table], ignore_index=True)
    return rest, Catalog(queries, part.images_dir, label_names=part.labels)


@dataclass
class OpenSetSplit:
    fit: Catalog
    val: Catalog
    test: Catalog

    @classmethod
    def make(
        cls,
        catalog: Catalog,
        new_fraction: float = 0.3,
        val_new_fraction: float = 0.2,
        seed: int = 0,
        holdout_fraction: float = 0.0,
        val_holdout_fraction: float = 0.0,
    ) -> OpenSetSplit:
        train_part, test = _cut(catalog, new_fraction, holdout_fraction, seed)
        fit, val = _cut(train_part, val_new_fraction, val_holdout_fraction, seed + 1)
        return cls(fit, val, test)

    @property
    def gallery(self) -> Catalog:
        """All training photos (fit and val): the test queries' gallery."""
        table = pd.concat([self.fit.table, self.val.table], ignore_index=True)
        return Catalog(table, self.fit.images_dir, label_names=self.fit.labels)

    def save(self, directory: Path) -> None:
        """fit.csv / val.csv / test.csv, so each part can be re-used with the CLI commands."""
        directory.mkdir(parents=True, exist_ok=True)
        for name in PARTS:
            with atomic_path(directory / f"{name}.csv") as tmp:
                getattr(self, name).to_csv(tmp)

    def sizes(self) -> dict:
        return {n: {"photos": len(getattr(self, n)), "individuals": getattr(self, n).n_individuals} for n in PARTS}


def write_folds(catalog: Catalog, folds: int, seed: int, path: Path) -> np.ndarray:
    """Each photo's fold (stratified by individual), also written to ``path`` so the assignment can be read later."""
    assignment = kfold(catalog, folds, seed)
    columns = [c for c in ("image", "species", "individual_id") if c in catalog.table]
    with atomic_path(path) as tmp:
        catalog.table[columns].assign(fold=assignment).to_csv(tmp, index=False)
    return assignment
