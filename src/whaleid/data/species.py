"""Species names as catalogs write them, cleaned into one spelling per species.

Happywhale's CSV has typos (``bottlenose_dolpin``, ``kiler_whale``) and spreadsheets write
``NaN`` or ``N/A`` for no value; left alone, each would count as a species of its own.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["MISSING_MARKERS", "SPECIES_FIXES", "UNKNOWN_SPECIES", "clean_species", "missing_markers"]

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

#: Cells that spreadsheets and pandas write for "no value"; as an id or species they mean missing.
MISSING_MARKERS = frozenset({"nan", "none", "null", "n/a", "na", "#n/a"})


def missing_markers(values: pd.Series) -> pd.Series:
    """True where a cell holds a missing-value marker such as ``NaN`` or ``N/A``."""
    return values.str.strip().str.lower().isin(MISSING_MARKERS)


def _norm_name(value: str) -> str:
    return re.sub(r"[\s\-]+", "_", value.strip().lower())


def clean_species(series: pd.Series, fixes: Mapping[str, str] = SPECIES_FIXES) -> pd.Series:
    """Normalise species names: strip, lowercase, spaces/hyphens to ``_``, then ``fixes``.

    ``"Bottlenose Dolpin "`` and ``"bottlenose_dolpin"`` both become
    ``"bottlenose_dolphin"``. Missing and blank names become missing (NaN); the caller
    decides what they mean (:func:`~whaleid.data.catalog.read_catalog` uses :data:`UNKNOWN_SPECIES`).
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
