"""The catalog: a validated table of photos and who is on them, plus splits.

A catalog on disk is the Happywhale format: a CSV with ``image,species,individual_id``
and the photos in a folder (``images/`` next to the CSV by default). :func:`read_catalog`
turns it into a :class:`Catalog`:

- problems with the CSV itself (missing, not a regular file, not UTF-8 text,
  unparseable, a row with more or fewer fields than the header, required columns
  absent, empty or duplicate image names, no rows) raise :class:`CatalogError` at
  once, naming the file, the columns or the lines;
- problems with single photos (absent, empty, truncated, not an image, a name with a
  control character or too long for the file system) never stop the run: the row is
  skipped and listed in ``Catalog.problems`` with its reason;
- image names are kept exactly as written (spaces included); ids and species are
  stripped, and missing-value markers (``NaN``, ``N/A``, ``null``, ...) in them mean
  missing;
- species names are cleaned (Happywhale's ``bottlenose_dolpin``, ``kiler_whale``, ...);
- each individual gets an integer ``label`` (its position in the sorted list of ids).

Splits for validation (all deterministic for a given ``seed``): :func:`kfold`,
:func:`open_set_split` (whole individuals held out: they are "new"),
:func:`holdout_photos` (some photos of known individuals held out: they are "known"),
and :func:`min_photos`.
"""

from __future__ import annotations

import codecs
import csv
import io
import logging
import os
import re
import stat
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from whaleid.data.images import check_image
from whaleid.errors import UserError
from whaleid.files import atomic_path

__all__ = [
    "MISSING_MARKERS",
    "SPECIES_FIXES",
    "UNKNOWN_SPECIES",
    "Catalog",
    "CatalogError",
    "clean_species",
    "format_summary",
    "holdout_photos",
    "kfold",
    "min_photos",
    "open_set_split",
    "read_catalog",
    "read_table",
    "split_fold",
    "summary",
]

log = logging.getLogger(__name__)

#: Species name used where a catalog has no species column or an empty cell.
UNKNOWN_SPECIES = "unknown"

#: Default species clean-up, as agreed by the Happywhale 2022 community: two typos,
#: one short name, and the two pilot-whale labels that are short-finned pilot whales.
SPECIES_FIXES: dict[str, str] = {
    "bottlenose_dolpin": "bottlenose_dolphin",
    "kiler_whale": "killer_whale",
    "beluga": "beluga_whale",
    "globis": "short_finned_pilot_whale",
    "pilot_whale": "short_finned_pilot_whale",
}

LABEL_COLUMNS = ("image", "species", "individual_id")
TABLE_COLUMNS = ("image", "species", "individual_id", "path", "label")
PROBLEM_COLUMNS = ("image", "reason")
_SHOW = 5  # how many culprits an error message names
#: Cells that spreadsheets and pandas write for "no value"; as an id or species they mean missing.
MISSING_MARKERS = frozenset({"nan", "none", "null", "n/a", "na", "#n/a"})
_NAME_MAX = 255  # bytes per path component on common file systems (ext4, xfs, APFS, NTFS)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")  # Unicode categories Cc, Zl and Zp


class CatalogError(UserError):
    """The catalog as a whole is unusable; the message names the file, column or lines."""


# --------------------------------------------------------------------------- species


def _norm_name(value: str) -> str:
    return re.sub(r"[\s\-]+", "_", value.strip().lower())


def clean_species(series: pd.Series, fixes: Mapping[str, str] = SPECIES_FIXES) -> pd.Series:
    """Normalise species names: strip, lowercase, spaces/hyphens to ``_``, then ``fixes``.

    ``"Bottlenose Dolpin "`` and ``"bottlenose_dolpin"`` both become
    ``"bottlenose_dolphin"``. Missing and blank names become missing (NaN); the caller
    decides what they mean (:func:`read_catalog` uses :data:`UNKNOWN_SPECIES`).
    """
    table = {_norm_name(k): _norm_name(v) for k, v in fixes.items()}

    def one(value: Any) -> Any:
        if not isinstance(value, str) and pd.isna(value):
            return np.nan
        name = _norm_name(str(value))
        if not name:
            return np.nan
        return table.get(name, name)

    return series.map(one).astype(object).rename(series.name)


