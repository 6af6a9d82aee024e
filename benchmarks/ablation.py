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

from whaleid.data.catalog import NEW_INDIVIDUAL, read_catalog
from whaleid.model.embed import Embedder, Embeddings
from whaleid.search.metrics import json_float
from whaleid.search.openset import known_accuracy
from whaleid.experiments.pseudo import pseudo_labels, with_pseudo_labels
from whaleid.experiments.recipe import (
    Split,
    combine,
    embed_split,
    load_recipe,
    score,
    train_round,
    truths,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe")
    parser.add_argument("--out", type=Path, default=Path("runs/ablation"))
    parser.add_argument("--set", action="append", default=[], help="recipe override, e.g. train.epochs=2")
    parser.add_argument("--schedule", default="{0: 112, 3: 136, 6: 160}", help="progressive-resizing schedule (YAML)")
    parser.add_argument("--skip", default="", help="comma-separated rows to leave out: pseudo, progressive")
    args = parser.parse_args()
    recipe = load_recipe(args.recipe, args.set)
    out = args.out
    split = Split.make(read_catalog(recipe.data.csv, recipe.data.images, progress=False), recipe.data)
    split.save(out / "split")
    timings: dict[str, float] = {}

    def cached(folder: Path, make_embedder) -> dict[str, Embeddings]:
        if not (folder / "test" / "embeddings.json").exists():
            start = time.time()
            parts = embed_split(make_embedder(), split, progress=False)
            for name, part in parts.items():
                part.save(folder / name)
            (folder / "seconds.json").write_text(json.dumps(time.time() - start))
        timings[str(folder)] = json.loads((folder / "seconds.json").read_text())
        return {name: Embeddings.load(folder / name) for name in ("fit", "val", "test", "gallery")}

    def embedded(paths: list[Path], tta: bool) -> dict[str, Embeddings]:
        members = []
        for path in paths:
            folder = out / "embeddings" / path.parent.relative_to(out).as_posix().replace("/", "-") / ("tta" if tta else "plain")
            members.append(cached(folder, lambda path=path: Embedder.from_checkpoint(path, tta_flip=tta, batch_size=64)))
        return combine(members, recipe.ensemble)

    def trained(name: str, catalog, **changes) -> tuple[list[Path], float]:
        variant = dataclasses.replace(recipe, **changes)
        return train_round(catalog, split, variant, out / name, progress=True)

    rows = []
    trained_ids = set(split.fit.table["individual_id"])

    def row(label: str, parts, train_seconds: float, embed_folders: int, **changes):
        scored = score(parts, dataclasses.replace(recipe, **changes))
        embed_seconds = sum(list(timings.values())[-embed_folders:])
        metrics = {k: v for k, v in scored.metrics.items() if k != "threshold"}
        # known animals the model trained on vs those only in the gallery (val individuals);
        # known_accuracy skips queries whose truth is new, so the other group is marked new
        test_truths = truths(parts["test"], parts["gallery"])
        for name, keep in (("trained", True), ("untrained", False)):
            group = [t if (t in trained_ids) == keep else NEW_INDIVIDUAL for t in test_truths]
            metrics[f"top1_known_{name}"] = known_accuracy(scored.rankings, group, 1)
        rows.append({"row": label, **metrics, "train_min": train_seconds / 60, "embed_min": embed_seconds / 60})
        print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.3f}"), flush=True)
        return scored

    zero_shot = cached(out / "embeddings" / "zero-shot",
                       lambda: Embedder.zero_shot(recipe.train.backbone, recipe.train.img_size, batch_size=64))
    row("zero-shot backbone (no training)", zero_shot, 0.0, 1, blend=0.0, threshold="sweep")
    single, t_single = trained("single", split.fit, folds=1)
    row("single model", embedded(single, False), t_single, 1, blend=0.0, threshold="sweep")
    row("+ flip TTA", embedded(single, True), t_single, 1, blend=0.0, threshold="sweep")
    folds, t_folds = trained("folds", split.fit)
    ensemble_parts = embedded(folds, True)
    row(f"+ {recipe.folds}-fold ensemble", ensemble_parts, t_folds, recipe.folds, blend=0.0, threshold="sweep")
    row("+ kNN/logit blend", ensemble_parts, t_folds, recipe.folds, blend=None, threshold="sweep")
    scored = row("+ rate threshold", ensemble_parts, t_folds, recipe.folds, blend=None, threshold="rate")
    skip = set(filter(None, args.skip.split(",")))
    species_of = dict(zip(split.gallery.table["individual_id"], split.gallery.table["species"]))
    labels = pseudo_labels(split.test.table["image"].tolist(), scored.rankings, recipe.pseudo_confidence, species_of,
                           threshold=scored.threshold)
    (out / "folds").mkdir(parents=True, exist_ok=True)
    labels.to_csv(out / "folds" / "pseudo_labels.csv", index=False)
    if "pseudo" not in skip:
        pseudo, t_pseudo = trained("pseudo", with_pseudo_labels(split.fit, split.test, labels))
        row("+ one pseudo-label round", embedded(pseudo, True), t_folds + t_pseudo, recipe.folds, blend=None, threshold="rate")
    if "progressive" not in skip:
        schedule = {int(k): int(v) for k, v in yaml.safe_load(args.schedule).items()}
        progressive, t_prog = trained("single-progressive", split.fit, folds=1,
                                      train=dataclasses.replace(recipe.train, img_size_schedule=schedule))
        row("single model + progressive resizing", embedded(progressive, False), t_prog, 1, blend=0.0, threshold="sweep")

    correct = labels.merge(split.test.table[["image", "individual_id"]], on="image", suffixes=("", "_true"))
    summary = {"split": split.sizes(), "pseudo_labels": len(labels),
               "pseudo_label_accuracy": float((correct["individual_id"] == correct["individual_id_true"]).mean()) if len(labels) else None,
               "rows": [{k: json_float(v) if isinstance(v, float) else v for k, v in r.items()} for r in rows]}
    (out / "ablation.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: v for k, v in summary.items() if k != "rows"}, indent=2))


if __name__ == "__main__":
    main()
