"""Recipes: one YAML file describes a whole run, from the split to the threshold policy.

A recipe names the data and how to split it the Happywhale way, the photo preprocessing,
the training options (:class:`whaleid.train.TrainConfig`, including image-size and
unfreezing schedules), k-fold ensembling, flip TTA, the kNN/ArcFace-logit blend, the
new_individual threshold policy and pseudo-label rounds. ``key=value`` overrides change
single keys (``train.epochs=3``); the resolved recipe is saved beside every checkpoint.

:func:`run_recipe` is the Kaggle-style experiment: some individuals are held out whole
("new") and some photos of the rest ("known"); models train on the remainder; the test
set is both held-out parts, unlabelled during training (pseudo-labels are drawn from
it), scored against the training photos as gallery. A validation set carved from the
training part the same way chooses the threshold (and the blend weight, if asked).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from functools import cache
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import yaml

from whaleid.data.catalog import (
    NEW_INDIVIDUAL,
    Catalog,
    holdout_photos,
    open_set_split,
    read_catalog,
)
from whaleid.model.embed import ENSEMBLES, Embedder, Embeddings, ensemble
from whaleid.errors import UserError
from whaleid.search.metrics import evaluate, json_float
from whaleid.files import atomic_path
from whaleid.search.identify import (
    Ranking,
    apply_threshold,
    calibrate_per_species,
    calibrate_threshold,
)
from whaleid.search.openset import ceiling_map5, known_accuracy
from whaleid.experiments.pseudo import pseudo_labels, with_pseudo_labels
from whaleid.search.scoring import align, blend, knn_scores, logit_probabilities, rank_scores
from whaleid.train import TrainConfig, checkpoints, train, train_folds

__all__ = ["POLICIES", "DataConfig", "Recipe", "Split", "Scored", "load_recipe", "run_recipe", "score", "embed_split"]

POLICIES = ("sweep", "rate", "per-species")
BLEND_GRID = (0.0, 0.25, 0.5, 0.75, 1.0)


@dataclass
class DataConfig:
    csv: str = ""
    images: str | None = None
    new_fraction: float = 0.3  # individuals held out whole: test queries whose truth is new_individual
    holdout_fraction: float = 0.2  # photos of the other individuals held out: known test queries
    val_new_fraction: float = 0.15  # the same two cuts inside the training part, for calibration
    val_holdout_fraction: float = 0.15
    seed: int = 0


@dataclass
class Recipe:
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    preprocess: dict | None = None  # as `whaleid train --crop/--background` records it
    folds: int = 1  # 1: one model; k: one per fold, ensembled
    ensemble: str = "concat"
    tta: bool = True  # flip TTA on gallery and queries
    blend: float | None = 0.0  # weight of the ArcFace-logit probabilities; None: choose on validation
    threshold: str = "sweep"  # sweep | rate | per-species
    new_rate: float | None = None  # for "rate"; None: the share of new individuals among validation queries
    pseudo_rounds: int = 0
    pseudo_confidence: float = 0.7

    def __post_init__(self) -> None:
        if self.threshold not in POLICIES:
            raise UserError(f"unknown threshold policy {self.threshold!r}; valid: {', '.join(POLICIES)}")
        if self.ensemble not in ENSEMBLES:
            raise UserError(f"unknown ensemble {self.ensemble!r}; valid: {', '.join(ENSEMBLES)}")
        for name, low in (("folds", 1), ("pseudo_rounds", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise UserError(f"{name} must be an integer >= {low}, got {value!r}")
        for name in ("blend", "new_rate", "pseudo_confidence"):
            value = getattr(self, name)
            if (value is not None or name == "pseudo_confidence") and not (
                    isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1):
                raise UserError(f"{name} must be a number in [0, 1], got {value!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> Recipe:
        values = dict(_section(values, "recipe", cls))
        values["data"] = DataConfig(**_section(values.get("data", {}), "data", DataConfig))
        values["train"] = TrainConfig.from_dict(values.get("train", {}))
        return cls(**values)


def _section(values: Any, name: str, kind: type) -> dict:
    """One level of a recipe: a mapping of known keys."""
    known = {f.name for f in fields(kind)}
    if not isinstance(values, dict):
        raise UserError(f"the {name} section of a recipe must be a mapping of keys, got {values!r}")
    unknown = set(values) - known
    if unknown:
        raise UserError(f"unknown {name} keys: {sorted(map(str, unknown))}; valid: {sorted(known)}")
    return values


def _set(tree: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for key in parents:
        tree = tree.setdefault(key, {})
    tree[leaf] = value


def load_recipe(path: str | Path | None, overrides: Sequence[str] = ()) -> Recipe:
    """A recipe file (or the defaults) with ``key.sub=value`` overrides, values read as YAML."""
    try:
        tree = (yaml.safe_load(Path(path).read_text()) or {}) if path else {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise UserError(f"cannot read the recipe {path}: {' '.join(str(error).split())}") from error
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"override {item!r} must look like key.sub=value")
        try:
            _set(tree, key.strip(), yaml.safe_load(value))
        except (AttributeError, TypeError, yaml.YAMLError) as error:  # a key below a plain value, or unreadable YAML
            raise UserError(f"cannot apply the override {item!r}: {' '.join(str(error).split())}") from error
    return Recipe.from_dict(tree)


@dataclass
class Split:
    """fit (trained on), val (calibration queries against fit) and test (queries against fit + val)."""

    fit: Catalog
    val: Catalog
    test: Catalog

    @classmethod
    def make(cls, catalog: Catalog, data: DataConfig) -> Split:
        def cut(part: Catalog, new_fraction: float, holdout: float, seed: int) -> tuple[Catalog, Catalog]:
            known, new = open_set_split(part, new_fraction, seed=seed)
            rest, held = holdout_photos(known, holdout, seed=seed)
            queries = pd.concat([new.table, held.table], ignore_index=True)
            return rest, Catalog(queries, part.images_dir, label_names=part.labels)

        train_part, test = cut(catalog, data.new_fraction, data.holdout_fraction, data.seed)
        fit, val = cut(train_part, data.val_new_fraction, data.val_holdout_fraction, data.seed + 1)
        return cls(fit, val, test)

    @property
    def gallery(self) -> Catalog:
        """All training photos: the test queries' gallery."""
        return Catalog(pd.concat([self.fit.table, self.val.table], ignore_index=True), self.fit.images_dir,
                       label_names=self.fit.labels)

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        for name in ("fit", "val", "test"):
            with atomic_path(directory / f"{name}.csv") as tmp:
                getattr(self, name).to_csv(tmp)

    def sizes(self) -> dict:
        return {n: {"photos": len(getattr(self, n)), "individuals": getattr(self, n).n_individuals} for n in ("fit", "val", "test")}


