"""Ranking stages: the small objects an :class:`~whaleid.search.identify.Identifier` composes.

A first stage ranks every query over the whole gallery (:class:`Knn`, :class:`Blend`); an
optional second stage (:class:`LocalRerank`) re-scores the first stage's nearest photos with
verified local matches. Each is chosen once, by :func:`stages`, not by an ``if`` per query.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from whaleid.errors import UserError
from whaleid.model.embeddings import Embeddings
from whaleid.model.keypoints import KeypointSet
from whaleid.search.fusion import Fusion
from whaleid.search.index import Index
from whaleid.search.ranking import CUTOFF, Ranking, top_individuals
from whaleid.search.rerank import RerankConfig, pair_inliers
from whaleid.search.rerank import fit_fusion as fit_fusion_of
from whaleid.search.scoring import ranker

__all__ = ["Blend", "Evidence", "Knn", "LocalRerank", "stages"]


def vectors_of(queries: Embeddings | np.ndarray) -> np.ndarray:
    return queries.vectors if isinstance(queries, Embeddings) else queries


def keypoints_of(queries: Embeddings | np.ndarray) -> KeypointSet:
    """The queries' local features, which re-ranking needs beside their vectors."""
    if not isinstance(queries, Embeddings) or queries.keypoints is None:
        raise UserError(
            "re-ranking needs the query photos' keypoints: embed them with keypoints "
            "(`whaleid embed ... --keypoints`, or the Identifier's own embedder)"
        )
    return queries.keypoints


@dataclass(frozen=True)
class Knn:
    """Individuals of the ``neighbours`` nearest gallery photos, each by its best cosine."""

    neighbours: int = 100

    def shortlist(self, index: Index, vectors: np.ndarray, own: bool, at_least: int = 0) -> tuple[np.ndarray, ...]:
        """The nearest gallery photos' cosines and rows; with ``own`` the queries are the gallery, each one's own
        slot emptied (row -1) wherever ties put it."""
        scores, indices = index.search(vectors, min(max(self.neighbours, at_least) + own, len(index)))
        if own:
            mine = indices == np.arange(len(index))[:, None]
            scores, indices = np.where(mine, -np.inf, scores), np.where(mine, -1, indices)
        return scores, indices

    def rank(
        self, index: Index, ids: Sequence[str], queries: Embeddings | np.ndarray, own: bool = False, top: int = CUTOFF
    ) -> list[Ranking]:
        """Known individuals, best first; ``own``: the queries are the gallery itself (leave-one-out)."""
        return top_individuals(*self.shortlist(index, vectors_of(queries), own), ids, top=top)


@dataclass(frozen=True)
class Blend:
    """Every individual scored by its best cosine blended with the ArcFace-logit probability (``weight``)."""

    weight: float

    def rank(
        self, index: Index, ids: Sequence[str], queries: Embeddings | np.ndarray, top: int = CUTOFF
    ) -> list[Ranking]:
        return blend_ranker(index, ids, queries)(self.weight, top)


def blend_ranker(index: Index, ids: Sequence[str], queries: Embeddings | np.ndarray):
    """Rankings of every individual at any blend weight (one kNN matrix for all weights)."""
    if isinstance(queries, Embeddings):
        meta = queries.meta
        return ranker(
            index.vectors,
            ids,
            queries.vectors,
            queries.class_cosines,
            meta.get("classes", ()),
            meta.get("arcface_scale"),
        )
    return ranker(index.vectors, ids, queries)


@dataclass(frozen=True)
class Evidence:
    """Each query's shortlist: cosines, gallery rows (-1: empty), verified local matches (0 beyond ``matched``)."""

    scores: np.ndarray
    indices: np.ndarray
    counts: np.ndarray
    matched: int  # how many of each row's first photos were matched (the shortlist, one more for a left-out self)

    def pairs(self, ids: Sequence[str], truths: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The matched pairs' cosines, match counts and whether each is the same individual."""
        indices = self.indices[:, : self.matched]
        matched = indices >= 0
        labels = np.asarray(ids, dtype=object)[indices[matched]]
        same = labels == np.repeat(np.asarray(truths, dtype=object), matched.sum(axis=1))
        return self.scores[:, : self.matched][matched], self.counts[:, : self.matched][matched], same


class LocalRerank:
    """Second stage: a first stage's ``shortlist`` nearest photos matched by local features, fused with the cosine."""

    def __init__(self, config: RerankConfig, keypoints: KeypointSet | None, n: int, fusion: Fusion | None = None):
        if keypoints is None:
            raise UserError(
                "re-ranking needs the gallery photos' keypoints: embed the gallery with keypoints "
                "(`whaleid embed ... --keypoints`)"
            )
        if len(keypoints) != n:
            raise UserError(f"{len(keypoints)} photos' keypoints for a gallery of {n}: extract them again")
        if keypoints.config != config.keypoints:
            raise UserError(
                f"the gallery's keypoints were extracted with {keypoints.config}, not the re-ranking's "
                f"{config.keypoints}: extract them again"
            )
        self.config, self.keypoints = config, keypoints
        # the config's weight is the one that fuses
        self.fusion = None if fusion is None else Fusion(fusion.cosine, fusion.inliers, config.local_weight)

    def evidence(
        self, first: Knn, index: Index, vectors: np.ndarray, queries: KeypointSet, own: bool = False
    ) -> Evidence:
        """Matched once, used for fitting and ranking alike; one more photo where a query's own slot was emptied."""
        scores, indices = first.shortlist(index, vectors, own, at_least=self.config.shortlist)
        matched = self.config.shortlist + own
        counts = np.zeros(indices.shape, np.float64)
        counts[:, :matched] = pair_inliers(queries, self.keypoints, indices[:, :matched], self.config)
        return Evidence(scores, indices, counts, matched)

    def fit(self, evidence: Evidence, ids: Sequence[str], truths: Sequence[str]) -> Fusion:
        """The fusion calibrated on labelled queries' matched shortlists (``truths``: their own individuals)."""
        self.fusion = fit_fusion_of(*evidence.pairs(ids, truths), self.config.local_weight)
        return self.fusion

    def rank(self, evidence: Evidence, ids: Sequence[str], top: int = CUTOFF) -> list[Ranking]:
        """Individuals by their best fused photo; equal fused scores (isotonic steps) go to the photo with more
        verified matches, then the higher cosine."""
        if self.fusion is None:
            raise UserError(
                "re-ranking fuses scores calibrated on labelled validation photos: fit the fusion first "
                "(`--calibrate` on the command line, Identifier.calibrate in Python)"
            )
        e = evidence
        fused = np.where(e.indices >= 0, self.fusion(e.scores, e.counts), -np.inf)
        return top_individuals(fused, e.indices, ids, top=top, tiebreak=e.counts + e.scores)


def stages(
    blend: float | None,
    neighbours: int,
    rerank: RerankConfig | None,
    keypoints: KeypointSet | None,
    n: int,
    fusion: Fusion | None,
) -> tuple[Knn | Blend, LocalRerank | None]:
    """The first stage and the optional second that a configuration names (the one place that chooses them)."""
    # re-ranking shortlists by plain cosine (its config refuses a blend weight other than 0)
    first = Knn(neighbours) if blend is None or rerank is not None else Blend(float(blend))
    return first, None if rerank is None else LocalRerank(rerank, keypoints, n, fusion)
