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
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from whaleid.data.catalog import Catalog, read_catalog
from whaleid.data.splits import OpenSetSplit
from whaleid.errors import UserError
from whaleid.experiments.pseudo import pseudo_labels, save_pseudo_labels, with_pseudo_labels
from whaleid.files import atomic_path
from whaleid.model.checkpoint import checkpoints
from whaleid.model.embed import Embedder
from whaleid.model.embeddings import ENSEMBLES, Embeddings, ensemble
from whaleid.model.keypoints import KeypointSet
from whaleid.preprocess.prepare import PreprocessConfig
from whaleid.search.identify import Identifier, IdentifyConfig
from whaleid.search.metrics import evaluate, json_float
from whaleid.search.openset import calibrate_then_score
from whaleid.search.ranking import NEW_INDIVIDUAL, Ranking, apply_threshold, truths
from whaleid.search.threshold import calibrate_threshold
from whaleid.settings import from_dict, load_yaml, to_dict
from whaleid.train import TrainConfig, train, train_folds

__all__ = ["DataConfig", "Recipe", "Scored", "load_recipe", "run_recipe", "score", "embed_split"]

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

    def split(self, catalog: Catalog) -> OpenSetSplit:
        return OpenSetSplit.make(
            catalog,
            self.new_fraction,
            self.val_new_fraction,
            self.seed,
            self.holdout_fraction,
            self.val_holdout_fraction,
        )


def _recipe_scoring() -> IdentifyConfig:
    """Recipes score every individual (the blend scorer, at weight 0 plain max cosine per individual)."""
    return IdentifyConfig(blend=0.0)


