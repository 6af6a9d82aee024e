"""Ablation of the competition tricks on one Happywhale-style split: each row adds one trick.

Rows: the pretrained backbone without training; single model; + flip TTA; + k-fold
ensemble; + kNN/logit blend (weight chosen on validation); + rate threshold (validation
share of new animals); + one pseudo-label round (the folds retrained on the training
photos plus confident test answers); and, apart, the single model trained with
progressive resizing. Models and embeddings are kept under --out, so an interrupted
run resumes.

    .venv/bin/python benchmarks/ablation.py configs/right-whales.yaml --out runs/ablation
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import pandas as pd
import yaml

from whaleid.data.catalog import read_catalog
from whaleid.experiments.pseudo import pseudo_labels, save_pseudo_labels, with_pseudo_labels
from whaleid.experiments.recipe import (
    combine,
    embed_split,
    load_recipe,
    score,
    train_models,
)
from whaleid.model.embed import Embedder
from whaleid.model.embeddings import Embeddings
from whaleid.search.metrics import json_float
from whaleid.search.openset import known_accuracy
from whaleid.search.ranking import NEW_INDIVIDUAL, truths


class Ablation:
    """The split, the models and embeddings (cached under ``out``) and the table of rows so far."""

    def __init__(self, recipe, out: Path):
        self.recipe, self.out = recipe, out
        self.split = recipe.data.split(read_catalog(recipe.data.csv, recipe.data.images, progress=False))
        self.split.save(out / "split")
        self.timings: dict[str, float] = {}
        self.rows: list[dict] = []

    def cached(self, folder: Path, make_embedder) -> dict[str, Embeddings]:
        if not (folder / "test" / "embeddings.json").exists():
            start = time.time()
            for name, part in embed_split(make_embedder(), self.split, progress=False).items():
                part.save(folder / name)
            (folder / "seconds.json").write_text(json.dumps(time.time() - start))
        self.timings[str(folder)] = json.loads((folder / "seconds.json").read_text())
        return {name: Embeddings.load(folder / name) for name in ("fit", "val", "test", "gallery")}

    def embedded(self, paths: list[Path], tta: bool) -> dict[str, Embeddings]:
        members = []
        for path in paths:
            run = path.parent.relative_to(self.out).as_posix().replace("/", "-")
            folder = self.out / "embeddings" / run / ("tta" if tta else "plain")
            members.append(
                self.cached(folder, lambda path=path: Embedder.from_checkpoint(path, tta_flip=tta, batch_size=64))
            )
        return combine(members, self.recipe.ensemble)

    def trained(self, name: str, catalog, **changes) -> tuple[list[Path], float]:
        return train_models(catalog, dataclasses.replace(self.recipe, **changes), self.out / name, self.split.val)

    def row(self, label: str, parts, train_seconds: float, embed_folders: int, blend: float | str, threshold: str):
        identify = dataclasses.replace(self.recipe.identify, blend=blend, threshold=threshold)
        scored = score(parts, dataclasses.replace(self.recipe, identify=identify))
        embed_seconds = sum(list(self.timings.values())[-embed_folders:])
        metrics = {k: v for k, v in scored.metrics.items() if k != "threshold"}
        # known animals the model trained on vs those only in the gallery (val individuals);
        # known_accuracy skips queries whose truth is new, so the other group is marked new
        test_truths = truths(
            parts["test"].table["individual_id"].tolist(), parts["gallery"].table["individual_id"].tolist()
        )
        trained_ids = set(self.split.fit.table["individual_id"])
        for name, keep in (("trained", True), ("untrained", False)):
            group = [t if (t in trained_ids) == keep else NEW_INDIVIDUAL for t in test_truths]
            metrics[f"top1_known_{name}"] = known_accuracy(scored.rankings, group, 1)
        self.rows.append({"row": label, **metrics, "train_min": train_seconds / 60, "embed_min": embed_seconds / 60})
        print(pd.DataFrame(self.rows).to_string(index=False, float_format=lambda v: f"{v:.3f}"), flush=True)
        return scored

    def tricks(self):
        """The rows from the zero-shot backbone to the rate threshold; returns the last one's scores."""
        model = self.recipe.train.model
        zero_shot = self.cached(
            self.out / "embeddings" / "zero-shot",
            lambda: Embedder.zero_shot(model.backbone, model.img_size, batch_size=64),
        )
        self.row("zero-shot backbone (no training)", zero_shot, 0.0, 1, 0.0, "sweep")
        single, t_single = self.trained("single", self.split.fit, folds=1)
        self.row("single model", self.embedded(single, False), t_single, 1, 0.0, "sweep")
        self.row("+ flip TTA", self.embedded(single, True), t_single, 1, 0.0, "sweep")
        folds, self.t_folds = self.trained("folds", self.split.fit)
        parts, k = self.embedded(folds, True), self.recipe.folds
        self.row(f"+ {k}-fold ensemble", parts, self.t_folds, k, 0.0, "sweep")
        self.row("+ kNN/logit blend", parts, self.t_folds, k, "auto", "sweep")
        return self.row("+ rate threshold", parts, self.t_folds, k, "auto", "rate")

    def pseudo_round(self, labels) -> None:
        pseudo, t_pseudo = self.trained("pseudo", with_pseudo_labels(self.split.fit, self.split.test, labels))
        self.row(
            "+ one pseudo-label round",
            self.embedded(pseudo, True),
            self.t_folds + t_pseudo,
            self.recipe.folds,
            "auto",
            "rate",
        )

    def progressive(self, schedule: dict[int, int]) -> None:
        train = dataclasses.replace(self.recipe.train, img_size_schedule=schedule)
        progressive, t_prog = self.trained("single-progressive", self.split.fit, folds=1, train=train)
        self.row("single model + progressive resizing", self.embedded(progressive, False), t_prog, 1, 0.0, "sweep")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe")
    parser.add_argument("--out", type=Path, default=Path("runs/ablation"))
    parser.add_argument("--set", action="append", default=[], help="recipe override, e.g. train.epochs=2")
    parser.add_argument("--schedule", default="{0: 112, 3: 136, 6: 160}", help="progressive-resizing schedule (YAML)")
    parser.add_argument("--skip", default="", help="comma-separated rows to leave out: pseudo, progressive")
    args = parser.parse_args()
    ablation = Ablation(load_recipe(args.recipe, args.set), args.out)
    split, recipe = ablation.split, ablation.recipe
    scored = ablation.tricks()
    skip = set(filter(None, args.skip.split(",")))
    species_of = dict(zip(split.gallery.table["individual_id"], split.gallery.table["species"]))
    images = split.test.table["image"].tolist()
    labels = pseudo_labels(images, scored.rankings, recipe.pseudo_confidence, species_of, threshold=scored.threshold)
    save_pseudo_labels(labels, args.out / "folds" / "pseudo_labels.csv")
    if "pseudo" not in skip:
        ablation.pseudo_round(labels)
    if "progressive" not in skip:
        ablation.progressive({int(k): int(v) for k, v in yaml.safe_load(args.schedule).items()})

    correct = labels.merge(split.test.table[["image", "individual_id"]], on="image", suffixes=("", "_true"))
    accuracy = float((correct["individual_id"] == correct["individual_id_true"]).mean()) if len(labels) else None
    rows = [{k: json_float(v) if isinstance(v, float) else v for k, v in r.items()} for r in ablation.rows]
    summary = {"split": split.sizes(), "pseudo_labels": len(labels), "pseudo_label_accuracy": accuracy, "rows": rows}
    (args.out / "ablation.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: v for k, v in summary.items() if k != "rows"}, indent=2))


if __name__ == "__main__":
    main()
