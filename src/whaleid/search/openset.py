"""Open-set protocol: every photo of a held-out set queries all the others, and the open-set metrics.

A query whose individual has no other photo in the set has the truth
`new_individual`, as unseen animals do in a new field season.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from whaleid.model.embed import Embeddings
from whaleid.search.identify import Identifier, IdentifyConfig
from whaleid.search.index import ExactIndex
from whaleid.search.metrics import evaluate, map_at_5, threshold_sweep
from whaleid.search.ranking import NEW_INDIVIDUAL, Ranking, apply_threshold
from whaleid.search.rerank import RerankConfig
from whaleid.search.threshold import calibrate_threshold


def leave_one_out(vectors: np.ndarray, ids: Sequence[str]) -> tuple[list[Ranking], list[str]]:
    """Rankings of each photo against the rest of the set, and the truths they should match."""
    return Identifier(ExactIndex(vectors), ids).leave_one_out()


def known_accuracy(rankings: Sequence[Ranking], truths: Sequence[str], k: int) -> float:
    """Top-k over queries that have a match, before any new_individual insertion."""
    hits = [t in r.ids[:k] for r, t in zip(rankings, truths) if t != NEW_INDIVIDUAL]
    return float(np.mean(hits)) if hits else float("nan")


def ceiling_map5(rankings: Sequence[Ranking], truths: Sequence[str]) -> float:
    """MAP@5 with a perfect new_individual decision: the most any threshold could reach with these rankings.

    A new animal scores 1 (new_individual first); a known one 1/rank of its individual
    in the top five (new_individual slotted after it), else 0. When a model's MAP@5 is
    close to this, only better rankings can raise it, not a better threshold.
    """
    perfect = [[NEW_INDIVIDUAL] if t == NEW_INDIVIDUAL else r.ids for r, t in zip(rankings, truths, strict=True)]
    return map_at_5(perfect, truths)


def score_open_set(vectors: np.ndarray, ids: Sequence[str], threshold: float | None = None) -> dict:
    """Leave-one-out metrics; without a threshold, the best one for this very set (optimistic)."""
    return score_rankings(*leave_one_out(vectors, ids), threshold)


def score_rankings(
    rankings: Sequence[Ranking],
    truths: Sequence[str],
    threshold: float | dict[str, float] | None = None,
    species_of: Mapping[str, str] | None = None,
) -> dict:
    """The open-set metrics: MAP@5 with new_individual inserted at ``threshold`` (one, or one per species of
    each query's top candidate via ``species_of``), top-k on known queries, the ceiling, new precision/recall."""
    if threshold is None:
        threshold = calibrate_threshold(rankings, truths, "sweep")
    report = evaluate([r.ids for r in apply_threshold(rankings, threshold, species_of=species_of)], truths)
    return {
        "map5": report.map5,
        "top1_known": known_accuracy(rankings, truths, 1),
        "top5_known": known_accuracy(rankings, truths, 5),
        "map5_ceiling": ceiling_map5(rankings, truths),
        "new_precision": report.new_precision,
        "new_recall": report.new_recall,
        "threshold": threshold if isinstance(threshold, dict) else float(threshold),
    }


def calibrated_open_set(
    val: Embeddings, test: Embeddings, rerank: RerankConfig | None = None
) -> tuple[dict, pd.DataFrame, list[list[str]]]:
    """Threshold (and, with ``rerank``, the fusion) chosen on the validation individuals, metrics on the test ones.

    Returns the metrics, the validation threshold sweep, and the test predictions.
    """
    config = IdentifyConfig(rerank=rerank)
    among_val = Identifier.from_embeddings(val, config)
    val_rankings, val_truths = among_val.validate(val, leave_one_out=True)  # with rerank: fusion fitted, same matches
    threshold = calibrate_threshold(val_rankings, val_truths, "sweep")
    rankings, truths = Identifier.from_embeddings(test, config, fusion=among_val.fusion).leave_one_out()
    metrics = score_rankings(rankings, truths, threshold)
    return metrics, threshold_sweep(val_rankings, val_truths), [r.ids for r in apply_threshold(rankings, threshold)]