def truths(queries: Embeddings, gallery: Embeddings) -> list[str]:
    """A query's individual, or new_individual when the gallery has no photo of it."""
    known = set(gallery.table["individual_id"])
    return [i if i in known else NEW_INDIVIDUAL for i in queries.table["individual_id"]]


def ranker(gallery: Embeddings, queries: Embeddings) -> Callable[[float], list[Ranking]]:
    """Rankings at any blend weight; the kNN matrix (and the head probabilities) are computed once,
    so a search over weights costs one matrix, not one per weight."""
    knn, ids = knn_scores(queries.vectors, gallery.vectors, gallery.table["individual_id"].tolist())

    @cache
    def head() -> np.ndarray:  # only a blend needs it, and only models saved with their head have it
        if queries.class_cosines is None:
            raise ValueError("the blend needs models saved with their ArcFace head (class cosines)")
        probs = logit_probabilities(queries.class_cosines, queries.meta["arcface_scale"])
        return align(probs, queries.meta["classes"], ids)

    def at(weight: float) -> list[Ranking]:
        return rank_scores(knn if weight == 0 else blend(knn, head(), weight), ids)

    return at


def rankings(gallery: Embeddings, queries: Embeddings, weight: float) -> list[Ranking]:
    """Top individuals by max cosine per individual, blended with the ArcFace-logit probabilities."""
    return ranker(gallery, queries)(weight)


@dataclass
class Scored:
    metrics: dict
    predictions: list[list[str]]
    rankings: list[Ranking]
    threshold: float | dict


