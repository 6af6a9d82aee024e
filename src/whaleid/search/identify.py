"""The Identifier: the one façade for every query path (CLI, experiments, web app).

It bundles a gallery index and its labels with how queries are scored (kNN over the
nearest photos, or every individual scored and blended with the ArcFace-logit
probabilities, and optionally the shortlist re-ranked by local-feature matches fused with
the cosine), the new_individual threshold and its policy, and the model(s) and photo
preparation that made the gallery, so photos can be identified from its folder alone.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from whaleid.data.catalog import Catalog
from whaleid.errors import UserError
from whaleid.model.embed import Embedder, embed_files
from whaleid.model.embeddings import Embeddings, require_same_model
from whaleid.model.keypoints import KeypointSet
from whaleid.preprocess.cache import DEFAULT_ROOT
from whaleid.preprocess.prepare import PreprocessConfig, prepare, prepare_paths
from whaleid.search.config import POLICIES, IdentifyConfig
from whaleid.search.fusion import Fusion
from whaleid.search.index import ExactIndex, Index, build_index
from whaleid.search.predictions import Predictions
from whaleid.search.ranking import (
    CUTOFF,
    Ranking,
    apply_threshold,
    check_gallery_ids,
    check_species,
    check_threshold,
    species_by_individual,
    truths,
)
from whaleid.search.record import GalleryRecord
from whaleid.search.saved import load_folder, save_folder
from whaleid.search.stages import Knn, blend_ranker, keypoints_of, stages, vectors_of
from whaleid.search.threshold import calibrate_per_species, calibrate_threshold

__all__ = ["IdentifyConfig", "Identifier", "POLICIES", "identify_queries"]


class Identifier:
    """Gallery index + one individual id per vector + scorer + threshold (+ the model that made the vectors).

    ``threshold`` may be one score or a dict per species with a ``"*"`` fallback, as score
    levels differ by species; ``gallery_species`` (one per gallery photo) lets a query's
    species come from its top candidate. ``metadata`` is the gallery embeddings' meta
    (model source, preprocessing, classes), which the query path checks and follows.
    """

    def __init__(
        self,
        index: Index,
        gallery_ids: Sequence[str],
        config: IdentifyConfig | None = None,
        threshold: float | dict[str, float] | None = None,
        metadata: dict[str, Any] | None = None,
        gallery_species: Sequence[str] | None = None,
        keypoints: KeypointSet | None = None,
        fusion: Fusion | None = None,
    ):
        ids = check_gallery_ids(gallery_ids)
        if len(ids) != len(index):
            raise UserError(f"{len(ids)} gallery ids for an index of {len(index)} vectors: give one id per vector")
        self.config = config or IdentifyConfig()
        if self.config.blend == "auto":
            raise UserError("choose the blend weight before building an Identifier (blend 'auto' is for recipes)")
        if self.config.blend is not None and not isinstance(index, ExactIndex):
            raise UserError("the blend scores every individual over the whole gallery: use the exact index with it")
        self.index = index
        self.gallery_ids = ids
        self.threshold = threshold
        self.metadata = dict(metadata or {})
        self.gallery_species = (
            None if gallery_species is None else check_species(gallery_species, len(ids), "gallery_species")
        )
        self._species_of = None if self.gallery_species is None else species_by_individual(ids, self.gallery_species)
        self.first, self.second = stages(
            self.config.blend, self.config.neighbours, self.config.rerank, keypoints, len(ids), fusion
        )

    @classmethod
    def from_embeddings(cls, gallery: Embeddings, config: IdentifyConfig | None = None, **kwargs: Any) -> Identifier:
        """An Identifier over a labelled set of embeddings, remembering the model that made them."""
        gallery.require_labels("the gallery")
        config = config or IdentifyConfig()
        species = gallery.table["species"].tolist() if "species" in gallery.table else None
        return cls(
            build_index(gallery.vectors, config.index),
            gallery.table["individual_id"].tolist(),
            config,
            metadata=gallery.meta,
            gallery_species=species,
            keypoints=gallery.keypoints,
            **kwargs,
        )

    @property
    def threshold(self) -> float | dict[str, float] | None:
        return self._threshold

    @threshold.setter
    def threshold(self, value: float | dict[str, float] | None) -> None:
        self._threshold = check_threshold(value)  # a property, so a threshold set later is checked too

    @property
    def keypoints(self) -> KeypointSet | None:
        """The gallery photos' local features (when re-ranking)."""
        return None if self.second is None else self.second.keypoints

    @property
    def fusion(self) -> Fusion | None:
        """The re-ranking's calibrated fusion of cosine and matches (None until fitted, or without re-ranking)."""
        return None if self.second is None else self.second.fusion

    def __len__(self) -> int:
        return len(self.index)

    @property
    def n_individuals(self) -> int:
        return len(set(self.gallery_ids))

    @property
    def species_of(self) -> dict[str, str] | None:
        """Each gallery individual's species (when the gallery has species)."""
        return self._species_of

    @property
    def preprocess(self) -> PreprocessConfig | None:
        return self.record.preprocess

    @property
    def record(self) -> GalleryRecord:
        """How this gallery was made and is scored, as one typed value."""
        return GalleryRecord.of(self.metadata, self.config, self.fusion, self.threshold)

    def __repr__(self) -> str:
        return (
            f"Identifier(kind={self.index.kind!r}, n={len(self)}, individuals={self.n_individuals}, "
            f"blend={self.config.blend}, rerank={self.config.rerank is not None}, threshold={self.threshold})"
        )

    # ------------------------------------------------------------------ ranking

    def rank(self, queries: Embeddings | np.ndarray, top: int = CUTOFF) -> list[Ranking]:
        """Known individuals only, best first, by this Identifier's stages: the input to thresholds."""
        if self.second is None:
            return self.first.rank(self.index, self.gallery_ids, queries, top=top)
        evidence = self.second.evidence(self.first, self.index, vectors_of(queries), keypoints_of(queries))
        return self.second.rank(evidence, self.gallery_ids, top)

    def blend_ranker(self, queries: Embeddings | np.ndarray):
        """Rankings of every individual at any blend weight (one kNN matrix for all weights)."""
        return blend_ranker(self.index, self.gallery_ids, queries)

    def leave_one_out(self) -> tuple[list[Ranking], list[str]]:
        """Each gallery photo ranked against all the others, and the truths they should match (kNN, re-ranked
        when this Identifier re-ranks)."""
        if len(self) < 2:
            raise UserError(f"leave-one-out scoring needs at least 2 photos (each queries the others), got {len(self)}")
        if self.second is None:
            knn = Knn(self.config.neighbours)  # the gallery's own photos have no held-out logits to blend
            return knn.rank(self.index, self.gallery_ids, self.index.vectors, own=True), truths(self.gallery_ids)
        evidence = self.second.evidence(self.first, self.index, self.index.vectors, self.keypoints, own=True)
        return self.second.rank(evidence, self.gallery_ids), truths(self.gallery_ids)

    def validate(
        self, val: Embeddings, leave_one_out: bool = False, fit_fusion: bool | None = None
    ) -> tuple[list[Ranking], list[str]]:
        """Labelled validation photos ranked against this gallery (or ``leave_one_out`` among themselves), and
        their truths. When re-ranking, the fusion is first fitted on those same matched shortlists
        (``fit_fusion``; by default when there is none yet): each pair is matched once."""
        val.require_labels("the calibration embeddings")
        val_ids = val.table["individual_id"].tolist()
        answers = truths(val_ids) if leave_one_out else truths(val_ids, self.gallery_ids)
        if self.second is None:
            if leave_one_out:
                return Identifier(ExactIndex(val.vectors), val_ids, self.config).leave_one_out()
            return self.rank(val), answers
        gallery = (
            Identifier(ExactIndex(val.vectors), val_ids, self.config, keypoints=keypoints_of(val), fusion=self.fusion)
            if leave_one_out
            else self
        )
        evidence = gallery.second.evidence(gallery.first, gallery.index, val.vectors, keypoints_of(val), leave_one_out)
        if fit_fusion or (fit_fusion is None and self.fusion is None):
            self.second.fusion = gallery.second.fit(evidence, gallery.gallery_ids, val_ids)
        return gallery.second.rank(evidence, gallery.gallery_ids), answers

    # ------------------------------------------------------------------ threshold

    def calibrate(
        self,
        val: Embeddings | None = None,
        queries: Embeddings | None = None,
        leave_one_out: bool = False,
        keep_threshold: bool = False,
    ) -> tuple[list[Ranking], list[str]] | None:
        """The one calibration step: when re-ranking, the fusion fitted on labelled validation photos (ranked
        against this gallery, or ``leave_one_out`` among themselves); then the threshold by the policy, on the
        same matches, or for "rate" on the queries' own scores. ``keep_threshold``: a threshold already given
        stays, only the fusion is fitted. Returns the validation rankings and truths it fitted on, if any."""
        policy = self.config.threshold
        validated = None
        if val is not None and (self.second is not None or not (keep_threshold or policy == "rate")):
            validated = rankings, val_truths = self.validate(val, leave_one_out, fit_fusion=True)
        if keep_threshold:
            return validated
        if policy == "rate":
            if queries is None or self.config.new_rate is None:
                if val is not None:  # the fusion only: the rate is measured on the queries, later
                    return validated
                raise UserError("the rate threshold needs the queries and the share expected to be new (new_rate)")
            self.threshold = calibrate_threshold(self.rank(queries), None, "rate", new_rate=self.config.new_rate)
        elif val is None:
            raise UserError(f"the {policy} threshold needs labelled validation photos")
        elif policy == "per-species":
            self.threshold = calibrate_per_species(
                rankings, val_truths, val.table["species"].tolist(), self.config.min_species_queries
            )
        else:
            self.threshold = calibrate_threshold(rankings, val_truths, "sweep")
        return validated

    def fit_fusion(self, val: Embeddings, leave_one_out: bool = False) -> Fusion:
        """Only the re-ranking's fusion, fitted on labelled validation photos' shortlists (see :meth:`calibrate`)."""
        if self.second is None:
            raise UserError("this Identifier does not re-rank: give its config a rerank section")
        self.calibrate(val, leave_one_out=leave_one_out, keep_threshold=True)
        return self.fusion

    # ------------------------------------------------------------------ answers

    def identify(
        self, queries: Embeddings | np.ndarray, top: int = CUTOFF, species: Sequence[str] | None = None
    ) -> list[Ranking]:
        """The answer: ``rank`` plus "new_individual" when a threshold is set.

        A per-species threshold applies each query's species: from ``species`` when
        given, else the species of its top-1 candidate in the gallery.
        """
        return self.answer(self.rank(queries, top=top), species, top)

    def answer(
        self, rankings: Sequence[Ranking], species: Sequence[str] | None = None, top: int = CUTOFF
    ) -> list[Ranking]:
        """``rankings`` (from :meth:`rank`) with new_individual inserted by this Identifier's threshold."""
        if species is not None:
            species = check_species(species, len(rankings), "species")
        elif isinstance(self.threshold, dict) and self._species_of is None:
            raise UserError(
                "a per-species threshold needs the queries' species: pass species=, "
                "or give the Identifier gallery_species to infer them"
            )
        return apply_threshold(rankings, self.threshold, species, self._species_of, top)

    def predict(self, queries: Embeddings) -> Predictions:
        """Answers, candidates and scores for a set of embedded queries, as one artifact."""
        self.require_compatible(queries, "the queries")
        rankings = self.rank(queries)
        answers = self.answer(rankings)
        return Predictions(queries.table["image"].tolist(), answers, rankings, self.threshold)

    def require_compatible(self, other: Embeddings, what: str) -> None:
        """Refuse vectors made by another model, photo preparation or flip TTA than the gallery's."""
        require_same_model(self.metadata, self.index.dim, other.meta, other.dim, what, "the gallery")
        mine, theirs = self.metadata.get("tta_flip"), other.meta.get("tta_flip")
        if mine is not None and theirs is not None and bool(mine) != bool(theirs):
            how = "with" if mine else "without"
            raise UserError(
                f"{what} were embedded {'without' if mine else 'with'} flip TTA and the gallery {how} it: "
                f"embed them {how} --tta, as the gallery was"
            )

    def embedder(self, **options: Any) -> Embedder:
        """The model(s) that made the gallery, to embed new photos the same way (see :class:`GalleryRecord`)."""
        return self.record.embedder(**options)

    def embed(
        self,
        catalog: Catalog,
        boxes: Sequence[str | os.PathLike] | None = None,
        cache_root: str | os.PathLike = DEFAULT_ROOT,
        **embed_options: Any,
    ) -> Embeddings:
        """A catalog of query photos, prepared and embedded as the gallery's were."""
        queries = self.embedder(**embed_options).embed_catalog(prepare(catalog, self.preprocess, cache_root, boxes))
        self.require_compatible(queries, "the queries")
        return queries

    def identify_photos(
        self,
        paths: Sequence[str],
        top: int = CUTOFF,
        cache_root: str | os.PathLike = DEFAULT_ROOT,
        **embed_options: Any,
    ) -> tuple[list[Ranking], np.ndarray]:
        """Rankings for photo files, prepared and embedded as the gallery's were; and which photos opened."""
        files, prepared = prepare_paths(paths, self.preprocess, cache_root)
        queries, ok = embed_files(self.embedder(**embed_options), files)
        opened = prepared.copy()
        opened[prepared] = ok
        return self.identify(queries, top=top), opened

    # ------------------------------------------------------------------ files

    def save(self, directory: str | os.PathLike) -> Path:
        """The folder that identifies photos alone: see :mod:`whaleid.search.saved`."""
        sidecar = {
            "kind": self.index.kind,
            "dim": self.index.dim,
            "n": len(self),
            "n_individuals": self.n_individuals,
            "per_photo_species": self.gallery_species is not None,
        }
        parts = (self.index, self.gallery_ids, self.gallery_species, self.keypoints)
        return save_folder(directory, *parts, sidecar, self.metadata, self.record)

    @classmethod
    def load(cls, directory: str | os.PathLike, *, threads: int | None = None) -> Identifier:
        folder = load_folder(directory, threads)
        record = folder.record
        keypoints = None if record.keypoints is None else folder.keypoints(record.keypoints)
        return cls(
            folder.index,
            folder.ids,
            record.scoring,
            record.threshold,
            folder.metadata,
            folder.species,
            keypoints,
            record.fusion,
        )


def identify_queries(
    identifier: Identifier, queries: Embeddings, calibration: Embeddings | None = None, keep_threshold: bool = False
) -> Predictions:
    """Predictions for the queries, the threshold first chosen by the Identifier's policy when it can be.

    Labelled ``calibration`` photos are ranked against the gallery by the blend scorer, or
    among themselves (leave-one-out) by kNN, whose validation photos need not be gallery
    individuals; when re-ranking, the fusion is fitted on the same matches. Without them, the
    "rate" policy calibrates on the queries' own scores. ``keep_threshold``: a threshold the
    user gave stays; ``calibration`` then fits only the fusion.
    """
    identifier.require_compatible(queries, "the queries")
    if calibration is not None:
        identifier.require_compatible(calibration, "the calibration embeddings")
    if calibration is not None or (identifier.config.threshold == "rate" and identifier.config.new_rate is not None):
        leave_one_out = identifier.config.blend is None
        identifier.calibrate(calibration, queries, leave_one_out=leave_one_out, keep_threshold=keep_threshold)
    return identifier.predict(queries)
