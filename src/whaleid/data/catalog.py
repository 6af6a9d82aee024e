"""The catalog: a validated table of photos and who is on them.

A catalog on disk is the Happywhale format: a CSV with ``image,species,individual_id``
and the photos in a folder (``images/`` next to the CSV by default). :func:`read_catalog`
turns it into a :class:`Catalog`:

- problems with the CSV itself (missing, not a regular file, not UTF-8 text,
  unparseable, a row with more or fewer fields than the header, required columns
  absent, empty or duplicate image names, no rows) raise
  :class:`~whaleid.data.checks.CatalogError` at once, naming the file, the columns or
  the lines (:func:`whaleid.files.read_table_lines`, :mod:`whaleid.data.checks`);
- problems with single photos (absent, empty, truncated, not an image, a name with a
  control character or too long for the file system) never stop the run: the row is
  skipped and listed in ``Catalog.problems`` with its reason;
- image names are kept exactly as written (spaces included); ids and species are
  stripped, and missing-value markers (``NaN``, ``N/A``, ``null``, ...) in them mean
  missing;
- species names are cleaned (:mod:`whaleid.data.species`);
- each individual gets an integer ``label`` (its position in the sorted list of ids).

Splits are in :mod:`whaleid.data.splits`, counts for reports in :mod:`whaleid.data.summary`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from whaleid.data.checks import LABEL_COLUMNS, CatalogError, check_photos, check_rows, name_reason
from whaleid.data.species import SPECIES_FIXES, UNKNOWN_SPECIES, clean_species
from whaleid.files import atomic_path, read_table_lines

__all__ = ["Catalog", "read_catalog"]

log = logging.getLogger(__name__)

TABLE_COLUMNS = ("image", "species", "individual_id", "path", "label")
PROBLEM_COLUMNS = ("image", "reason")


def _empty_problems() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series([], dtype=object) for c in PROBLEM_COLUMNS})


@dataclass
class Catalog:
    """Photos with their species and individual, ready for training or querying.

    ``table`` has one row per readable photo with columns ``image`` (name as in the
    CSV), ``species``, ``individual_id`` (None for unlabelled queries), ``path``
    (absolute path as str) and ``label`` (int: index into :attr:`labels`, -1 when
    unlabelled). ``problems`` lists the photos that were listed but skipped
    (``image``, ``reason``). ``label_names`` is the label encoding; leave it None to
    derive it from the table (sorted unique ids).

    :meth:`subset` keeps the label encoding (so labels stay comparable with the
    parent); :meth:`relabel` makes a fresh 0..n-1 encoding over the ids present,
    which is what a training run on a subset needs.
    """

    table: pd.DataFrame
    images_dir: Path
    problems: pd.DataFrame = field(default_factory=_empty_problems)
    label_names: tuple[str, ...] | None = None
    csv_path: Path | None = None

    def __post_init__(self) -> None:
        self.images_dir = Path(self.images_dir)
        missing = [c for c in ("image", "individual_id") if c not in self.table.columns]
        if missing:
            raise CatalogError(f"catalog table lacks column(s) {', '.join(missing)}")
        table = self.table.reset_index(drop=True)
        if "species" not in table.columns:
            table["species"] = UNKNOWN_SPECIES
        if "path" not in table.columns:
            table["path"] = [str((self.images_dir / str(n)).absolute()) for n in table["image"]]
        ids = table["individual_id"].astype(object).where(table["individual_id"].notna(), None)
        table["individual_id"] = ids
        if self.label_names is None:
            self.label_names = tuple(sorted(str(i) for i in ids.dropna().unique()))
            table["label"] = self._encode(ids)
        else:
            self.label_names = tuple(self.label_names)
            if "label" not in table.columns:
                table["label"] = self._encode(ids)
        table["label"] = table["label"].astype(np.int64)
        extra = [c for c in table.columns if c not in TABLE_COLUMNS]
        self.table = table[list(TABLE_COLUMNS) + extra]

    def _encode(self, ids: pd.Series) -> np.ndarray:
        lookup = {name: i for i, name in enumerate(self.label_names or ())}
        return np.array([lookup.get(i, -1) if i is not None else -1 for i in ids], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.table)

    def __repr__(self) -> str:
        return (
            f"Catalog({len(self)} photos, {self.n_individuals} individuals, "
            f"{len(self.problems)} problems, images_dir={str(self.images_dir)!r})"
        )

    @property
    def labels(self) -> list[str]:
        """Individual id for each label index (``labels[row.label] == row.individual_id``)."""
        return list(self.label_names or ())

    @property
    def n_individuals(self) -> int:
        """Distinct individuals present in the table (may be fewer than ``len(labels)``)."""
        return int(self.table["individual_id"].nunique(dropna=True))

    @property
    def has_labels(self) -> bool:
        """True when every photo has an individual id (a training/reference catalog)."""
        return bool(len(self) and self.table["individual_id"].notna().all())

    @property
    def paths(self) -> list[str]:
        return self.table["path"].tolist()

    def encode(self, ids: Sequence[str | None]) -> np.ndarray:
        """Labels for individual ids; ids outside the encoding (and None) give -1."""
        return self._encode(pd.Series(list(ids), dtype=object))

    def decode(self, labels: Sequence[int] | np.ndarray) -> list[str | None]:
        """Individual ids for labels; -1 gives None. Out-of-range labels raise IndexError."""
        names = self.labels
        out: list[str | None] = []
        for lab in np.asarray(labels, dtype=np.int64).ravel():
            if lab == -1:
                out.append(None)
            elif 0 <= lab < len(names):
                out.append(names[lab])
            else:
                raise IndexError(f"label {lab} outside 0..{len(names) - 1}")
        return out

    def subset(self, mask_or_index: Any) -> Catalog:
        """Rows chosen by a boolean mask or by integer positions; labels unchanged.

        The result keeps ``problems`` (they describe the source CSV) and the parent's
        label encoding, so ``labels`` may name individuals absent from the subset.
        """
        sel = mask_or_index
        if isinstance(sel, pd.Series):
            sel = sel.reindex(self.table.index) if sel.dtype == bool else sel.to_numpy()
        sel = np.asarray(sel)
        if sel.dtype == bool:
            if sel.shape != (len(self),):
                raise ValueError(f"mask has shape {sel.shape}, catalog has {len(self)} rows")
            table = self.table.loc[sel]
        else:
            table = self.table.iloc[sel.astype(np.int64)]
        return replace(self, table=table.reset_index(drop=True), label_names=self.label_names)

    def relabel(self) -> Catalog:
        """The same photos with labels 0..n-1 over the individuals present (sorted ids)."""
        return replace(self, table=self.table.drop(columns=["label"]), label_names=None)

    def to_csv(self, path: str | os.PathLike[str]) -> None:
        """Write the Happywhale-format CSV (``image,species,individual_id``), atomically."""
        with atomic_path(path) as tmp:
            self.table[list(LABEL_COLUMNS)].to_csv(tmp, index=False)


def _labelled(df: pd.DataFrame, images_dir: Path, fixes: Mapping[str, str] | None) -> pd.DataFrame:
    """Every row with an id (None when unlabelled), a species (cleaned with ``fixes`` unless None) and a path."""
    if "individual_id" not in df.columns:
        df["individual_id"] = None
    if "species" not in df.columns:
        df["species"] = UNKNOWN_SPECIES
    if fixes is not None:
        df["species"] = clean_species(df["species"], fixes)
    df["species"] = df["species"].astype(object).where(df["species"].notna(), UNKNOWN_SPECIES)
    df["path"] = [str(images_dir / name) for name in df["image"]]
    return df


def _photo_reasons(
    df: pd.DataFrame, images_dir: Path, csv_path: Path, check_images: bool | str, workers: int | None, progress: bool
) -> pd.Series:
    """Why each row's photo is unusable (None if it is fine), as hard as ``check_images`` says."""
    reasons = pd.Series([name_reason(name) for name in df["image"]], dtype=object)
    if check_images:
        if not os.path.isdir(images_dir):
            raise CatalogError(
                f"images folder not found: {images_dir} (for {csv_path}; pass images_dir=..., "
                "or check_images=False to read the CSV alone)"
            )
        named = reasons.isna().to_numpy()
        reasons[named] = check_photos(df["path"][named].tolist(), check_images, workers, progress)
    return reasons


