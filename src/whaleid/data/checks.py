"""Checking a catalog's rows and photos: what stops a run, and what only skips a photo.

A problem with the table (a column missing, an empty image name or id, a name twice) is a
:class:`CatalogError` naming the lines; a problem with one photo (absent, empty, truncated,
a name no file system takes) is only a reason, and the row is skipped.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from whaleid.data.images import check_image
from whaleid.data.species import missing_markers
from whaleid.errors import UserError
from whaleid.files import printable

__all__ = ["LABEL_COLUMNS", "CatalogError", "check_photos", "check_rows", "name_reason"]

#: The Happywhale columns: what a catalog CSV holds and what :meth:`Catalog.to_csv` writes.
LABEL_COLUMNS = ("image", "species", "individual_id")
_SHOW = 5  # how many culprits an error message names
_NAME_MAX = 255  # bytes per path component on common file systems (ext4, xfs, APFS, NTFS)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")  # Unicode categories Cc, Zl and Zp


class CatalogError(UserError):
    """The catalog as a whole is unusable; the message names the file, column or lines."""


def _lines(rows: Sequence[int] | np.ndarray, line_of: np.ndarray, limit: int = _SHOW) -> str:
    """CSV line numbers (header = line 1) of table rows, the first few of them."""
    nums = [int(line_of[i]) for i in list(rows)[:limit]]
    more = f" and {len(rows) - limit} more" if len(rows) > limit else ""
    return ", ".join(map(str, nums)) + more


def name_reason(name: str) -> str | None:
    """Why an image name cannot be a file name here (None if it can): the row becomes a problem.

    A line break in a name splits the row in every CSV written later, and NUL cannot be in
    a path at all.
    """
    if _CONTROL.search(name):
        return "control character in file name"
    if len(name) * 4 > _NAME_MAX and any(len(part.encode()) > _NAME_MAX for part in name.split("/")):
        return "file name too long"
    return None


def _check_ids(df: pd.DataFrame, line_of: np.ndarray, csv_path: Path, require_labels: bool) -> None:
    """Ids and species stripped, missing-value markers made missing; an unlabelled row refused if labels are required."""
    for col in ("species", "individual_id"):
        if col in df.columns:
            df[col] = df[col].str.strip().replace("", np.nan)
    if "species" in df.columns:
        df["species"] = df["species"].mask(missing_markers(df["species"]).to_numpy())
    if "individual_id" not in df.columns:
        return
    markers = missing_markers(df["individual_id"]).to_numpy()
    said = df["individual_id"][markers].unique()[:3]
    df["individual_id"] = df["individual_id"].mask(markers)
    unlabelled = np.flatnonzero(df["individual_id"].isna().to_numpy())
    if require_labels and len(unlabelled):
        note = f" ({', '.join(map(repr, said))}: missing-value marker, not an id)" if len(said) else ""
        raise CatalogError(
            f"{csv_path}: empty individual_id on line(s) {_lines(unlabelled, line_of)}{note} "
            "(use require_labels=False for query-only catalogs)"
        )


def _check_names(df: pd.DataFrame, line_of: np.ndarray, csv_path: Path) -> None:
    """An image name listed twice names no single photo."""
    dup = df["image"].duplicated(keep=False).to_numpy()
    if dup.any():
        groups = pd.Series(np.flatnonzero(dup)).groupby(df["image"].to_numpy()[dup], sort=False)
        names = [f"{printable(name)} (lines {_lines(rows.to_numpy(), line_of, 3)})" for name, rows in groups]
        more = f" and {len(names) - _SHOW} more" if len(names) > _SHOW else ""
        raise CatalogError(f"{csv_path}: {len(names)} duplicate image name(s): {'; '.join(names[:_SHOW])}{more}")


def check_rows(df: pd.DataFrame, line_of: np.ndarray, csv_path: Path, require_labels: bool) -> pd.DataFrame:
    """The rows of a catalog CSV, ids cleaned, or a :class:`CatalogError` naming the lines at fault."""
    if len(df) == 0:
        raise CatalogError(f"empty catalog: {csv_path} has a header but no rows")
    blank = np.flatnonzero(df["image"].fillna("").str.strip().eq("").to_numpy())
    if len(blank):
        raise CatalogError(f"{csv_path}: empty image name on line(s) {_lines(blank, line_of)}")
    _check_ids(df, line_of, csv_path, require_labels)
    _check_names(df, line_of, csv_path)
    return df


def check_photos(paths: list[str], mode: bool | str, workers: int | None, progress: bool) -> list[str | None]:
    """Why each photo is unusable (None if it is fine), looked at in ``workers`` threads."""
    decode = mode is True or mode == "decode"
    if workers is None:
        workers = min(16, (os.cpu_count() or 2) * 2)

    def one(p: str) -> str | None:
        return check_image(p, decode=decode)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = pool.map(one, paths, chunksize=64)
        if progress:
            from tqdm.auto import tqdm

            results = tqdm(results, total=len(paths), desc="checking photos", unit="photo")
        return list(results)
