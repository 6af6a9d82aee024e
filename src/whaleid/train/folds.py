"""k-fold training: one model per fold, each validated on the photos it never saw."""

from __future__ import annotations

from numbers import Integral
from pathlib import Path

from whaleid.data.catalog import Catalog
from whaleid.data.splits import kfold, split_fold
from whaleid.errors import UserError
from whaleid.files import atomic_path
from whaleid.train.config import TrainConfig
from whaleid.train.loop import TrainResult, train

__all__ = ["train_folds"]


def train_folds(
    catalog: Catalog,
    config: TrainConfig,
    out_dir: str | Path,
    folds: int,
    resume: bool = False,
    progress: bool = True,
    preprocess: dict | None = None,
    extra: dict | None = None,
) -> list[TrainResult]:
    """One model per fold in ``out_dir/fold<i>``, each validated on its held-out fold: an ensemble's members.

    ``out_dir/folds.csv`` records which fold each photo was held out in.
    """
    if isinstance(folds, bool) or not isinstance(folds, Integral) or folds < 2:
        raise UserError(
            f"--folds must be an integer >= 2 (one model per fold), got {folds!r}; for one model, leave it out"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    assignment = kfold(catalog, folds, config.seed)
    with atomic_path(out_dir / "folds.csv") as tmp:
        catalog.table[["image", "individual_id"]].assign(fold=assignment).to_csv(tmp, index=False)
    results = []
    for fold in range(folds):
        fit, held = split_fold(catalog, assignment, fold)
        results.append(
            train(
                fit,
                config,
                out_dir / f"fold{fold}",
                val_catalog=held,
                resume=resume,
                progress=progress,
                preprocess=preprocess,
                extra=extra,
            )
        )
    return results
