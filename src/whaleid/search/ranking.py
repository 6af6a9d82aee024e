"""Rankings: candidate individuals per query, best first, and the "new_individual" answer.

The bottom of the search stack: every scorer (kNN, blend, leave-one-out) produces
``Ranking`` objects, and thresholds, metrics and predictions consume them. It imports
nothing of whaleid's but the error type, so any layer may use it.

The recipe is the one the Happywhale notebooks converged on: keep each individual's
best score among the nearest gallery photos ("max cosine per individual"), and insert
"new_individual" in front of the first candidate whose score falls below a threshold
calibrated on held-out individuals.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from whaleid.errors import UserError

__all__ = [
    "NEW_INDIVIDUAL",
    "CUTOFF",
    "OTHER_SPECIES",
    "Ranking",
    "top_individuals",
    "insert_new_individual",
    "apply_threshold",
    "truths",
]

#: The answer "this animal is not in the catalog": one spelling for the whole package.
NEW_INDIVIDUAL = "new_individual"
#: Kaggle scored the first five predictions per image.
CUTOFF = 5
#: Key of a per-species threshold dict that covers every species without its own.
OTHER_SPECIES = "*"


@dataclass
class Ranking:
    """Candidate individuals for one query, best first, with their cosine scores."""

    ids: list[str]
    scores: list[float]

    def __post_init__(self) -> None:
        if len(self.ids) != len(self.scores):
            raise ValueError(f"Ranking has {len(self.ids)} ids but {len(self.scores)} scores")

    def __len__(self) -> int:
        return len(self.ids)

    def to_dict(self) -> dict[str, Any]:
        return {"ids": list(self.ids), "scores": [float(s) for s in self.scores]}


def check_gallery_ids(gallery_ids: Sequence[str]) -> list[str]:
    ids = list(gallery_ids)
    if not ids:
        raise UserError("the gallery is empty: embed a catalog of labelled photos first")
    for i, x in enumerate(ids):
        if not isinstance(x, str) or not x:
            raise UserError(f"gallery photo {i} has individual_id {x!r}: every gallery photo needs a non-empty id")
    if NEW_INDIVIDUAL in ids:
        raise UserError(
            f"{NEW_INDIVIDUAL!r} is reserved for the 'not in the gallery' answer and cannot label gallery photos"
        )
    return ids


def top_individuals(
    scores: np.ndarray,
    indices: np.ndarray,
    gallery_ids: Sequence[str],
    top: int = CUTOFF,
    tiebreak: np.ndarray | None = None,
) -> list[Ranking]:
    """Collapse neighbour photos to distinct individuals, each at its best score.

    An individual with many catalog photos would otherwise fill all five slots. Rows
    need not be pre-sorted (they are re-sorted, stably; equal scores by ``tiebreak``,
    higher first, when given); index -1 (an approximate index's empty slot) is skipped.
    Fewer than ``top`` entries come back when the neighbours hold fewer distinct individuals.
    """
    scores = np.asarray(scores)
    indices = np.asarray(indices)
    if scores.shape != indices.shape or scores.ndim != 2:
        raise ValueError(
            f"scores {scores.shape} and indices {indices.shape} must be the same 2-D shape (queries, neighbours)"
        )
    if top < 1:
        raise ValueError(f"top must be >= 1, got {top}")
    labels = np.asarray(list(gallery_ids), dtype=object)
    valid = indices >= 0
    if valid.any() and indices[valid].max() >= len(labels):
        raise IndexError(f"neighbour index {indices[valid].max()} is out of range for {len(labels)} gallery ids")
    primary = np.where(valid, -scores, np.inf)
    if tiebreak is None:
        order = np.argsort(primary, axis=1, kind="stable")
    else:
        order = np.lexsort((-np.asarray(tiebreak, np.float64), primary), axis=1)
    scores = np.take_along_axis(scores, order, axis=1)
    indices = np.take_along_axis(indices, order, axis=1)
    out: list[Ranking] = []
    for row_scores, row_idx in zip(scores.tolist(), indices.tolist()):
        ids: list[str] = []
        best: list[float] = []
        seen: set[str] = set()
        for s, i in zip(row_scores, row_idx):
            if i < 0:
                break  # invalid slots were sorted last
            ident = labels[i]
            if ident in seen:
                continue
            seen.add(ident)
            ids.append(ident)
            best.append(float(s))
            if len(ids) == top:
                break
        out.append(Ranking(ids, best))
    return out


def insert_new_individual(ranking: Ranking, threshold: float, top: int = CUTOFF) -> Ranking:
    """Put "new_individual" in front of the first candidate scoring below ``threshold``.

    If every candidate clears the threshold it goes after them (still within ``top`` if
    there is room), so a query whose neighbours hold only a few individuals still
    offers "new" as an answer. Its score is reported as the threshold. The result holds
    distinct ids and at most ``top`` of them; no padding is invented here (see
    ``evaluate.write_submission`` for the AP-neutral padding to five).
    """
    if top < 1:
        raise ValueError(f"top must be >= 1, got {top}")
    threshold = float(threshold)
    pairs = [(i, float(s)) for i, s in zip(ranking.ids, ranking.scores) if i != NEW_INDIVIDUAL]
    pos = next((j for j, (_, s) in enumerate(pairs) if s < threshold), len(pairs))
    pairs.insert(pos, (NEW_INDIVIDUAL, threshold))
    pairs = pairs[:top]
    return Ranking([i for i, _ in pairs], [s for _, s in pairs])


def check_species(species: Sequence[str], n: int, name: str) -> list[str]:
    out = list(species)
    if len(out) != n:
        raise UserError(f"expected {n} {name} labels (one per photo), got {len(out)}")
    for i, x in enumerate(out):
        if not isinstance(x, str) or not x:
            raise UserError(f"{name}[{i}] = {x!r}: every photo needs a non-empty species")
    return out


def check_threshold(threshold: Any) -> float | dict[str, float] | None:
    if threshold is None:
        return None
    if isinstance(threshold, Mapping):
        if OTHER_SPECIES not in threshold:
            raise UserError(
                f"a per-species threshold needs a {OTHER_SPECIES!r} entry for the species without their own"
            )
        if not all(isinstance(key, str) for key in threshold):
            raise UserError(f"per-species threshold keys must be species names, got {list(threshold)}")
        out = {key: finite_or_none(value) for key, value in threshold.items()}
        if None in out.values():
            raise UserError(f"thresholds must be finite numbers, got {dict(threshold)}")
        return out
    value = finite_or_none(threshold)
    if value is None:
        raise UserError(f"threshold must be a finite number, a dict per species, or None, got {threshold!r}")
    return value


def finite_or_none(value: Any) -> float | None:
    """``value`` as a finite float, or None when it is not one."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if np.isfinite(value) else None


def species_by_individual(ids: list[str], species: list[str]) -> dict[str, str]:
    """Each individual's species, to stand in for a query's unknown one."""
    out: dict[str, str] = {}
    for ident, name in zip(ids, species):
        if out.setdefault(ident, name) != name:
            raise UserError(f"individual {ident!r} is labelled both {out[ident]!r} and {name!r} in gallery_species")
    return out


def apply_threshold(
    rankings: Sequence[Ranking],
    threshold: float | dict[str, float] | None,
    species: Sequence[str] | None = None,
    species_of: dict[str, str] | None = None,
    top: int = CUTOFF,
) -> list[Ranking]:
    """Insert new_individual by one threshold, or per species (``{"*": fallback, species: t}``).

    A query's species comes from ``species`` when known, else from its top-1
    candidate via ``species_of`` (individual -> species), as on a Happywhale test set.
    """
    if threshold is None:
        return list(rankings)
    if isinstance(threshold, dict):
        if species is None:
            if species_of is None:
                raise UserError("a per-species threshold needs the queries' species or each individual's species")
            species = [species_of[r.ids[0]] if len(r) else OTHER_SPECIES for r in rankings]
        thresholds = [threshold.get(s, threshold[OTHER_SPECIES]) for s in species]
    else:
        thresholds = [threshold] * len(rankings)
    return [insert_new_individual(r, t, top=top) for r, t in zip(rankings, thresholds)]


def truths(query_ids: Sequence[str], gallery_ids: Sequence[str] | None = None) -> list[str]:
    """What each query should be answered: its individual, or new_individual when the gallery has no photo of it.

    Without ``gallery_ids`` the queries are their own gallery, each leaving itself out
    (leave-one-out): an individual with a single photo there is new.
    """
    if gallery_ids is None:
        counts = Counter(query_ids)
        return [i if counts[i] > 1 else NEW_INDIVIDUAL for i in query_ids]
    known = set(gallery_ids)
    return [i if i in known else NEW_INDIVIDUAL for i in query_ids]