def _skip_problems(
    df: pd.DataFrame, reasons: pd.Series, csv_path: Path, images_dir: Path
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(rows kept, problems): unusable photos are listed and logged, unless none is left."""
    bad = reasons.notna().to_numpy()
    if not bad.any():
        return df, _empty_problems()
    problems = pd.DataFrame({"image": df["image"].to_numpy()[bad], "reason": reasons[bad].to_numpy()})
    detail = ", ".join(f"{r}: {n}" for r, n in problems["reason"].value_counts().items())
    if bad.all():
        raise CatalogError(
            f"no readable photo: all {len(df)} photos listed in {csv_path} were "
            f"skipped ({detail}); images folder: {images_dir}"
        )
    log.warning(
        "skipped %d of %d photos listed in %s (%s); see Catalog.problems",
        int(bad.sum()),
        len(df),
        csv_path,
        detail,
    )
    return df.loc[~bad], problems


def read_catalog(
    csv_path: str | os.PathLike[str],
    images_dir: str | os.PathLike[str] | None = None,
    *,
    clean: bool = True,
    species_fixes: Mapping[str, str] | None = None,
    check_images: bool | Literal["exists"] = True,
    require_labels: bool = True,
    progress: bool = False,
    workers: int | None = None,
) -> Catalog:
    """Read and validate a Happywhale-format catalog.

    ``images_dir`` defaults to ``images/`` next to the CSV. ``check_images`` says
    how hard to look at the photos: ``True`` decodes every one (finds truncated and
    corrupt files; a few seconds per few thousand small JPEGs, run in ``workers``
    threads, with a progress bar if ``progress``), ``"exists"`` only checks that each
    file is there and non-empty, ``False`` touches no photo at all (``images_dir``
    need not exist: for CSV-only work such as species counts and split logic; bad
    photos then surface later as :class:`~whaleid.data.images.ImageError`).

    ``clean`` applies :func:`~whaleid.data.species.clean_species` with ``species_fixes``
    (which *replaces* :data:`~whaleid.data.species.SPECIES_FIXES` when given; pass
    ``{**SPECIES_FIXES, ...}`` to extend it). ``require_labels=False`` accepts query
    catalogs: only ``image`` is required; a missing ``species`` becomes
    :data:`~whaleid.data.species.UNKNOWN_SPECIES`, a missing ``individual_id`` None with label -1.

    Raises :class:`~whaleid.data.checks.CatalogError` for an unusable CSV or when no
    readable photo is left; unreadable photos are skipped, listed in ``problems``, and logged.
    """
    csv_path = Path(csv_path)
    images_dir = Path(images_dir) if images_dir is not None else csv_path.parent / "images"
    images_dir = images_dir.absolute()
    required = LABEL_COLUMNS if require_labels else ("image",)
    rows = read_table_lines(csv_path, required, what="catalog CSV", error=CatalogError)
    df = check_rows(*rows, csv_path, require_labels)
    fixes = (SPECIES_FIXES if species_fixes is None else species_fixes) if clean else None
    df = _labelled(df, images_dir, fixes)
    reasons = _photo_reasons(df, images_dir, csv_path, check_images, workers, progress)
    df, problems = _skip_problems(df, reasons, csv_path, images_dir)
    extra = [c for c in df.columns if c not in TABLE_COLUMNS]
    table = df[["image", "species", "individual_id", "path", *extra]].reset_index(drop=True)
    return Catalog(table=table, images_dir=images_dir, problems=problems, csv_path=csv_path.absolute())
