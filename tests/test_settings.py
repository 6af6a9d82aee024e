"""One generic from_dict for every settings dataclass; the one split class; the typed preprocessing."""

from dataclasses import dataclass, field

import numpy as np
import pytest

from whaleid.data.catalog import read_catalog
from whaleid.data.splits import OpenSetSplit, open_set_split, write_folds
from whaleid.errors import UserError
from whaleid.model.network import ModelConfig
from whaleid.preprocess.cache import CacheSettings
from whaleid.preprocess.prepare import PreprocessConfig, parse_probabilities
from whaleid.settings import apply_overrides, from_dict, load_yaml, to_dict
from whaleid.train import TrainConfig


@dataclass
class Inner:
    size: tuple[int, int] = (1, 2)
    name: str = "x"


@dataclass
class Outer:
    inner: Inner = field(default_factory=Inner)
    maybe: Inner | None = None
    weight: float = 0.5


def test_from_dict_builds_nested_settings_and_converts_lists_to_tuples():
    outer = from_dict(Outer, {"inner": {"size": [3, 4]}, "maybe": {"name": "y"}, "weight": 1.0})
    assert outer == Outer(Inner((3, 4)), Inner(name="y"), 1.0)
    assert from_dict(Outer, to_dict(outer)) == outer  # to_dict is its inverse
    assert from_dict(Outer, {"maybe": None}).maybe is None


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"inner": {"szie": 1}}, r"unknown outer.inner keys: \['szie'\]; valid: \['name', 'size'\]"),
        ({"wieght": 1}, r"unknown outer keys: \['wieght'\]"),
        ({"inner": [1]}, r"the outer.inner settings must be a mapping of keys"),
        ([1, 2], "the outer settings must be a mapping"),
    ],
)
def test_unknown_or_malformed_keys_are_one_user_error_at_any_depth(values, message):
    with pytest.raises(UserError, match=message):
        from_dict(Outer, values, "outer")


def test_the_model_settings_live_once_inside_the_training_settings():
    config = from_dict(TrainConfig, {"epochs": 2, "model": {"img_size": 96, "mean": [0.1, 0.2, 0.3]}})
    assert config.model == ModelConfig(img_size=96, mean=(0.1, 0.2, 0.3)) and config.size_at(0) == 96
    assert config.with_options(img_size=64, epochs=None, lr=0.01).model.img_size == 64
    with pytest.raises(UserError, match="img_size"):
        from_dict(TrainConfig, {"model": {"img_size": 8}})


def test_overrides_and_yaml(tmp_path):
    assert apply_overrides({"a": {"b": 1}}, ["a.b=2", "a.c=[1, 2]"]) == {"a": {"b": 2, "c": [1, 2]}}
    with pytest.raises(UserError, match="key.sub=value"):
        apply_overrides({}, ["a"])
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(UserError, match="must hold a mapping"):
        load_yaml(tmp_path / "list.yaml")


def test_preprocess_config_round_trips_and_reads_the_recorded_layout():
    config = PreprocessConfig(CacheSettings(sizes=(128,), crop="boxes"), {"body": 0.6, "full": 0.4})
    assert config.source == "body"
    again = PreprocessConfig.from_dict(config.to_dict())
    assert again == config and set(config.to_dict()) == {"cache", "probabilities"}  # what checkpoints record
    assert PreprocessConfig.from_options(None, None, None, 64, config) is config  # nothing given: as recorded
    assert PreprocessConfig.from_options("none", None, None, 64, config) is None
    chosen = PreprocessConfig.from_options("saliency", "blur", "body=1", 64, None)
    assert chosen.cache.sizes == (64,) and chosen.cache.background == "blur" and chosen.probabilities == {"body": 1.0}
    with pytest.raises(UserError, match="box probabilities must look like"):
        parse_probabilities("body:1")


def test_the_open_set_split_without_holdouts_is_two_individual_cuts(synth_csv, tmp_path):
    """The demo's protocol (individuals only) and the recipes' (plus photos) are one class."""
    catalog = read_catalog(synth_csv)
    split = OpenSetSplit.make(catalog, new_fraction=0.3, val_new_fraction=0.2, seed=3)
    known, test = open_set_split(catalog, 0.3, seed=3)
    fit, val = open_set_split(known, 0.2, seed=4)
    for ours, theirs in ((split.fit, fit), (split.val, val), (split.test, test)):
        assert ours.table["image"].tolist() == theirs.table["image"].tolist()
    ids = [set(p.table["individual_id"]) for p in (split.fit, split.val, split.test)]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assignment = write_folds(catalog, 3, 0, tmp_path / "folds.csv")
    assert sorted(np.unique(assignment)) == [0, 1, 2] and (tmp_path / "folds.csv").read_text().startswith("image,")
