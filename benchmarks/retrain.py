"""`whaleid catalog retrain` on a catalog built from the right-whale data, as a field team would grow one.

    .venv/bin/python benchmarks/retrain.py [--out runs/retrain-bench] [--epochs 10] [--known 0.6] [--seed 0]

The catalog starts on ImageNet features (EfficientNet-Lite0 at 160 px saved as a checkpoint: no training);
``--known`` of the individuals are imported with all their photos, the others' photos are added as one
survey, and every waiting photo is decided by the truth (confirmed, or a new individual named by it). Then the
catalog retrains with configs/right-whales.yaml's train section; the report (current model, new one,
ImageNet-only start, on the same held-out individuals) and the times go to OUT/report.json.
docs/benchmarks.md has the numbers.
"""

import argparse
import json
import shutil
import time
from pathlib import Path

import pandas as pd

from whaleid.model.checkpoint import save_checkpoint
from whaleid.model.network import EmbeddingModel, ModelConfig
from whaleid.settings import load_yaml
from whaleid.store.browse import catalog_id
from whaleid.store.catalog import CatalogStore
from whaleid.store.intake import EncounterInfo
from whaleid.train.retrain import recipe_trainer

DATA = Path("../shared/data/right-whale-heads")


def grown_catalog(out: Path, known: float, size: int) -> CatalogStore:
    """The catalog: a share of the individuals imported, the rest added and decided by the truth."""
    table = pd.read_csv(DATA / "train.csv")
    ids = sorted(table["individual_id"].unique())
    first = set(ids[: round(known * len(ids))])
    table[table["individual_id"].isin(first)].to_csv(out / "known.csv", index=False)
    network = EmbeddingModel(ModelConfig(backbone="tf_efficientnet_lite0", embedding_dim=0, img_size=size))
    model = save_checkpoint(network.eval(), out / "imagenet" / "model", ["imagenet"])
    store = CatalogStore.create(out / "catalog", model.parent)
    store.intake.import_catalog(out / "known.csv", DATA / "images")
    survey = table[~table["individual_id"].isin(first)]
    added = store.intake.add([DATA / "images" / n for n in survey["image"]], EncounterInfo(place="survey"))
    truth = dict(zip(survey["image"], survey["individual_id"]))
    named: dict[str, str] = {}
    for item in store.review.queue(limit=None):
        animal = truth[item.name]
        if animal in named:
            store.review.decide(item.photo, confirm=named[animal], reviewer="truth")
        else:
            decision = store.review.decide(item.photo, new=True, name=animal, reviewer="truth")
            named[animal] = catalog_id(store, decision.individual_id)
    print(f"catalog: {len(first)} individuals imported, {len(added.added)} survey photos decided by the truth")
    return store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/retrain-bench"))
    parser.add_argument("--epochs", type=int, default=None, help="default: the recipe's")
    parser.add_argument("--known", type=float, default=0.6)
    parser.add_argument("--holdout", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=0, help="which individuals are held out")
    args = parser.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    recipe = load_yaml("configs/right-whales.yaml")["train"]
    started = time.time()
    store = grown_catalog(args.out, args.known, recipe["model"]["img_size"])
    built = time.time() - started
    report = store.retrain.run(recipe_trainer(recipe, args.epochs), args.holdout, args.seed, progress=_say)
    report["seconds"]["catalog_built"] = round(built, 1)
    (args.out / "report.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


def _say(stage: str, done: int, total: int) -> None:
    print(f"{time.strftime('%H:%M:%S')} {stage} {done}/{total}", flush=True)


if __name__ == "__main__":
    main()
