"""Open-set protocol: every photo of a held-out set queries all the others, and the open-set metrics.

A query whose individual has no other photo in the set has the truth
`new_individual`, as unseen animals do in a new field season.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from whaleid.model.embeddings import Embeddings
from whaleid.search.identify import Identifier, IdentifyConfig
from whaleid.search.index import ExactIndex
from whaleid.search.metrics import evaluate, map_at_5, threshold_sweep
from whaleid.search.ranking import NEW_INDIVIDUAL, Ranking, apply_threshold, truths
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


@dataclass
class Scored:
    """Test photos ranked by a calibrated scorer, their truths, and the validation they were calibrated on."""

    rankings: list[Ranking]
    truths: list[str]
    scorer: Identifier  # its threshold (and fusion) fitted on validation photos only
    validated: tuple[list[Ranking], list[str]] | None

    def metrics(self) -> dict:
        return score_rankings(self.rankings, self.truths, self.scorer.threshold, species_of=self.scorer.species_of)

    def answers(self) -> list[list[str]]:
        return [r.ids for r in self.scorer.answer(self.rankings)]


def calibrate_then_score(
    calibrator: Identifier, val: Embeddings, test: Embeddings, gallery: Embeddings | None = None
) -> Scored:
    """The one calibrate-then-score protocol (CLI, recipes, demo, benchmarks): the fusion and threshold fitted on
    labelled ``val`` photos, then ``test`` ranked and thresholded with them; the test truths are never used to fit.

    With a ``gallery``, val is ranked against ``calibrator``'s gallery and test against ``gallery`` (a "rate"
    threshold then comes from the test queries' own scores). Without, both are open-set: each set's photos
    rank among themselves (leave-one-out), so unseen individuals are new.
    """
    leave_one_out = gallery is None
    validated = calibrator.calibrate(val, leave_one_out=leave_one_out)
    fitted = {"threshold": calibrator.threshold, "fusion": calibrator.fusion}
    scorer = Identifier.from_embeddings(test if leave_one_out else gallery, calibrator.config, **fitted)
    if leave_one_out:
        return Scored(*scorer.leave_one_out(), scorer, validated)
    if scorer.config.threshold == "rate":
        scorer.calibrate(queries=test)
    return Scored(
        scorer.rank(test), truths(test.table["individual_id"].tolist(), scorer.gallery_ids), scorer, validated
    )


def calibrated_open_set(
    val: Embeddings, test: Embeddings, rerank: RerankConfig | None = None
) -> tuple[dict, pd.DataFrame, list[list[str]]]:
    """Threshold (and, with ``rerank``, the fusion) chosen on the validation individuals, metrics on the test ones.

    Returns the metrics, the validation threshold sweep, and the test predictions.
    """
    scored = calibrate_then_score(Identifier.from_embeddings(val, IdentifyConfig(rerank=rerank)), val, test)
    return scored.metrics(), threshold_sweep(*scored.validated), scored.answers()
