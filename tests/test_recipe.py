"""Recipes: YAML + overrides resolve to one config; the Happywhale-style run trains, scores and pseudo-labels."""

import json

import pytest
import yaml

from whaleid.data.catalog import read_catalog
from whaleid.errors import UserError
from whaleid.experiments.recipe import DataConfig, Recipe, load_recipe, run_recipe
from whaleid.model.checkpoint import load_checkpoint
from whaleid.search.ranking import NEW_INDIVIDUAL
from whaleid.settings import from_dict

TINY = {
    "model": {"backbone": "test_efficientnet", "embedding_dim": 16, "img_size": 48},
    "pretrained": False,
    "batch_size": 8,
    "num_workers": 0,
    "epochs": 1,
    "max_steps_per_epoch": 3,
}


def test_overrides_change_single_keys(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(
        yaml.safe_dump({"train": {"epochs": 5, "model": {"img_size": 64}}, "folds": 3, "data": {"csv": "x.csv"}})
    )
    recipe = load_recipe(path, ["train.epochs=2", "identify.blend=0.5", "train.img_size_schedule={0: 32, 1: 64}"])
    assert recipe.train.epochs == 2 and recipe.train.model.img_size == 64 and recipe.folds == 3
    assert (
        recipe.identify.blend == 0.5 and recipe.train.img_size_schedule == {0: 32, 1: 64} and recipe.data.csv == "x.csv"
    )
    assert load_recipe(None, ["train.mixed_precision=no"]).train.mixed_precision == "no"  # YAML's bare no is false
    with pytest.raises(ValueError, match="epochz"):
        load_recipe(path, ["train.epochz=2"])
    with pytest.raises(ValueError, match="threshold"):
        load_recipe(None, ["identify.threshold=magic"])
    with pytest.raises(ValueError, match="key.sub=value"):
        load_recipe(None, ["folds"])


def test_shipped_recipes_resolve():
    from pathlib import Path

    from whaleid.experiments.demo import load_demo_config

    recipes = [p for p in sorted((Path(__file__).parents[1] / "configs").glob("*.yaml")) if p.name != "demo.yaml"]
    assert len(recipes) == 3
    for path in recipes:
        assert isinstance(load_recipe(path), Recipe), path
    demo = load_demo_config()  # the packaged one, the only place the demo's values live
    assert demo.train.model.img_size == 128 and demo.train.epochs == 20 and demo.photos == (4, 10)
    assert load_demo_config(None, ["train.epochs=2"]).train.epochs == 2


def test_split_is_happywhale_like(synth_csv):
    catalog = read_catalog(synth_csv)
    split = DataConfig(new_fraction=0.25, holdout_fraction=0.2, val_new_fraction=0.2, val_holdout_fraction=0.2).split(
        catalog
    )
    names = [set(getattr(split, p).table["image"]) for p in ("fit", "val", "test")]
    assert sum(map(len, names)) == len(catalog) and not (
        names[0] & names[1] or names[0] & names[2] or names[1] & names[2]
    )
    train_ids = set(split.gallery.table["individual_id"])
    test = split.test.table
    new = test[~test["individual_id"].isin(train_ids)]
    assert 0 < len(new) < len(test)  # both unseen animals and held-out photos of known ones


def test_run_recipe_folds_blend_and_a_pseudo_round(synth_csv, tmp_path):
    recipe = from_dict(
        Recipe,
        {
            "data": {"csv": str(synth_csv), "new_fraction": 0.25, "val_new_fraction": 0.25},
            "train": TINY,
            "folds": 2,
            "identify": {"blend": "auto", "threshold": "rate"},
            "pseudo_rounds": 1,
            "pseudo_confidence": 0.0,
        },
    )
    report = run_recipe(recipe, tmp_path, progress=False)
    assert len(report["rounds"]) == 2
    first, second = report["rounds"]
    assert 0 <= first["map5"] <= 1 and first["blend"] in (0.0, 0.25, 0.5, 0.75, 1.0)
    pseudo = (tmp_path / "round0" / "pseudo_labels.csv").read_text().splitlines()
    assert second["train_photos"] == first["train_photos"] + len(pseudo) - 1
    assert NEW_INDIVIDUAL not in "".join(pseudo)
    _, checkpoint = load_checkpoint(tmp_path / "round1" / "fold1" / "model.json")
    assert checkpoint.extra["recipe"]["folds"] == 2 and checkpoint.head["k"] == 3
    assert json.loads((tmp_path / "report.json").read_text())["rounds"][1]["map5"] == second["map5"]
    assert yaml.safe_load((tmp_path / "recipe.yaml").read_text())["pseudo_rounds"] == 1


@pytest.mark.parametrize(
    ("text", "overrides", "message"),
    [
        ("train: [1, 2]", [], "the recipe.train settings must be a mapping of keys"),
        ("data: 3", [], "the recipe.data settings must be a mapping"),
        ("data: {cvs: x.csv}", [], r"unknown recipe.data keys: \['cvs'\]"),
        ("folds: [", [], "cannot read the settings file"),
        ("identify: {blend: null}", [], "recipes score every individual"),
        ("folds: 0", [], "folds must be an integer >= 1, got 0"),
        ("pseudo_rounds: -1", [], "pseudo_rounds must be an integer >= 0"),
        ("identify: {blend: 1.5}", [], r"blend must be a number in \[0, 1\], 'auto' or null, got 1.5"),
        ("pseudo_confidence: .nan", [], r"pseudo_confidence must be a number in \[0, 1\]"),
        ("folds: 2", ["folds.x=1"], "cannot apply the override 'folds.x=1'"),
        ("train: {epochs: 0}", [], "epochs must be an integer >= 1, got 0"),
    ],
)
def test_a_bad_recipe_is_one_user_error(tmp_path, text, overrides, message):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=message):
        load_recipe(path, overrides)
