import json
import math
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from whaleid.data.catalog import read_catalog
from whaleid.errors import UserError
from whaleid.model.checkpoint import load_checkpoint
from whaleid.model.network import LIMITS as MODEL_LIMITS
from whaleid.model.network import ModelConfig
from whaleid.settings import from_dict
from whaleid.train import TrainConfig, train
from whaleid.train.config import LIMITS
from whaleid.train.schedule import warmup_cosine
from whaleid.train.validation import epoch_line

TINY_MODEL = dict(backbone="test_efficientnet", embedding_dim=16, img_size=48)


def tiny(**options) -> TrainConfig:
    """A fast CPU training config; ``options`` override TrainConfig fields."""
    return TrainConfig(
        **{"model": ModelConfig(**TINY_MODEL), "pretrained": False, "batch_size": 8, "num_workers": 0, **options}
    )


def test_warmup_then_cosine():
    f = warmup_cosine(total_steps=10, warmup_steps=2)
    assert [f(0), f(1)] == [0.5, 1.0]
    assert f(2) == pytest.approx(1.0)
    assert f(6) == pytest.approx(0.5 * (1 + math.cos(math.pi * 4 / 8)))
    assert f(10) == pytest.approx(0.0, abs=1e-12)


def test_unknown_option_is_named():
    with pytest.raises(UserError, match=r"unknown TrainConfig keys: \['epochz'\]"):
        from_dict(TrainConfig, {"epochz": 3})
    with pytest.raises(UserError, match=r"unknown TrainConfig.model keys: \['img_sise'\]"):
        from_dict(TrainConfig, {"model": {"img_sise": 64}})


def test_the_model_settings_are_nested_and_built_from_plain_data():
    config = from_dict(
        TrainConfig, {"epochs": 2, "model": {"backbone": "test_efficientnet", "img_size": 64, "mean": [0, 0, 0]}}
    )
    assert config.model == ModelConfig(backbone="test_efficientnet", img_size=64, mean=(0, 0, 0)) and config.epochs == 2
    assert TrainConfig().model == ModelConfig() and config.size_at(5) == 64
    with pytest.raises(UserError, match="^img_size must be an integer >= 32, got 16"):
        from_dict(TrainConfig, {"model": {"img_size": 16}})


def test_command_line_options_set_training_and_model_settings_and_none_keeps_a_value():
    config = tiny(epochs=3).with_options(img_size=64, backbone=None, epochs=None, lr=0.01)
    assert (config.model.img_size, config.model.backbone, config.epochs, config.lr) == (
        64,
        "test_efficientnet",
        3,
        0.01,
    )
    with pytest.raises(UserError, match="^img_size must be an integer >= 32, got 8"):
        config.with_options(img_size=8)


def test_checkpoint_every_epoch_and_resume_is_exact(synth_csv, tmp_path):
    catalog = read_catalog(synth_csv)
    straight = train(catalog, tiny(epochs=2), tmp_path / "straight", progress=False)
    train(catalog, tiny(epochs=1), tmp_path / "resumed", progress=False)
    first = json.loads((tmp_path / "resumed" / "metrics.jsonl").read_text())
    resumed = train(catalog, tiny(epochs=2), tmp_path / "resumed", resume=True, progress=False)
    lines = (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2] and first["epoch"] == 1
    a, _ = load_checkpoint(straight.checkpoint)
    b, checkpoint = load_checkpoint(resumed.checkpoint)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        torch.testing.assert_close(x, y, msg=name)
    assert checkpoint.labels == sorted(catalog.table["individual_id"].unique())
    assert (
        resumed.checkpoint == tmp_path / "resumed" / "model.json"
        and checkpoint.digest == load_checkpoint(straight.checkpoint)[1].digest
    )
    assert [h["loss"] for h in resumed.history] == pytest.approx([h["loss"] for h in straight.history])


def test_validation_picks_the_best_epoch_and_output(synth_csv, tmp_path):
    from whaleid.data.splits import open_set_split

    known, val = open_set_split(read_catalog(synth_csv), 0.3, seed=0)
    config = tiny(epochs=2)
    result = train(
        known, config, tmp_path, val_catalog=val, progress=False, preprocess={"cache": None}, extra={"recipe": {}}
    )
    scores = [
        (h[f"val_{p}map5"], h["epoch"], name)
        for h in result.history
        for p, name in (("", "neck"), ("pooled_", "pooled"))
    ]
    best_map, best_epoch, best_output = max(scores, key=lambda s: (s[0], -s[1]))
    model, checkpoint = load_checkpoint(result.checkpoint)
    assert checkpoint.extra["epoch"] == best_epoch and model.config.output == best_output
    assert checkpoint.preprocess == {"cache": None} and set(checkpoint.extra) == {
        "recipe",
        "train_config",
        "history",
        "epoch",
    }
    assert checkpoint.extra["train_config"]["model"]["img_size"] == 48
    assert [h["epoch"] for h in checkpoint.extra["history"]] == list(range(1, best_epoch + 1))  # as of the saved epoch
    assert config.model == ModelConfig(**TINY_MODEL)  # the caller's settings are left as they were (folds reuse them)