def score(parts: dict[str, Embeddings], recipe: Recipe) -> Scored:
    """Test metrics with the blend and threshold chosen on validation queries (never on the test truths)."""
    fit, val, test, gallery = parts["fit"], parts["val"], parts["test"], parts["gallery"]
    val_truths = truths(val, fit)
    species_of = dict(zip(gallery.table["individual_id"], gallery.table["species"]))

    val_rankings = ranker(fit, val)
    weight = recipe.blend
    if weight is None:  # the weight whose sweep-calibrated validation MAP@5 is best
        def val_map(w: float) -> float:
            r = val_rankings(w)
            answers = apply_threshold(r, calibrate_threshold(r, val_truths, "sweep"))
            return evaluate([a.ids for a in answers], val_truths).map5

        weight = max(BLEND_GRID, key=val_map)
    calibration = val_rankings(weight)
    test_rankings = rankings(gallery, test, weight)
    if recipe.threshold == "sweep":
        threshold: float | dict = calibrate_threshold(calibration, val_truths, "sweep")
    elif recipe.threshold == "rate":
        rate = recipe.new_rate if recipe.new_rate is not None else float(np.mean([t == NEW_INDIVIDUAL for t in val_truths]))
        threshold = calibrate_threshold(test_rankings, None, "rate", new_rate=rate)
    else:
        threshold = calibrate_per_species(calibration, val_truths, val.table["species"].tolist())
    predictions = [r.ids for r in apply_threshold(test_rankings, threshold, species_of=species_of)]
    test_truths = truths(test, gallery)
    report = evaluate(predictions, test_truths)
    metrics = {
        "map5": report.map5,
        "top1_known": known_accuracy(test_rankings, test_truths, 1),
        "top5_known": known_accuracy(test_rankings, test_truths, 5),
        "map5_ceiling": ceiling_map5(test_rankings, test_truths),
        "new_precision": report.new_precision,
        "new_recall": report.new_recall,
        "blend": weight,
        "threshold": threshold,
    }
    return Scored(metrics, predictions, test_rankings, threshold)


def embed_split(embedder: Embedder, split: Split, progress: bool = True) -> dict[str, Embeddings]:
    """Embeddings of every part; the gallery reuses fit's and val's vectors."""
    parts = {name: embedder.embed_catalog(getattr(split, name), progress) for name in ("fit", "val", "test")}
    fit, val = parts["fit"], parts["val"]
    parts["gallery"] = Embeddings(
        np.concatenate([fit.vectors, val.vectors]), pd.concat([fit.table, val.table], ignore_index=True),
        meta=fit.meta, class_cosines=None if fit.class_cosines is None else np.concatenate([fit.class_cosines, val.class_cosines]),
    )
    return parts


def combine(members: list[dict[str, Embeddings]], mode: str) -> dict[str, Embeddings]:
    return members[0] if len(members) == 1 else {p: ensemble([m[p] for m in members], mode) for p in members[0]}


def train_round(catalog: Catalog, split: Split, recipe: Recipe, out_dir: Path, progress: bool) -> tuple[list[Path], float]:
    """One model (validated on the split's val part) or one per fold; returns the checkpoints and the
    training seconds, counting earlier runs that this one resumed."""
    extra = {"recipe": recipe.to_dict()}
    if recipe.folds == 1:
        results = [train(catalog, recipe.train, out_dir, val_catalog=split.val, resume=True, progress=progress,
                         preprocess=recipe.preprocess, extra=extra)]
    else:
        results = train_folds(catalog, recipe.train, out_dir, recipe.folds, resume=True, progress=progress,
                              preprocess=recipe.preprocess, extra=extra)
    return checkpoints(out_dir), sum(r.seconds for r in results)


def run_recipe(recipe: Recipe, out_dir: str | Path, progress: bool = True) -> dict:
    """Train (folds), score, and pseudo-label for ``pseudo_rounds`` more rounds; writes report.json and recipe.yaml.

    Re-running resumes: finished models are reused (training resumes from ``last.pt``).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / "recipe.yaml") as tmp:
        tmp.write_text(yaml.safe_dump(recipe.to_dict(), sort_keys=False))
    catalog = read_catalog(recipe.data.csv, recipe.data.images, progress=progress)
    split = Split.make(catalog, recipe.data)
    split.save(out_dir / "split")
    report: dict = {"split": split.sizes(), "rounds": []}
    training = split.fit
    gallery = split.gallery.table
    species_of = dict(zip(gallery["individual_id"], gallery["species"]))
    for round_ in range(recipe.pseudo_rounds + 1):
        paths, seconds = train_round(training, split, recipe, out_dir / f"round{round_}", progress)
        members = [embed_split(Embedder.from_checkpoint(p, tta_flip=recipe.tta, batch_size=64), split, progress) for p in paths]
        scored = score(combine(members, recipe.ensemble), recipe)
        metrics = {**scored.metrics, "train_photos": len(training), "train_seconds": seconds}
        report["rounds"].append({k: (json_float(v) if isinstance(v, float) else v) for k, v in metrics.items()})
        if round_ < recipe.pseudo_rounds:
            labels = pseudo_labels(split.test.table["image"].tolist(), scored.rankings, recipe.pseudo_confidence,
                                   species_of, threshold=scored.threshold if isinstance(scored.threshold, float) else None)
            with atomic_path(out_dir / f"round{round_}" / "pseudo_labels.csv") as tmp:
                labels.to_csv(tmp, index=False)
            training = with_pseudo_labels(split.fit, split.test, labels)
        with atomic_path(out_dir / "report.json") as tmp:
            tmp.write_text(json.dumps(report, indent=2, default=str))
    return report