# --------------------------------------------------------------------------- catalog


def _empty_problems() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series([], dtype=object) for c in PROBLEM_COLUMNS})


def _lines(rows: Sequence[int] | np.ndarray, line_of: np.ndarray, limit: int = _SHOW) -> str:
    """CSV line numbers (header = line 1) of table rows, the first few of them."""
    nums = [int(line_of[i]) for i in list(rows)[:limit]]
    more = f" and {len(rows) - limit} more" if len(rows) > limit else ""
    return ", ".join(map(str, nums)) + more


def _show(text: str, limit: int = 40) -> str:
    """A name as it can be printed on one line: control characters escaped, long names cut."""
    shown = "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in text[:limit])
    return shown + ("..." if len(text) > limit else "")


def _name_reason(name: str) -> str | None:
    """Why an image name cannot be a file name here (None if it can): the row becomes a problem.

    A line break in a name splits the row in every CSV written later, and NUL cannot be in
    a path at all.
    """
    if _CONTROL.search(name):
        return "control character in file name"
    if len(name) * 4 > _NAME_MAX and any(len(part.encode()) > _NAME_MAX for part in name.split("/")):
        return "file name too long"
    return None


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


def _read_bytes(csv_path: Path) -> bytes:
    try:
        mode = csv_path.stat().st_mode
        data = csv_path.read_bytes() if stat.S_ISREG(mode) else None
    except FileNotFoundError:
        raise CatalogError(f"catalog CSV not found: {csv_path}") from None
    except PermissionError:
        raise CatalogError(f"cannot read catalog CSV {csv_path}: permission denied") from None
    except OSError as exc:
        raise CatalogError(f"cannot read catalog CSV {csv_path}: {exc.strerror or exc}") from None
    except ValueError:  # os.stat refuses a NUL byte in the path
        raise CatalogError(f"catalog CSV path contains a NUL byte: {str(csv_path)!r}") from None
    if stat.S_ISDIR(mode):
        raise CatalogError(f"catalog CSV is a folder, not a CSV: {csv_path}")
    if data is None:
        raise CatalogError(f"catalog CSV is not a regular file (a device, pipe or a link to one): {csv_path}")
    return data


def _decode(data: bytes, csv_path: Path) -> str:
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise CatalogError(f"cannot parse {csv_path}: UTF-16 text; save it as a UTF-8 CSV")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise CatalogError(
            f"cannot parse {csv_path}: not UTF-8 text (line {line}: {exc.reason}); save it as a UTF-8 CSV"
        ) from None


def _read_csv(csv_path: Path) -> tuple[pd.DataFrame, np.ndarray]:
    """The CSV as strings (empty cells NaN) and the line each row starts on.

    Read with the csv module, not pandas: pandas takes a first column too many as the
    index (shifting every column) and pads short rows silently; here a row with another
    field count than the header is an error naming its line. Names are kept exactly as
    written; blank lines are skipped.
    """
    reader = csv.reader(io.StringIO(_decode(_read_bytes(csv_path), csv_path), newline=""), strict=True)
    rows: list[list[str]] = []
    starts: list[int] = []
    start = 1
    try:
        for row in reader:
            if len(row) > 1 or (row and row[0].strip()):
                rows.append(row)
                starts.append(start)
            start = reader.line_num + 1
    except csv.Error as exc:
        raise CatalogError(f"cannot parse {csv_path}: line {start}: {exc} (check the quotes)") from None
    if not rows:
        raise CatalogError(f"empty catalog: {csv_path} has no header and no rows")
    header = [c.strip().lower() for c in rows[0]]
    if "\x00" in rows[0][0]:
        raise CatalogError(f"cannot parse {csv_path}: binary data (NUL bytes on line 1), not a CSV")
    line_of = np.asarray(starts[1:], dtype=np.int64)
    counts = np.fromiter(map(len, rows[1:]), dtype=np.int64, count=len(rows) - 1)
    wrong = np.flatnonzero(counts != len(header))
    if len(wrong):
        said = [f"line {line_of[i]} has {counts[i]} field{'' if counts[i] == 1 else 's'}" for i in wrong[:3]]
        more = f" and {len(wrong) - 3} more line{'' if len(wrong) == 4 else 's'}" if len(wrong) > 3 else ""
        raise CatalogError(
            f"{csv_path}: {', '.join(said)}{more}, the header has {len(header)} "
            "(a name that contains a comma must be in double quotes)"
        )
    df = pd.DataFrame(rows[1:], columns=header, dtype=object) if len(rows) > 1 else pd.DataFrame(columns=header)
    return df.replace("", np.nan), line_of


