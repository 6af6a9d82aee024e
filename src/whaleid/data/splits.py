"""The open-set split every experiment uses: fit (trained on), val (chooses), test (scored).

Individuals are held out whole (their photos are "new" queries), and optionally some photos
of the remaining individuals too ("known" queries, Happywhale-style); the training part is
cut again the same way for validation. The test part is never used for any choice.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from whaleid.data.catalog import Catalog, holdout_photos, kfold, open_set_split
from whaleid.files import atomic_path

__all__ = ["OpenSetSplit", "write_folds"]

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
