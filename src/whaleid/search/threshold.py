"""Choosing the new_individual threshold from validation rankings: by best MAP@5, by an
expected share of new animals, or one per species."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from whaleid.errors import UserError
from whaleid.search.metrics import default_thresholds, threshold_sweep
from whaleid.search.ranking import NEW_INDIVIDUAL, OTHER_SPECIES, Ranking, check_species, finite_or_none

__all__ = ["calibrate_threshold", "calibrate_per_species"]

NO_NEW_TRUTH = (
    "no validation truth is new_individual, so the sweep cannot reward predicting new; "
    "the threshold will be at the low end"
)
_warned: set[str] = set()


def _warn_once(message: str) -> None:
    """Warn once per process: training validates every epoch, and Python's own once-only filters
    forget what they showed whenever any library enters ``warnings.catch_warnings`` (torch often does)."""
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, stacklevel=3)


def _best_plateau_midpoint(thresholds: np.ndarray, values: np.ndarray) -> float:
    """Middle of the widest run of grid points at the maximum: the threshold with the
    most margin on both sides, rather than the edge of the optimum that argmax gives."""
    order = np.argsort(thresholds, kind="stable")
    thresholds, values = thresholds[order], values[order]
    best = np.nanmax(values)
    on = np.isclose(values, best, rtol=0, atol=1e-12)
    runs: list[tuple[int, int]] = []
    start = None
    for i, flag in enumerate(on):
        if flag and start is None:
            start = i
        if not flag and start is not None:
            runs.append((start, i - 1))
            start = None
    if start is not None:
        runs.append((start, len(on) - 1))
    a, b = max(runs, key=lambda r: (thresholds[r[1]] - thresholds[r[0]], r[1] - r[0]))
    return float((thresholds[a] + thresholds[b]) / 2)


def _sweep_threshold(
    rankings: Sequence[Ranking], truths: Sequence[str], thresholds: np.ndarray | Sequence[float] | None = None
) -> float:
    grid = default_thresholds(rankings) if thresholds is None else np.asarray(thresholds, float)
    sweep = threshold_sweep(rankings, truths, grid)
    return _best_plateau_midpoint(sweep["threshold"].to_numpy(), sweep["map5"].to_numpy())


def calibrate_threshold(
    rankings: Sequence[Ranking],
    truths: Sequence[str] | None,
    method: str = "sweep",
    new_rate: float | None = None,
    thresholds: np.ndarray | Sequence[float] | None = None,
) -> float:
    """Choose the new_individual threshold from validation rankings (from ``rank``).

    "sweep": the threshold with the best MAP@5, where truths of queries whose
    individual is absent from the gallery are "new_individual" (middle of the best
    plateau when several thresholds tie). "rate": ignore truths and pick the threshold
    below which a fraction ``new_rate`` of top-1 scores fall, for when the expected
    share of new animals is known but no labelled open-set split exists.
    """
    if len(rankings) == 0:
        raise UserError("cannot calibrate a threshold on zero validation photos")
    if method == "sweep":
        if truths is None:
            raise UserError("calibrating by sweep needs the validation photos' truths")
        threshold = _sweep_threshold(rankings, truths, thresholds)
        if not any(t == NEW_INDIVIDUAL for t in truths):
            _warn_once(NO_NEW_TRUTH)
        return threshold
    if method == "rate":
        rate = finite_or_none(new_rate)
        if rate is None or not 0.0 <= rate <= 1.0:
            raise UserError(f"--new-rate must be the share of queries expected to be new, in [0, 1], got {new_rate!r}")
        top1 = np.sort([r.scores[0] if len(r) else -np.inf for r in rankings])
        n = len(top1)
        m = int(round(new_rate * n))  # queries to send to new_individual (top-1 < threshold)
        finite = top1[np.isfinite(top1)]
        if m == 0:
            return float(finite.min()) if finite.size else 0.0
        if m >= n:
            return float(np.nextafter(finite.max(), np.inf)) if finite.size else 0.0
        lo, hi = top1[m - 1], top1[m]
        if not np.isfinite(lo):
            return float(hi)
        return float((lo + hi) / 2) if hi > lo else float(hi)
    raise UserError(f"unknown calibration method {method!r}; use 'sweep' or 'rate'")


def calibrate_per_species(
    rankings: Sequence[Ranking],
    truths: Sequence[str],
    species: Sequence[str],
    min_queries: int = 20,
    **sweep_kwargs: Any,
) -> dict[str, float]:
    """A sweep threshold per species, for ``Identifier(threshold=...)``.

    Cosines run higher for distinctive species (humpback flukes) than for plain
    dolphin fins, so one threshold sends too many of one to new_individual and too few
    of the other. A species with fewer than ``min_queries`` validation queries would get
    a noisy threshold, so it is left out and uses ``"*"``, the sweep over all queries.
    ``sweep_kwargs`` go to ``calibrate_threshold`` (e.g. ``thresholds``).
    """
    species = check_species(species, len(rankings), "species")
    if OTHER_SPECIES in species:
        raise UserError(f"{OTHER_SPECIES!r} names the fallback threshold, not a species")
    if min_queries < 1:
        raise UserError(f"min_queries must be >= 1, got {min_queries}")
    out = {OTHER_SPECIES: calibrate_threshold(rankings, truths, "sweep", **sweep_kwargs)}
    rows: dict[str, list[int]] = {}
    for i, name in enumerate(species):
        rows.setdefault(name, []).append(i)
    # A species whose validation animals all have matches gets a "rarely new" threshold,
    # which is what its data says, so only the global call above warns.
    for name, idx in rows.items():
        if len(idx) >= min_queries:
            out[name] = _sweep_threshold([rankings[i] for i in idx], [truths[i] for i in idx], **sweep_kwargs)
    return out
