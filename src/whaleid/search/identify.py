"""From neighbour lists to answers: top individuals per query, the "new_individual"
decision, and the ``Identifier`` that bundles an index, its labels and a threshold.

The recipe is the one the Happywhale notebooks converged on: search k (~100) nearest
gallery photos by cosine, keep each individual's best score ("max cosine per
individual"), and insert "new_individual" in front of the first candidate whose score
falls below a threshold calibrated on held-out individuals.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from whaleid.errors import UserError
from whaleid.search.metrics import CUTOFF, NEW_INDIVIDUAL, default_thresholds, threshold_sweep
from whaleid.files import atomic_path
from whaleid.search.index import Index, load_index

__all__ = [
    "NEW_INDIVIDUAL",
    "Ranking",
    "top_individuals",
    "insert_new_individual",
    "Identifier",
    "calibrate_threshold",
    "apply_threshold",
    "calibrate_per_species",
]

SIDECAR = "identifier.json"
INDEX_FILE = "index.npz"
IDS_FILE = "gallery_ids.json"
SPECIES_FILE = "gallery_species.json"
MODEL_FILE = "model.pt"
FORMAT = "whaleid.identifier"
FORMAT_VERSION = 2  # 2: per-species thresholds and gallery species
#: Key of a per-species threshold dict that covers every species without its own.
OTHER_SPECIES = "*"
NO_NEW_TRUTH = ("no validation truth is new_individual, so the sweep cannot reward predicting new; "
                "the threshold will be at the low end")
_warned: set[str] = set()


def _warn_once(message: str) -> None:
    """Warn once per process: training validates every epoch, and Python's own once-only filters
    forget what they showed whenever any library enters ``warnings.catch_warnings`` (torch often does)."""
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, stacklevel=3)


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


def _check_gallery_ids(gallery_ids: Sequence[str]) -> list[str]:
    ids = list(gallery_ids)
    if not ids:
        raise UserError("the gallery is empty: embed a catalog of labelled photos first")
    for i, x in enumerate(ids):
        if not isinstance(x, str) or not x:
            raise UserError(f"gallery photo {i} has individual_id {x!r}: every gallery photo needs a non-empty id")
    if NEW_INDIVIDUAL in ids:
        raise UserError(f"{NEW_INDIVIDUAL!r} is reserved for the 'not in the gallery' answer "
                        "and cannot label gallery photos")
    return ids


def top_individuals(
    scores: np.ndarray, indices: np.ndarray, gallery_ids: Sequence[str], top: int = CUTOFF
) -> list[Ranking]:
    """Collapse neighbour photos to distinct individuals, each at its best score.

    An individual with many catalog photos would otherwise fill all five slots. Rows
    need not be pre-sorted (they are re-sorted, stably); index -1 (an approximate
    index's empty slot) is skipped. Fewer than ``top`` entries come back when the
    neighbours hold fewer distinct individuals.
    """
    scores = np.asarray(scores)
    indices = np.asarray(indices)
    if scores.shape != indices.shape or scores.ndim != 2:
        raise ValueError(f"scores {scores.shape} and indices {indices.shape} must be the "
                         "same 2-D shape (queries, neighbours)")
    if top < 1:
        raise ValueError(f"top must be >= 1, got {top}")
    labels = np.asarray(list(gallery_ids), dtype=object)
    valid = indices >= 0
    if valid.any() and indices[valid].max() >= len(labels):
        raise IndexError(f"neighbour index {indices[valid].max()} is out of range for "
                         f"{len(labels)} gallery ids")
    order = np.argsort(np.where(valid, -scores, np.inf), axis=1, kind="stable")
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


def _check_species(species: Sequence[str], n: int, name: str) -> list[str]:
    out = list(species)
    if len(out) != n:
        raise UserError(f"expected {n} {name} labels (one per photo), got {len(out)}")
    for i, x in enumerate(out):
        if not isinstance(x, str) or not x:
            raise UserError(f"{name}[{i}] = {x!r}: every photo needs a non-empty species")
    return out


def _check_threshold(threshold: Any) -> float | dict[str, float] | None:
    if threshold is None:
        return None
    if isinstance(threshold, Mapping):
        if OTHER_SPECIES not in threshold:
            raise UserError(f"a per-species threshold needs a {OTHER_SPECIES!r} entry for the "
                            "species without their own")
        if not all(isinstance(key, str) for key in threshold):
            raise UserError(f"per-species threshold keys must be species names, got {list(threshold)}")
        out = {key: _finite(value) for key, value in threshold.items()}
        if None in out.values():
            raise UserError(f"thresholds must be finite numbers, got {dict(threshold)}")
        return out
    value = _finite(threshold)
    if value is None:
        raise UserError(f"threshold must be a finite number, a dict per species, or None, got {threshold!r}")
    return value


def _finite(value: Any) -> float | None:
    """``value`` as a finite float, or None when it is not one."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if np.isfinite(value) else None


def _species_by_individual(ids: list[str], species: list[str]) -> dict[str, str]:
    """Each individual's species, to stand in for a query's unknown one."""
    out: dict[str, str] = {}
    for ident, name in zip(ids, species):
        if out.setdefault(ident, name) != name:
            raise UserError(f"individual {ident!r} is labelled both {out[ident]!r} and {name!r} "
                             "in gallery_species")
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


class Identifier:
    """Gallery index + one individual id per index row + the new_individual threshold.

    Works on embedding vectors; the embedding model is attached elsewhere so this part
    stays testable without a network. ``metadata`` is free-form JSON saved in the
    sidecar (e.g. how the embeddings were made) so the query path can check it.
    ``threshold`` may be one cosine or a dict per species with an ``OTHER_SPECIES``
    ("*") fallback, as score levels differ by species (see ``calibrate_per_species``);
    ``gallery_species`` (one per gallery photo) lets ``identify`` infer a query's
    species from its top candidate when the queries' species are unknown.
    """

    def __init__(
        self,
        index: Index,
        gallery_ids: Sequence[str],
        threshold: float | dict[str, float] | None = None,
        neighbours: int = 100,
        metadata: dict[str, Any] | None = None,
        gallery_species: Sequence[str] | None = None,
    ):
        ids = _check_gallery_ids(gallery_ids)
        if len(ids) != len(index):
            raise UserError(f"{len(ids)} gallery ids for an index of {len(index)} vectors: give one id per vector")
        if isinstance(neighbours, bool) or not isinstance(neighbours, (int, np.integer)) \
                or neighbours < 1:
            raise UserError(f"neighbours must be a positive integer, got {neighbours!r}")
        self.index = index
        self.gallery_ids = ids
        self.threshold = threshold
        self.neighbours = int(neighbours)
        self.metadata = dict(metadata or {})
        self.gallery_species = (None if gallery_species is None
                                else _check_species(gallery_species, len(ids), "gallery_species"))
        self._species_of = (None if self.gallery_species is None
                            else _species_by_individual(ids, self.gallery_species))

    @property
    def threshold(self) -> float | dict[str, float] | None:
        return self._threshold

    @threshold.setter
    def threshold(self, value: float | dict[str, float] | None) -> None:
        # a property, so a threshold set after construction (as the CLI does) is checked too
        self._threshold = _check_threshold(value)

    def __len__(self) -> int:
        return len(self.index)

    @property
    def n_individuals(self) -> int:
        return len(set(self.gallery_ids))

    def __repr__(self) -> str:
        return (f"Identifier(kind={self.index.kind!r}, n={len(self)}, "
                f"individuals={self.n_individuals}, threshold={self.threshold})")

    def rank(self, queries: np.ndarray, top: int = CUTOFF) -> list[Ranking]:
        """Known individuals only, best first: the input to threshold calibration."""
        scores, indices = self.index.search(queries, self.neighbours)
        return top_individuals(scores, indices, self.gallery_ids, top=top)

    def identify(self, queries: np.ndarray, top: int = CUTOFF,
                 species: Sequence[str] | None = None) -> list[Ranking]:
        """The answer: ``rank`` plus "new_individual" when a threshold is set.

        A per-species threshold applies each query's species: from ``species`` when
        given, else the species of its top-1 candidate in the gallery, so a test set
        without species labels (Happywhale's) still works.
        """
        if species is not None:
            species = _check_species(species, len(queries), "species")
        elif isinstance(self.threshold, dict) and self._species_of is None:
            raise UserError("a per-species threshold needs the queries' species: pass species=, "
                             "or give the Identifier gallery_species to infer them")
        return apply_threshold(self.rank(queries, top=top), self.threshold, species, self._species_of, top)

    def identify_photos(self, paths: Sequence[str], top: int = CUTOFF, **embed_options: Any) -> tuple[list[Ranking], np.ndarray]:
        """Rankings for photo files, embedded by the model that made the gallery; and which photos opened."""
        from whaleid.model.embed import Embedder

        source = self.metadata.get("source", {})
        embedder = Embedder.from_source(source, self.metadata.get("model", {}).get("img_size", 224), **embed_options)
        paths = [str(Path(p).resolve()) for p in paths]
        files, prepared = paths, np.ones(len(paths), dtype=bool)
        if self.metadata.get("preprocess"):  # crop the photos exactly as the gallery's were
            files, prepared = _prepared_files(paths, self.metadata["preprocess"])
        vectors, ok = embedder.embed_paths(files)
        opened = prepared.copy()
        opened[prepared] = ok
        return self.identify(vectors, top=top), opened

    def save(self, directory: str | os.PathLike) -> Path:
        """index.npz + gallery_ids.json (+ gallery_species.json) + identifier.json, each
        written atomically.

        The sidecar goes last, so a directory with a sidecar is always complete.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / SIDECAR).unlink(missing_ok=True)  # mark incomplete while rewriting
        self.index.save(directory / INDEX_FILE)
        with atomic_path(directory / IDS_FILE) as tmp:
            tmp.write_text(json.dumps(self.gallery_ids), encoding="utf-8")
        if self.gallery_species is None:
            (directory / SPECIES_FILE).unlink(missing_ok=True)  # not another save's leftover
        else:
            with atomic_path(directory / SPECIES_FILE) as tmp:
                tmp.write_text(json.dumps(self.gallery_species), encoding="utf-8")
        checkpoint = self.metadata.get("source", {}).get("checkpoint")
        if checkpoint and Path(checkpoint).resolve() != (directory / MODEL_FILE).resolve():
            # The model travels with the index, so photos can be identified from this folder alone.
            with atomic_path(directory / MODEL_FILE) as tmp:
                shutil.copyfile(checkpoint, tmp)
            self.metadata["source"] = {"checkpoint": str((directory / MODEL_FILE).resolve())}
        sidecar = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "kind": self.index.kind,
            "dim": self.index.dim,
            "n": len(self),
            "n_individuals": self.n_individuals,
            "threshold": self.threshold,
            "neighbours": self.neighbours,
            "per_photo_species": self.gallery_species is not None,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "metadata": self.metadata,
        }
        with atomic_path(directory / SIDECAR) as tmp:
            tmp.write_text(json.dumps(sidecar, indent=2) + "\n", encoding="utf-8")
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike, *, threads: int | None = None) -> Identifier:
        directory = Path(directory)
        sidecar_path = directory / SIDECAR
        if not sidecar_path.is_file():
            raise FileNotFoundError(f"no {SIDECAR} in {directory} (not an Identifier, or its "
                                    "save was interrupted)")
        sidecar = json.loads(sidecar_path.read_text(encoding="utf-8"))
        if sidecar.get("format") != FORMAT:
            raise ValueError(f"{sidecar_path} is not a whaleid identifier sidecar")
        if sidecar.get("version", 0) > FORMAT_VERSION:
            raise ValueError(f"{directory} was written by a newer whaleid")
        index = load_index(directory / INDEX_FILE, threads=threads)
        ids = json.loads((directory / IDS_FILE).read_text(encoding="utf-8"))
        if len(index) != sidecar["n"] or index.dim != sidecar["dim"]:
            raise ValueError(f"{directory}: index (n={len(index)}, dim={index.dim}) does not "
                             f"match its sidecar (n={sidecar['n']}, dim={sidecar['dim']})")
        species = None  # version 1 sidecars have neither species nor per-species thresholds
        if sidecar.get("per_photo_species"):
            species = json.loads((directory / SPECIES_FILE).read_text(encoding="utf-8"))
        return cls(index, ids, threshold=sidecar["threshold"],
                   neighbours=sidecar.get("neighbours", 100),
                   metadata=sidecar.get("metadata") or {}, gallery_species=species)


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


def _sweep_threshold(rankings: Sequence[Ranking], truths: Sequence[str],
                     thresholds: np.ndarray | Sequence[float] | None = None) -> float:
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
        rate = _finite(new_rate)
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
    species = _check_species(species, len(rankings), "species")
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


def _prepared_files(paths: list[str], preprocess: dict) -> tuple[list[str], np.ndarray]:
    """Cached crops of loose photo files, and which photos could be prepared."""
    import pandas as pd

    from whaleid.preprocess.cache import CacheSettings, cached_catalog
    from whaleid.data.catalog import Catalog

    settings = CacheSettings.from_dict(preprocess["cache"])
    if settings.crop == "boxes":
        raise ValueError("this gallery was embedded with external boxes; crop the photos with `whaleid cache` first")
    catalog = Catalog(pd.DataFrame({"image": paths, "individual_id": None}), images_dir=Path("/"))
    cached = cached_catalog(catalog, settings, progress=False).table.set_index("image")["path"]
    return cached.tolist(), np.array([p in cached.index for p in paths], dtype=bool)