def read_table(csv_path: str | os.PathLike[str], required: Sequence[str]) -> pd.DataFrame:
    """Any other whaleid CSV (predictions, truths) read as strictly as a catalog: strings, empty cells NaN."""
    csv_path = Path(csv_path)
    df, _ = _read_csv(csv_path)
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise CatalogError(
            f"{csv_path}: missing column(s) {', '.join(missing)}; found: {', '.join(df.columns) or 'none'}"
        )
    return df


def _missing_markers(values: pd.Series) -> pd.Series:
    """True where a cell holds a missing-value marker such as ``NaN`` or ``N/A``."""
    return values.str.strip().str.lower().isin(MISSING_MARKERS)


def _validate(df: pd.DataFrame, line_of: np.ndarray, csv_path: Path, require_labels: bool) -> pd.DataFrame:
    required = list(LABEL_COLUMNS) if require_labels else ["image"]
    missing = [c for c in required if c not in df.columns]
    if missing:
        found = ", ".join(_show(c) for c in df.columns[:20]) if len(df.columns) else "none"
        raise CatalogError(f"{csv_path}: missing required column(s) {', '.join(missing)}; found columns: {found}")
    if len(df) == 0:
        raise CatalogError(f"empty catalog: {csv_path} has a header but no rows")
    dup_cols = df.columns[df.columns.duplicated()].tolist()
    if dup_cols:
        raise CatalogError(f"{csv_path}: column(s) appear twice: {', '.join(map(_show, dup_cols))}")

    blank = np.flatnonzero(df["image"].fillna("").str.strip().eq("").to_numpy())
    if len(blank):
        raise CatalogError(f"{csv_path}: empty image name on line(s) {_lines(blank, line_of)}")
    for col in ("species", "individual_id"):
        if col in df.columns:
            df[col] = df[col].str.strip().replace("", np.nan)
    if "species" in df.columns:
        df["species"] = df["species"].mask(_missing_markers(df["species"]).to_numpy())
    if "individual_id" in df.columns:
        markers = _missing_markers(df["individual_id"]).to_numpy()
        said = df["individual_id"][markers].unique()[:3]
        df["individual_id"] = df["individual_id"].mask(markers)
        unlabelled = np.flatnonzero(df["individual_id"].isna().to_numpy())
        if require_labels and len(unlabelled):
            note = f" ({', '.join(map(repr, said))}: missing-value marker, not an id)" if len(said) else ""
            raise CatalogError(
                f"{csv_path}: empty individual_id on line(s) {_lines(unlabelled, line_of)}{note} "
                "(use require_labels=False for query-only catalogs)"
            )
    dup = df["image"].duplicated(keep=False).to_numpy()
    if dup.any():
        groups = pd.Series(np.flatnonzero(dup)).groupby(df["image"].to_numpy()[dup], sort=False)
        names = [f"{_show(name)} (lines {_lines(rows.to_numpy(), line_of, 3)})" for name, rows in groups]
        more = f" and {len(names) - _SHOW} more" if len(names) > _SHOW else ""
        raise CatalogError(f"{csv_path}: {len(names)} duplicate image name(s): {'; '.join(names[:_SHOW])}{more}")
    return df