@dataclass
class Recipe:
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    preprocess: PreprocessConfig | None = None  # as `whaleid train --crop/--background` records it
    folds: int = 1  # 1: one model; k: one per fold, ensembled
    ensemble: str = "concat"
    tta: bool = True  # flip TTA on gallery and queries
    # blend: weight of the ArcFace-logit probabilities, or "auto" to choose it on validation;
    # threshold: sweep | rate | per-species; new_rate null: the share of new individuals among validation queries;
    # rerank: the shortlist re-ranked by local features (shortlist K, local_weight, keypoints, match), fused on val
    identify: IdentifyConfig = field(default_factory=_recipe_scoring)
    pseudo_rounds: int = 0
    pseudo_confidence: float = 0.7

    def __post_init__(self) -> None:
        if self.ensemble not in ENSEMBLES:
            raise UserError(f"unknown ensemble {self.ensemble!r}; valid: {', '.join(ENSEMBLES)}")
        for name, low in (("folds", 1), ("pseudo_rounds", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise UserError(f"{name} must be an integer >= {low}, got {value!r}")
        value = self.pseudo_confidence
        if not (isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1):
            raise UserError(f"pseudo_confidence must be a number in [0, 1], got {value!r}")
        if self.identify.blend is None:
            raise UserError("recipes score every individual: give identify.blend a weight in [0, 1] or 'auto'")

    def to_dict(self) -> dict:
        return to_dict(self)


def load_recipe(path: str | Path | None, overrides: Sequence[str] = ()) -> Recipe:
    """A recipe file (or the defaults) with ``key.sub=value`` overrides, values read as YAML."""
    return from_dict(Recipe, load_yaml(path, overrides), "recipe")


@dataclass
class Scored:
    metrics: dict
    predictions: list[list[str]]
    rankings: list[Ranking]
    threshold: float | dict


def _best_blend(fit: Identifier, val: Embeddings, val_truths: list[str]) -> float:
    """The blend weight whose sweep-calibrated validation MAP@5 is best."""
    at = fit.blend_ranker(val)

    def val_map(weight: float) -> float:
        r = at(weight)
        return evaluate(
            [a.ids for a in apply_threshold(r, calibrate_threshold(r, val_truths, "sweep"))], val_truths
        ).map5

    return max(BLEND_GRID, key=val_map)


def score(parts: dict[str, Embeddings], recipe: Recipe) -> Scored:
    """Test metrics with the blend and threshold chosen on validation queries (never on the test truths)."""
    fit, val, test, gallery = parts["fit"], parts["val"], parts["test"], parts["gallery"]
    val_truths = truths(val.table["individual_id"].tolist(), fit.table["individual_id"].tolist())
    config = recipe.identify
    if config.blend == "auto":
        config = replace(
            config, blend=_best_blend(Identifier.from_embeddings(fit, replace(config, blend=0.0)), val, val_truths)
        )
    if config.threshold == "rate" and config.new_rate is None:
        config = replace(config, new_rate=float(np.mean([t == NEW_INDIVIDUAL for t in val_truths])))
    scored = calibrate_then_score(Identifier.from_embeddings(fit, config), val, test, gallery)
    metrics = scored.metrics()
    threshold = metrics.pop("threshold")
    metrics.update(blend=config.blend, threshold=threshold)  # threshold last, as printed
    return Scored(metrics, scored.answers(), scored.rankings, scored.scorer.threshold)


def embed_split(embedder: Embedder, split: OpenSetSplit, progress: bool = True) -> dict[str, Embeddings]:
    """Embeddings of every part; the gallery reuses fit's and val's vectors."""
    parts = {name: embedder.embed_catalog(getattr(split, name), progress) for name in ("fit", "val", "test")}
    fit, val = parts["fit"], parts["val"]
    parts["gallery"] = Embeddings(
        np.concatenate([fit.vectors, val.vectors]),
        pd.concat([fit.table, val.table], ignore_index=True),
        meta=fit.meta,
        class_cosines=None if fit.class_cosines is None else np.concatenate([fit.class_cosines, val.class_cosines]),
        keypoints=None if fit.keypoints is None else KeypointSet.concat([fit.keypoints, val.keypoints]),
    )
    return parts


def combine(members: list[dict[str, Embeddings]], mode: str) -> dict[str, Embeddings]:
    return members[0] if len(members) == 1 else {p: ensemble([m[p] for m in members], mode) for p in members[0]}


def train_models(
    catalog: Catalog, recipe: Recipe, out_dir: str | Path, val: Catalog | None = None, **options: bool
) -> tuple[list[Path], float]:
    """One model (validated on ``val``) or one per fold; returns the checkpoints and the training seconds,
    counting earlier runs that this one resumed. ``options`` go to the trainer: ``resume`` (default yes), ``progress``."""
    options = {
        "resume": True,
        **options,
        "preprocess": None if recipe.preprocess is None else recipe.preprocess.to_dict(),
    }
    options["extra"] = {"recipe": recipe.to_dict()}
    if recipe.folds == 1:
        results = [train(catalog, recipe.train, out_dir, val_catalog=val, **options)]
    else:
        results = train_folds(catalog, recipe.train, out_dir, recipe.folds, **options)
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
    split = recipe.data.split(catalog)
    split.save(out_dir / "split")
    report: dict = {"split": split.sizes(), "rounds": []}
    training = split.fit
    gallery = split.gallery.table
    species_of = dict(zip(gallery["individual_id"], gallery["species"]))
    for round_ in range(recipe.pseudo_rounds + 1):
        paths, seconds = train_models(training, recipe, out_dir / f"round{round_}", split.val, progress=progress)
        rerank = recipe.identify.rerank
        keypoints = None if rerank is None else rerank.keypoints  # of the photos: once, not per model
        embedders = [
            Embedder.from_checkpoint(p, tta_flip=recipe.tta, batch_size=64, keypoints=None if i else keypoints)
            for i, p in enumerate(paths)
        ]
        members = [embed_split(embedder, split, progress) for embedder in embedders]
        scored = score(combine(members, recipe.ensemble), recipe)
        metrics = {**scored.metrics, "train_photos": len(training), "train_seconds": seconds}
        report["rounds"].append({k: (json_float(v) if isinstance(v, float) else v) for k, v in metrics.items()})
        if round_ < recipe.pseudo_rounds:
            labels = pseudo_labels(
                split.test.table["image"].tolist(),
                scored.rankings,
                recipe.pseudo_confidence,
                species_of,
                threshold=scored.threshold if isinstance(scored.threshold, float) else None,
            )
            save_pseudo_labels(labels, out_dir / f"round{round_}" / "pseudo_labels.csv")
            training = with_pseudo_labels(split.fit, split.test, labels)
        with atomic_path(out_dir / "report.json") as tmp:
            tmp.write_text(json.dumps(report, indent=2, default=str))
    return report
