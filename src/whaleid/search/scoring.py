"""Class scores from two sources, blended: kNN over the gallery and ArcFace-logit probabilities.

The Happywhale winners ranked individuals by a mix of "max cosine to the individual's
gallery photos" and the softmax of the ArcFace head's scaled class cosines: the head
has seen every training photo of an individual, the gallery only the nearest one, so
each recovers matches the other misses. Scores live in one (queries, individuals)
matrix whose columns are named by an id list; ``align`` maps one list onto another
(the head knows the training individuals, the gallery may hold more).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cache

import numpy as np

from whaleid.errors import UserError
from whaleid.search.index import _top_k_rows, check_vectors
from whaleid.search.ranking import CUTOFF, Ranking, check_gallery_ids

__all__ = ["knn_scores", "logit_probabilities", "align", "blend", "rank_scores", "ranker"]


def knn_scores(
    queries: np.ndarray, gallery: np.ndarray, gallery_ids: Sequence[str], chunk: int = 4096
) -> tuple[np.ndarray, list[str]]:
    """(Q, C) max cosine per individual over the gallery photos, C = sorted unique ids.

    Every individual gets a score, not just those among the k nearest photos, so the
    matrix can be blended column by column. Vectors are L2-normalised float32 already.
    Queries go ``chunk`` at a time so 28k x 51k never exists at once (4096 rows of 51k
    photos is ~0.8 GB).
    """
    gallery = check_vectors(gallery, "gallery vectors")
    queries = check_vectors(queries, "queries", dim=gallery.shape[1])
    ids = check_gallery_ids(gallery_ids)
    if len(ids) != len(gallery):
        raise UserError(f"{len(ids)} gallery ids for {len(gallery)} gallery vectors: give one id per vector")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    classes = sorted(set(ids))
    column = {c: j for j, c in enumerate(classes)}
    codes = np.array([column[i] for i in ids])
    # Photos grouped by individual, so one reduceat takes each individual's max.
    order = np.argsort(codes, kind="stable")
    grouped = gallery[order]
    starts = np.searchsorted(codes[order], np.arange(len(classes)))
    out = np.empty((len(queries), len(classes)), dtype=np.float32)
    for a in range(0, len(queries), chunk):
        out[a : a + chunk] = np.maximum.reduceat(queries[a : a + chunk] @ grouped.T, starts, axis=1)
    return out, classes


def logit_probabilities(class_cosines: np.ndarray, scale: float) -> np.ndarray:
    """softmax(scale * cos) over classes, row-wise; the row max is subtracted first
    because ArcFace scales (~30) would overflow exp otherwise."""
    cos = np.asarray(class_cosines)
    if cos.ndim != 2:
        raise ValueError(f"class_cosines must be 2-D (queries, classes), got shape {cos.shape}")
    if not (np.isfinite(scale) and scale > 0):
        raise UserError(f"the ArcFace scale must be a positive finite number, got {scale!r}")
    z = cos * float(scale)  # a Python float keeps float32 input float32
    z -= z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


def align(matrix: np.ndarray, from_ids: Sequence[str], to_ids: Sequence[str], fill: float = 0.0) -> np.ndarray:
    """Columns reordered from ``from_ids`` to ``to_ids``; ids absent from ``from_ids`` get ``fill``.

    E.g. head probabilities (training individuals) onto the gallery's ids, where an
    individual added after training has probability 0.
    """
    matrix = np.asarray(matrix)
    from_ids, to_ids = list(from_ids), list(to_ids)
    if matrix.ndim != 2 or matrix.shape[1] != len(from_ids):
        raise ValueError(f"matrix of shape {matrix.shape} does not have {len(from_ids)} columns")
    source = {c: j for j, c in enumerate(from_ids)}
    if len(source) != len(from_ids):
        raise UserError("the class list has duplicates, so a column cannot be told apart")
    out = np.full((len(matrix), len(to_ids)), fill, dtype=np.result_type(matrix, fill))
    pairs = [(k, source[c]) for k, c in enumerate(to_ids) if c in source]
    if pairs:
        dst, src = map(list, zip(*pairs))
        out[:, dst] = matrix[:, src]
    return out


def blend(knn: np.ndarray, probs: np.ndarray, weight: float) -> np.ndarray:
    """(1 - weight) * knn + weight * probs: weight 0 is pure kNN, 1 pure head."""
    if not 0.0 <= weight <= 1.0:
        raise UserError(f"the blend weight (--blend) must be in [0, 1], got {weight!r}")
    knn, probs = np.asarray(knn), np.asarray(probs)
    if knn.shape != probs.shape:
        raise ValueError(f"knn {knn.shape} and probs {probs.shape} must have the same shape (align the columns first)")
    return (1 - weight) * knn + weight * probs


def rank_scores(scores: np.ndarray, ids: Sequence[str], top: int = CUTOFF) -> list[Ranking]:
    """Per row, the ``top`` ids with the highest score, best first, ties to the earlier id.

    The same ``Ranking`` that ``ranking.top_individuals`` gives, so thresholds and
    metrics work unchanged on blended scores.
    """
    scores = np.asarray(scores)
    ids = list(ids)
    if scores.ndim != 2 or scores.shape[1] != len(ids):
        raise ValueError(f"scores of shape {scores.shape} do not have {len(ids)} columns")
    if top < 1:
        raise ValueError(f"top must be >= 1, got {top}")
    if not ids:
        raise UserError("no individuals to rank")
    if np.isnan(scores).any():
        raise UserError("scores contain NaN, which has no rank: check the embeddings for NaN")
    values, columns = _top_k_rows(scores, min(top, len(ids)))
    return [
        Ranking([ids[j] for j in cols], [float(v) for v in vals])
        for vals, cols in zip(values.tolist(), columns.tolist())
    ]


def ranker(
    gallery: np.ndarray,
    gallery_ids: Sequence[str],
    queries: np.ndarray,
    class_cosines: np.ndarray | None = None,
    classes: Sequence[str] = (),
    scale: float | None = None,
) -> Callable[..., list[Ranking]]:
    """Rankings of every individual at any blend weight; the kNN matrix (and the head probabilities) are
    computed once, so a search over weights costs one matrix, not one per weight.

    ``class_cosines`` (queries x ``classes``) and the ArcFace ``scale`` come from a model saved with its head.
    """
    knn, ids = knn_scores(queries, gallery, gallery_ids)

    @cache
    def head() -> np.ndarray:  # only a blend needs it, and only models saved with their head have it
        if class_cosines is None:
            raise UserError("the blend needs models saved with their ArcFace head (class cosines)")
        return align(logit_probabilities(class_cosines, scale), classes, ids)

    def at(weight: float, top: int = CUTOFF) -> list[Ranking]:
        return rank_scores(knn if weight == 0 else blend(knn, head(), weight), ids, top)

    return at