def _check_all(paths: list[str], mode: bool | str, workers: int | None, progress: bool) -> list[str | None]:
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

    ``clean`` applies :func:`clean_species` with ``species_fixes`` (which *replaces*
    :data:`SPECIES_FIXES` when given; pass ``{**SPECIES_FIXES, ...}`` to extend it).
    ``require_labels=False`` accepts query catalogs: only ``image`` is required; a
    missing ``species`` becomes :data:`UNKNOWN_SPECIES`, a missing ``individual_id``
    None with label -1.

    Raises :class:`CatalogError` for an unusable CSV or when no readable photo is
    left; unreadable photos are skipped, listed in ``problems``, and logged.
    """
    csv_path = Path(csv_path)
    images_dir = Path(images_dir) if images_dir is not None else csv_path.parent / "images"
    images_dir = images_dir.absolute()
    df = _validate(*_read_csv(csv_path), csv_path, require_labels)

    if "individual_id" not in df.columns:
        df["individual_id"] = None
    if "species" not in df.columns:
        df["species"] = UNKNOWN_SPECIES
    if clean:
        df["species"] = clean_species(df["species"], SPECIES_FIXES if species_fixes is None else species_fixes)
    df["species"] = df["species"].astype(object).where(df["species"].notna(), UNKNOWN_SPECIES)
    df["path"] = [str(images_dir / name) for name in df["image"]]

    reasons = pd.Series([_name_reason(name) for name in df["image"]], dtype=object)
    if check_images:
        if not os.path.isdir(images_dir):
            raise CatalogError(
                f"images folder not found: {images_dir} (for {csv_path}; pass images_dir=..., "
                "or check_images=False to read the CSV alone)"
            )
        named = reasons.isna().to_numpy()
        reasons[named] = _check_all(df["path"][named].tolist(), check_images, workers, progress)
    problems = _empty_problems()
    bad = reasons.notna().to_numpy()
    if bad.any():
        problems = pd.DataFrame({"image": df["image"].to_numpy()[bad], "reason": reasons[bad].to_numpy()})
        counts = problems["reason"].value_counts()
        detail = ", ".join(f"{r}: {n}" for r, n in counts.items())
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
        df = df.loc[~bad]

    extra = [c for c in df.columns if c not in TABLE_COLUMNS]
    table = df[["image", "species", "individual_id", "path", *extra]].reset_index(drop=True)
    return Catalog(table=table, images_dir=images_dir, problems=problems, csv_path=csv_path.absolute())


# --------------------------------------------------------------------------- splits


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


# --------------------------------------------------------------------------- summary


def summary(catalog: Catalog) -> dict[str, Any]:
    """Counts for a report: photos, individuals, species, photos per individual, problems.

    ``photos_per_individual`` always has the keys 1..9 and ``"10+"`` (zeros included),
    counting individuals, so reports line up across catalogs.
    """
    t = catalog.table
    per = t["individual_id"].value_counts(dropna=True)
    hist: dict[int | str, int] = {i: int((per == i).sum()) for i in range(1, 10)}
    hist["10+"] = int((per >= 10).sum())
    return {
        "photos": len(t),
        "individuals": int(len(per)),
        "unlabelled": int(t["individual_id"].isna().sum()),
        "species": {str(k): int(v) for k, v in t["species"].value_counts().items()},
        "photos_per_individual": hist,
        "problems": len(catalog.problems),
        "problem_reasons": {str(k): int(v) for k, v in catalog.problems["reason"].value_counts().items()},
    }


def format_summary(s: Mapping[str, Any]) -> str:
    """Plain-text rendering of :func:`summary` for the CLI."""
    lines = [
        f"photos       {s['photos']:>8,}",
        f"individuals  {s['individuals']:>8,}",
    ]
    if s.get("unlabelled"):
        lines.append(f"unlabelled   {s['unlabelled']:>8,}")
    lines.append(f"problems     {s['problems']:>8,}")
    for reason, n in s.get("problem_reasons", {}).items():
        lines.append(f"  {reason:<30} {n:>6,}")
    lines += ["", "species                          photos"]
    for name, n in s["species"].items():
        lines.append(f"  {name:<30} {n:>6,}")
    lines += ["", "photos per individual       individuals"]
    for bucket, n in s["photos_per_individual"].items():
        lines.append(f"  {str(bucket):<30} {n:>6,}")
    return "\n".join(lines)
