"""The Identifier: the one façade for every query path (CLI, experiments, web app).

It bundles a gallery index and its labels with how queries are scored (kNN over the
nearest photos, or every individual scored and blended with the ArcFace-logit
probabilities, and optionally the shortlist re-ranked by local-feature matches fused with
the cosine), the new_individual threshold and its policy, and the model(s) and photo
preparation that made the gallery, so photos can be identified from its folder alone.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from whaleid.data.catalog import Catalog
from whaleid.errors import UserError
from whaleid.files import atomic_path
from whaleid.model.checkpoint import checkpoint_files
from whaleid.model.embed import Embedder, Embeddings, embed_files, require_same_model
from whaleid.model.keypoints import KeypointSet
from whaleid.preprocess.cache import DEFAULT_ROOT
from whaleid.preprocess.prepare import PreprocessConfig, prepare, prepare_paths
from whaleid.search.fusion import Fusion
from whaleid.search.index import ExactIndex, Index, build_index, load_index
from whaleid.search.predictions import Predictions
from whaleid.search.ranking import (
    CUTOFF,
    Ranking,
    apply_threshold,
    check_gallery_ids,
    check_species,
    check_threshold,
    species_by_individual,
    top_individuals,
    truths,
)
from whaleid.search.rerank import RerankConfig, pair_inliers
from whaleid.search.rerank import fit_fusion as fit_fusion_of
from whaleid.search.scoring import ranker
from whaleid.search.threshold import calibrate_per_species, calibrate_threshold
from whaleid.settings import from_dict, to_dict

__all__ = ["IdentifyConfig", "Identifier", "POLICIES", "identify_queries"]

SIDECAR = "identifier.json"
INDEX_FILE = "index.npz"
IDS_FILE = "gallery_ids.json"
SPECIES_FILE = "gallery_species.json"
KEYPOINTS_FILE = "keypoints.npz"
MODELS_DIR = "models"
FORMAT = "whaleid.identifier"
FORMAT_VERSION = 4  # 4: re-ranking (keypoints + fusion); 3: the scorer and threshold policy, every member copied
READABLE = (3, 4)  # a version-3 folder is a version 4 without re-ranking
POLICIES = ("sweep", "rate", "per-species")
INDEX_KINDS = ("exact", "faiss", "faiss-flat", "faiss-hnsw", "faiss-ivf")


@dataclass
class IdentifyConfig:
    """How queries are scored and when new_individual is answered."""

    # Weight of the ArcFace-logit probabilities blended with every individual's max cosine; None: plain kNN
    # over the `neighbours` nearest photos. Recipes may say "auto" to choose it on validation photos.
    blend: float | str | None = None
    threshold: str = "sweep"  # sweep (best validation MAP@5) | rate (a share of new queries) | per-species
    new_rate: float | None = None  # for "rate": the share of queries expected to be new
    neighbours: int = 100
    index: str = "exact"
    min_species_queries: int = 20  # per-species: fewer validation queries fall back to the overall threshold
    rerank: RerankConfig | None = None  # second stage: the shortlist re-scored by local-feature matches

    def __post_init__(self) -> None:
        if self.threshold not in POLICIES:
            raise UserError(f"unknown threshold policy {self.threshold!r}; valid: {', '.join(POLICIES)}")
        if self.index not in INDEX_KINDS:
            raise UserError(f"unknown index kind {self.index!r}; valid: {', '.join(INDEX_KINDS)}")
        for name, value, low in (
            ("neighbours", self.neighbours, 1),
            ("min_species_queries", self.min_species_queries, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise UserError(f"{name} must be an integer >= {low}, got {value!r}")
        if self.blend != "auto" and self.blend is not None and not _share(self.blend):
            raise UserError(f"blend must be a number in [0, 1], 'auto' or null, got {self.blend!r}")
        if self.new_rate is not None and not _share(self.new_rate):
            raise UserError(
                f"new_rate must be the share of queries expected to be new, in [0, 1], got {self.new_rate!r}"
            )
        if self.blend is not None and self.index != "exact":
            raise UserError("the blend scores every individual over the whole gallery: use the exact index with it")
        if self.rerank is not None and self.blend not in (None, 0, 0.0):
            raise UserError("re-ranking fuses the plain cosine with local matches: set blend to 0 or null with rerank")


def _share(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1


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
        rerank = self.config.rerank
        if rerank is not None:
            if keypoints is None:
                raise UserError(
                    "re-ranking needs the gallery photos' keypoints: embed the gallery with keypoints "
                    "(`whaleid embed ... --keypoints`)"
                )
            if len(keypoints) != len(ids):
                raise UserError(f"{len(keypoints)} photos' keypoints for a gallery of {len(ids)}: extract them again")
            if keypoints.config != rerank.keypoints:
                raise UserError(
                    f"the gallery's keypoints were extracted with {keypoints.config}, not the re-ranking's "
                    f"{rerank.keypoints}: extract them again"
                )
        self.keypoints = keypoints if rerank is not None else None
        if fusion is not None and rerank is not None:  # the config's weight is the one that fuses
            fusion = Fusion(fusion.cosine, fusion.inliers, rerank.local_weight)
        self.fusion = fusion

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
        return PreprocessConfig.from_dict(self.metadata.get("preprocess"))

    def __repr__(self) -> str:
        return (
            f"Identifier(kind={self.index.kind!r}, n={len(self)}, individuals={self.n_individuals}, "
            f"blend={self.config.blend}, rerank={self.config.rerank is not None}, threshold={self.threshold})"
        )

    # ------------------------------------------------------------------ ranking

    def rank(self, queries: Embeddings | np.ndarray, top: int = CUTOFF) -> list[Ranking]:
        """Known individuals only, best first, by this Identifier's scorer: the input to thresholds."""
        if self.config.rerank is not None:
            return self._fused(*self._evidence(_vectors(queries), _keypoints(queries), own=False), top)
        if self.config.blend is None:
            vectors = queries.vectors if isinstance(queries, Embeddings) else queries
            scores, indices = self.index.search(vectors, self.config.neighbours)
            return top_individuals(scores, indices, self.gallery_ids, top=top)
        return self.blend_ranker(queries)(self.config.blend, top)

    def blend_ranker(self, queries: Embeddings | np.ndarray):
        """Rankings of every individual at any blend weight (one kNN matrix for all weights)."""
        if isinstance(queries, Embeddings):
            meta = queries.meta
            return ranker(
                self.index.vectors,
                self.gallery_ids,
                queries.vectors,
                queries.class_cosines,
                meta.get("classes", ()),
                meta.get("arcface_scale"),
            )
        return ranker(self.index.vectors, self.gallery_ids, queries)

    def leave_one_out(self) -> tuple[list[Ranking], list[str]]:
        """Each gallery photo ranked against all the others, and the truths they should match (kNN, re-ranked
        when this Identifier re-ranks)."""
        if len(self) < 2:
            raise UserError(f"leave-one-out scoring needs at least 2 photos (each queries the others), got {len(self)}")
        if self.config.rerank is not None:
            return self._fused(*self._evidence(self.index.vectors, self.keypoints, own=True)), truths(self.gallery_ids)
        return top_individuals(*self._shortlist(self.index.vectors, own=True), self.gallery_ids), truths(
            self.gallery_ids
        )

    def _shortlist(self, vectors: np.ndarray, own: bool) -> tuple[np.ndarray, np.ndarray]:
        """The nearest gallery photos by cosine; with ``own`` the queries are the gallery, each one's own slot
        emptied (index -1) wherever ties put it."""
        rerank = self.config.rerank
        k = max(self.config.neighbours, rerank.shortlist if rerank else 0) + own
        scores, indices = self.index.search(vectors, min(k, len(self)))
        if own:
            mine = indices == np.arange(len(self))[:, None]
            scores, indices = np.where(mine, -np.inf, scores), np.where(mine, -1, indices)
        return scores, indices

    def _evidence(
        self, vectors: np.ndarray, queries: KeypointSet, own: bool
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Each query's shortlist: cosines, gallery rows, and the verified local matches of its first
        ``shortlist`` photos (one more where its own slot was emptied), 0 beyond. Matched once, used for
        fitting and ranking alike."""
        scores, indices = self._shortlist(vectors, own)
        width = self.config.rerank.shortlist + own
        counts = np.zeros(indices.shape, np.float64)
        counts[:, :width] = pair_inliers(queries, self.keypoints, indices[:, :width], self.config.rerank)
        return scores, indices, counts

    def _fused(self, scores: np.ndarray, indices: np.ndarray, counts: np.ndarray, top: int = CUTOFF) -> list[Ranking]:
        """Individuals by their best fused photo; equal fused scores (isotonic steps) go to the photo with more
        verified matches, then the higher cosine."""
        if self.fusion is None:
            raise UserError(
                "re-ranking fuses scores calibrated on labelled validation photos: fit the fusion first "
                "(`--calibrate` on the command line, Identifier.calibrate in Python)"
            )
        fused = np.where(indices >= 0, self.fusion(scores, counts), -np.inf)
        return top_individuals(fused, indices, self.gallery_ids, top=top, tiebreak=counts + scores)

    def validate(
        self, val: Embeddings, leave_one_out: bool = False, fit_fusion: bool | None = None
    ) -> tuple[list[Ranking], list[str]]:
        """Labelled validation photos ranked against this gallery (or ``leave_one_out`` among themselves), and
        their truths. When re-ranking, the fusion is first fitted on those same matched shortlists
        (``fit_fusion``; by default when there is none yet): each pair is matched once."""
        val.require_labels("the calibration embeddings")
        val_ids = val.table["individual_id"].tolist()
        if self.config.rerank is None:
            if leave_one_out:
                return Identifier(ExactIndex(val.vectors), val_ids, self.config).leave_one_out()
            return self.rank(val), truths(val_ids, self.gallery_ids)
        gallery = (
            Identifier(ExactIndex(val.vectors), val_ids, self.config, keypoints=_keypoints(val), fusion=self.fusion)
            if leave_one_out
            else self
        )
        scores, indices, counts = gallery._evidence(val.vectors, _keypoints(val), own=leave_one_out)
        if fit_fusion or (fit_fusion is None and self.fusion is None):
            width = self.config.rerank.shortlist + leave_one_out  # the pairs that were matched
            matched = indices[:, :width] >= 0
            labels = np.asarray(gallery.gallery_ids, dtype=object)[indices[:, :width][matched]]
            same = labels == np.repeat(np.asarray(val_ids, dtype=object), matched.sum(axis=1))
            self.fusion = gallery.fusion = fit_fusion_of(
                scores[:, :width][matched], counts[:, :width][matched], same, self.config.rerank.local_weight
            )
        rankings = gallery._fused(scores, indices, counts)
        return rankings, truths(val_ids) if leave_one_out else truths(val_ids, self.gallery_ids)

    def fit_fusion(self, val: Embeddings, leave_one_out: bool = False) -> Fusion:
        """Calibrate the cosine and the inlier count into P(same individual) on labelled validation photos'
        shortlists: against this gallery, or ``leave_one_out`` among themselves (new individuals allowed)."""
        if self.config.rerank is None:
            raise UserError("this Identifier does not re-rank: give its config a rerank section")
        self.validate(val, leave_one_out, fit_fusion=True)
        return self.fusion

    # ------------------------------------------------------------------ threshold

    def calibrate(
        self,
        val: Embeddings | None = None,
        queries: Embeddings | None = None,
        leave_one_out: bool = False,
        fit_fusion: bool | None = None,
    ) -> float | dict[str, float]:
        """Set the threshold by the policy: on labelled validation photos (ranked against this gallery, or
        ``leave_one_out`` among themselves; a re-ranking fusion fitted on the same matches, see
        :meth:`validate`), or, for "rate", on the queries' own score distribution."""
        policy = self.config.threshold
        if policy == "rate":
            if queries is None or self.config.new_rate is None:
                raise UserError("the rate threshold needs the queries and the share expected to be new (new_rate)")
            self.threshold = calibrate_threshold(self.rank(queries), None, "rate", new_rate=self.config.new_rate)
            return self.threshold
        if val is None:
            raise UserError(f"the {policy} threshold needs labelled validation photos")
        rankings, val_truths = self.validate(val, leave_one_out, fit_fusion)
        if policy == "per-species":
            self.threshold = calibrate_per_species(
                rankings, val_truths, val.table["species"].tolist(), self.config.min_species_queries
            )
        else:
            self.threshold = calibrate_threshold(rankings, val_truths, "sweep")
        return self.threshold

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
        """The model(s) that made the gallery, to embed new photos the same way."""
        options = {**options, "tta_flip": bool(self.metadata.get("tta_flip", False))}  # as the gallery was embedded
        embedder = Embedder.from_source(
            self.metadata.get("source", {}), self.metadata.get("model", {}).get("img_size", 224), **options
        )
        embedder.preprocess = self.metadata.get("preprocess")  # as the gallery was embedded, options included
        embedder.keypoints = None if self.config.rerank is None else self.config.rerank.keypoints
        return embedder

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
        """index.npz + gallery_ids.json (+ gallery_species.json) + models/ + identifier.json, each atomic.

        Every model that made the gallery is copied into ``models/``, so the folder identifies
        photos alone; the sidecar goes last, so a folder with a sidecar is complete.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / SIDECAR).unlink(missing_ok=True)  # mark incomplete while rewriting
        self.index.save(directory / INDEX_FILE)
        _write_json(directory / IDS_FILE, self.gallery_ids)
        if self.gallery_species is None:
            (directory / SPECIES_FILE).unlink(missing_ok=True)  # not another save's leftover
        else:
            _write_json(directory / SPECIES_FILE, self.gallery_species)
        if self.keypoints is None:
            (directory / KEYPOINTS_FILE).unlink(missing_ok=True)
        else:
            self.keypoints.save(directory / KEYPOINTS_FILE)
        sidecar = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "kind": self.index.kind,
            "dim": self.index.dim,
            "n": len(self),
            "n_individuals": self.n_individuals,
            "config": to_dict(self.config),
            "threshold": self.threshold,
            "fusion": None if self.fusion is None else self.fusion.to_dict(),
            "per_photo_species": self.gallery_species is not None,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "metadata": _copy_models(self.metadata, directory),
        }
        _write_json(directory / SIDECAR, sidecar)
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike, *, threads: int | None = None) -> Identifier:
        directory = Path(directory)
        sidecar = _read_sidecar(directory)
        index = load_index(directory / INDEX_FILE, threads=threads)
        ids = json.loads((directory / IDS_FILE).read_text(encoding="utf-8"))
        if len(index) != sidecar["n"] or index.dim != sidecar["dim"]:
            raise UserError(
                f"{directory}: index (n={len(index)}, dim={index.dim}) does not match its sidecar "
                f"(n={sidecar['n']}, dim={sidecar['dim']})"
            )
        species = None
        if sidecar.get("per_photo_species"):
            species = json.loads((directory / SPECIES_FILE).read_text(encoding="utf-8"))
        metadata = _resolve_models(dict(sidecar.get("metadata") or {}), directory)
        config = from_dict(IdentifyConfig, sidecar["config"], "identifier config")
        keypoints = None
        if config.rerank is not None:
            keypoints = KeypointSet.load(directory / KEYPOINTS_FILE, config.rerank.keypoints)
        fusion = Fusion.from_dict(sidecar["fusion"]) if sidecar.get("fusion") else None
        return cls(index, ids, config, sidecar["threshold"], metadata, species, keypoints, fusion)


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
        leave_one_out = identifier.config.blend is None
        if keep_threshold:
            if identifier.config.rerank is not None:
                identifier.fit_fusion(calibration, leave_one_out=leave_one_out)
        else:
            identifier.calibrate(calibration, leave_one_out=leave_one_out, fit_fusion=True)
    elif identifier.config.threshold == "rate" and identifier.config.new_rate is not None and not keep_threshold:
        identifier.calibrate(queries=queries)
    return identifier.predict(queries)


def _vectors(queries: Embeddings | np.ndarray) -> np.ndarray:
    return queries.vectors if isinstance(queries, Embeddings) else queries


def _keypoints(queries: Embeddings | np.ndarray) -> KeypointSet:
    """The queries' local features, which re-ranking needs beside their vectors."""
    if not isinstance(queries, Embeddings) or queries.keypoints is None:
        raise UserError(
            "re-ranking needs the query photos' keypoints: embed them with keypoints "
            "(`whaleid embed ... --keypoints`, or the Identifier's own embedder)"
        )
    return queries.keypoints


def _write_json(path: Path, value: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")


def _read_sidecar(directory: Path) -> dict:
    path = directory / SIDECAR
    if not path.is_file():
        raise UserError(f"no {SIDECAR} in {directory} (not an Identifier, or its save was interrupted)")
    try:
        sidecar = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"{path} is not readable JSON ({error}): save the Identifier again") from None
    if not isinstance(sidecar, dict) or sidecar.get("format") != FORMAT:
        raise UserError(f"{path} is not a whaleid identifier sidecar")
    if sidecar.get("version", 0) not in READABLE:
        raise UserError(
            f"{directory} was written by {'a newer' if sidecar.get('version', 0) > FORMAT_VERSION else 'an older'} "
            "whaleid: save the Identifier again with this version (`whaleid identify --save`)"
        )
    return sidecar


def _members(source: dict) -> tuple[str, list[str]]:
    """The key of a model source that names checkpoint files, and those files."""
    if "checkpoint" in source:
        return "checkpoint", [source["checkpoint"]]
    if "checkpoints" in source:
        return "checkpoints", list(source["checkpoints"])
    return "", []  # a zero-shot backbone, or no model recorded


def _copy_models(metadata: dict, directory: Path) -> dict:
    """The gallery's checkpoint(s) copied under ``directory/models/``; the metadata naming them relative to it."""
    key, members = _members(metadata.get("source", {}))
    if not members:
        return dict(metadata)
    copied = []
    for i, member in enumerate(members):
        target = directory / MODELS_DIR / str(i)
        target.mkdir(parents=True, exist_ok=True)
        for path in checkpoint_files(member):
            if path.resolve() != (target / path.name).resolve():
                with atomic_path(target / path.name) as tmp:
                    shutil.copyfile(path, tmp)
        copied.append(f"{MODELS_DIR}/{i}/{checkpoint_files(member)[-1].name}")
    source = {**metadata["source"], key: copied[0] if key == "checkpoint" else copied}
    return {**metadata, "source": source}


def _resolve_models(metadata: dict, directory: Path) -> dict:
    """Saved metadata with its relative checkpoint paths made absolute under the Identifier's folder."""
    key, members = _members(metadata.get("source", {}))
    if not members:
        return metadata
    paths = [str(directory / p) for p in members]
    return {**metadata, "source": {**metadata["source"], key: paths[0] if key == "checkpoint" else paths}}