def test_training_draws_each_photo_from_its_crop_alternatives(synth_csv, tmp_path, monkeypatch):
    import whaleid.model.augment as augment

    catalog = read_catalog(synth_csv)
    paths = catalog.paths
    # every photo's "crops": itself (weight 0.25) or the first photo (0.75)
    catalog.table["alternatives"] = [((p, 0.25), (paths[0], 0.75)) for p in paths]
    opened = []
    real_open = augment.open_image
    monkeypatch.setattr(augment, "open_image", lambda p: opened.append(p) or real_open(p))
    train(catalog, tiny(epochs=3), tmp_path, progress=False)
    share_first = opened.count(paths[0]) / len(opened)
    assert len(opened) >= 3 * (len(paths) // 8) * 8
    assert abs(share_first - (0.75 + 0.25 / len(paths))) < 0.08


def test_progressive_resizing_changes_the_input_size_at_the_stated_epochs(synth_csv, tmp_path):
    config = tiny(epochs=4, max_steps_per_epoch=1, img_size_schedule={0: 32, 2: 40, 3: 48})
    result = train(read_catalog(synth_csv), config, tmp_path, progress=False)
    assert [h["img_size"] for h in result.history] == [32, 32, 40, 48]
    model, _ = load_checkpoint(result.checkpoint)
    assert model.config.img_size == 48  # inference at the final size
    with pytest.raises(ValueError, match="epoch 0"):
        TrainConfig(img_size_schedule={2: 64})


def _initial_model():
    from accelerate.utils import set_seed

    from whaleid.model.network import EmbeddingModel

    set_seed(0)  # train() seeds the same way before building its model
    return EmbeddingModel(ModelConfig(**TINY_MODEL), pretrained=False)


@pytest.mark.parametrize(
    ("late", "all_", "stem_moves", "top_moves"), [(1, 1, False, False), (0, 1, False, True), (0, 0, True, True)]
)
def test_sequential_unfreezing_holds_layers_until_their_epoch(synth_csv, tmp_path, late, all_, stem_moves, top_moves):
    config = tiny(epochs=1, max_steps_per_epoch=2, unfreeze_late_epoch=late, unfreeze_all_epoch=all_, warmup_epochs=0)
    trained, _ = load_checkpoint(train(read_catalog(synth_csv), config, tmp_path, progress=False).checkpoint)
    before = _initial_model()
    moved = lambda name: not torch.equal(trained.state_dict()[name], before.state_dict()[name])  # noqa: E731
    assert moved("backbone.conv_stem.weight") == stem_moves
    assert moved("backbone.conv_head.weight") == top_moves
    assert moved("neck.0.weight")  # the neck always learns


def test_layer_decay_scales_learning_rates_down_the_backbone():
    from whaleid.train.schedule import param_groups

    model = _initial_model()
    config = tiny(backbone_lr=1e-3, lr=1e-2, layer_decay=0.5)
    groups, starts = param_groups(model, [model.neck], config)
    lrs = [g["lr"] for g in groups[:-1]]
    assert max(lrs) == 1e-3 and groups[-1]["lr"] == 1e-2  # the top backbone layer, the heads
    assert lrs == sorted(lrs)  # stem (first) slowest
    assert set(lrs) == {1e-3 * 0.5**d for d in range(len(set(lrs)))}
    assert sum(len(g["params"]) for g in groups[:-1]) == len(list(model.backbone.parameters()))
    assert starts == [0] * len(groups)


DDP_SCRIPT = """
import sys
from whaleid.data.catalog import read_catalog
from whaleid.model.network import ModelConfig
from whaleid.train import TrainConfig, train

config = TrainConfig(model=ModelConfig(backbone="test_efficientnet", embedding_dim=16, img_size=48), pretrained=False,
                     epochs=2, batch_size=8, num_workers=0)
train(read_catalog(sys.argv[1]), config, sys.argv[2], progress=False)
"""


def test_two_process_cpu_ddp_trains_and_writes_the_same_checkpoint_format(synth_csv, tmp_path):
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as s:  # a free port for the rendezvous, on this machine only
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = tmp_path / "ddp_train.py"
    script.write_text(DDP_SCRIPT)
    ddp = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(port),
            str(script),
            str(synth_csv),
            str(tmp_path / "ddp"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    single = train(read_catalog(synth_csv), tiny(epochs=2), tmp_path / "one", progress=False)
    history = [json.loads(line) for line in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert [h["processes"] for h in history] == [2, 2]
    a, ca = load_checkpoint(single.checkpoint)
    b, cb = load_checkpoint(tmp_path / "ddp")
    assert ca.labels == cb.labels and a.config == b.config and ca.extra.keys() == cb.extra.keys()
    assert {k: v.shape for k, v in a.state_dict().items()} == {k: v.shape for k, v in b.state_dict().items()}
    assert cb.head["weight"].shape == ca.head["weight"].shape
    assert not torch.equal(
        b.state_dict()["backbone.conv_stem.weight"], _initial_model().state_dict()["backbone.conv_stem.weight"]
    )
    assert ddp.stdout.count("epoch 2/2") == 1  # one process prints


def test_fold_models_each_hold_out_their_own_fold(synth_csv, tmp_path):
    import pandas as pd

    from whaleid.model.checkpoint import checkpoints
    from whaleid.train import train_folds

    catalog = read_catalog(synth_csv)
    results = train_folds(catalog, tiny(epochs=1, max_steps_per_epoch=1), tmp_path, folds=3, progress=False)
    folds = pd.read_csv(tmp_path / "folds.csv")
    assert sorted(folds["image"]) == sorted(catalog.table["image"]) and set(folds["fold"]) == {
        0,
        1,
        2,
    }  # each photo once
    assert checkpoints(tmp_path) == [tmp_path / f"fold{i}" / "model.json" for i in range(3)]
    for fold, result in enumerate(results):
        _, checkpoint = load_checkpoint(result.checkpoint)
        assert checkpoint.labels == sorted(
            folds.loc[folds["fold"] != fold, "individual_id"].unique()
        )  # trained without its fold
        held = folds.loc[folds["fold"] == fold, "image"]
        assert len(held) and "val_map5" in result.history[0]  # validated on the held-out fold


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("epochs", 0, "epochs must be an integer >= 1, got 0"),
        ("epochs", -1, "epochs must be an integer >= 1, got -1"),
        ("epochs", "3", "epochs must be an integer >= 1, got '3'"),
        ("batch_size", 1, "batch_size must be an integer >= 2"),
        ("lr", float("nan"), r"lr must be in \(0, 1\], got nan"),
        ("lr", float("inf"), r"lr must be in \(0, 1\], got inf"),
        ("lr", 0.0, r"lr must be in \(0, 1\], got 0.0"),
        ("backbone_lr", -1e-4, r"backbone_lr must be in \[0, 1\]"),
        ("grad_accum", 0, "grad_accum must be an integer >= 1, got 0"),
        ("max_steps_per_epoch", 0, r"max_steps_per_epoch \(--max-steps\) must be None or an integer >= 1, got 0"),
        ("num_workers", -1, r"num_workers \(--workers\) must be None or an integer >= 0"),
        ("warmup_epochs", -0.5, "warmup_epochs must be a finite number >= 0"),
        ("subcenters", 0, "subcenters must be an integer >= 1"),
        ("label_smoothing", 1.0, r"label_smoothing must be in \[0, 1\)"),
        ("seed", -1, "seed must be an integer in"),
        ("hflip", "no", "hflip must be true or false"),
        ("mixed_precision", "fp32", "mixed_precision must be one of auto, no, fp16, bf16"),
        ("img_size_schedule", {0: 64, 2: 8}, "img_size_schedule needs epochs >= 0 and sizes >= 32"),
    ],
)
def test_config_refuses_values_training_cannot_use_and_names_the_option(option, value, message):
    with pytest.raises(UserError, match=f"^{message}"):
        TrainConfig(**{option: value})


@pytest.mark.parametrize(("kind", "limits"), [(TrainConfig, LIMITS), (ModelConfig, MODEL_LIMITS)])
@given(data=st.data())
def test_every_integer_option_is_accepted_exactly_in_its_range(kind, limits, data):
    name = data.draw(st.sampled_from(sorted(n for n, (integer, _, _) in limits.items() if integer)))
    value = data.draw(st.integers(-(10**6), 10**6))
    if limits[name][2](value):
        assert getattr(kind(**{name: value}), name) == value
    else:
        with pytest.raises(UserError, match=name):
            kind(**{name: value})


def test_every_recipe_shipped_has_valid_training_settings():
    import yaml

    for path in sorted((Path(__file__).parents[1] / "configs").glob("*.yaml")):
        from_dict(TrainConfig, yaml.safe_load(path.read_text()).get("train", {}))


def test_training_refuses_a_catalog_without_two_individuals_or_two_photos(synth_csv, tmp_path):
    catalog = read_catalog(synth_csv)
    one_whale = catalog.subset(catalog.table["individual_id"] == catalog.table["individual_id"].iloc[0])
    with pytest.raises(UserError, match="only 1 individual"):
        train(one_whale, tiny(epochs=1), tmp_path, progress=False)
    with pytest.raises(UserError, match="has 1 photo"):
        train(catalog.subset([0]), tiny(epochs=1), tmp_path, progress=False)
    with pytest.raises(UserError, match="the validation catalog has 1 photo"):
        train(catalog, tiny(epochs=1), tmp_path, val_catalog=catalog.subset([0]), progress=False)
    assert not list(tmp_path.iterdir())  # refused before anything was written
    two = catalog.subset(catalog.table.drop_duplicates("individual_id").index[:2])  # one photo each: one batch of 2
    assert len(train(two, tiny(epochs=1), tmp_path, progress=False).history) == 1


@pytest.mark.parametrize(
    ("steps", "message"),
    [(2, "the loss became nan at epoch 1 step 2"), (1, "the weights became NaN or infinite in epoch 1")],
)
def test_divergent_training_stops_and_saves_no_nan_model(synth_csv, tmp_path, monkeypatch, steps, message):
    real_step = torch.optim.AdamW.step

    def diverging_step(self, *args, **kwargs):  # what an overflowing update does to a weight
        out = real_step(self, *args, **kwargs)
        with torch.no_grad():
            self.param_groups[-1]["params"][0].fill_(float("nan"))
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", diverging_step)
    config = tiny(epochs=1, max_steps_per_epoch=steps)
    with pytest.raises(UserError, match=f"^training diverged: {message}; lower --lr \\(now 0.001\\)"):
        train(read_catalog(synth_csv), config, tmp_path, progress=False)
    assert sorted(tmp_path.iterdir()) == []  # no checkpoint, no last.pt, no metrics


def test_resume_after_a_crash_between_an_epoch_and_its_checkpoint_lists_each_epoch_once(synth_csv, tmp_path):
    catalog = read_catalog(synth_csv)
    train(catalog, tiny(epochs=1, max_steps_per_epoch=1), tmp_path, progress=False)
    metrics = tmp_path / "metrics.jsonl"
    line = metrics.read_text()
    # killed after epoch 2's metrics line but before its last.pt, and again mid-way through a line
    metrics.write_text(line + line.replace('"epoch": 1', '"epoch": 2') + line[:20])
    result = train(catalog, tiny(epochs=2, max_steps_per_epoch=1), tmp_path, resume=True, progress=False)
    lines = [json.loads(text) for text in metrics.read_text().splitlines()]
    assert [h["epoch"] for h in lines] == [1, 2] and lines == result.history


def test_resume_refuses_a_damaged_or_foreign_training_state(synth_csv, tmp_path):
    catalog = read_catalog(synth_csv)
    config = tiny(epochs=2, max_steps_per_epoch=1)
    train(catalog, tiny(epochs=1, max_steps_per_epoch=1), tmp_path, progress=False)
    state = (tmp_path / "last.pt").read_bytes()
    (tmp_path / "last.pt").write_bytes(state[:-10])
    with pytest.raises(UserError, match=r"last.pt is not a readable whaleid training state \(truncated or corrupt\)"):
        train(catalog, config, tmp_path, resume=True, progress=False)
    (tmp_path / "last.pt").write_bytes(state)
    fewer = catalog.subset(catalog.table["individual_id"] != catalog.table["individual_id"].iloc[0])
    with pytest.raises(UserError, match="saved by a run with other individuals or options"):
        train(fewer, config, tmp_path, resume=True, progress=False)


def test_one_fold_is_refused():
    from whaleid.train import train_folds

    with pytest.raises(UserError, match="--folds must be an integer >= 2"):
        train_folds(None, TrainConfig(), "unused", folds=1)


def test_each_epoch_prints_one_short_line():
    record = {"epoch": 3, "loss": 4.2104, "val_map5": 0.4, "val_pooled_map5": 0.412, "images_per_second": 12.34}
    assert epoch_line(record, 20) == "epoch 3/20  loss 4.210  val MAP@5 0.412  12.3 img/s"  # the better output
    no_batch = {"epoch": 1, "loss": float("nan"), "images_per_second": 0.0}
    assert epoch_line(no_batch, 2) == "epoch 1/2  loss \u2013  0.0 img/s"
