import json
import math
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from whaleid.data.catalog import read_catalog
from whaleid.errors import UserError
from whaleid.model.network import load_checkpoint
from whaleid.train import LIMITS, TrainConfig, epoch_line, train, warmup_cosine

TINY = dict(backbone="test_efficientnet", pretrained=False, embedding_dim=16, img_size=48, batch_size=8, num_workers=0)


def test_warmup_then_cosine():
    f = warmup_cosine(total_steps=10, warmup_steps=2)
    assert [f(0), f(1)] == [0.5, 1.0]
    assert f(2) == pytest.approx(1.0)
    assert f(6) == pytest.approx(0.5 * (1 + math.cos(math.pi * 4 / 8)))
    assert f(10) == pytest.approx(0.0, abs=1e-12)


def test_unknown_option_is_named():
    with pytest.raises(ValueError, match="epochz"):
        TrainConfig.from_dict({"epochz": 3})


def test_checkpoint_every_epoch_and_resume_is_exact(synth_csv, tmp_path):
    catalog = read_catalog(synth_csv)
    straight = train(catalog, TrainConfig(epochs=2, **TINY), tmp_path / "straight", progress=False)
    train(catalog, TrainConfig(epochs=1, **TINY), tmp_path / "resumed", progress=False)
    first = json.loads((tmp_path / "resumed" / "metrics.jsonl").read_text())
    resumed = train(catalog, TrainConfig(epochs=2, **TINY), tmp_path / "resumed", resume=True, progress=False)
    lines = (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(l)["epoch"] for l in lines] == [1, 2] and first["epoch"] == 1
    a, _ = load_checkpoint(straight.checkpoint)
    b, payload = load_checkpoint(resumed.checkpoint)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        torch.testing.assert_close(x, y, msg=name)
    assert payload["labels"] == sorted(catalog.table["individual_id"].unique())
    assert [h["loss"] for h in resumed.history] == pytest.approx([h["loss"] for h in straight.history])


def test_validation_picks_the_best_epoch_and_output(synth_csv, tmp_path):
    from whaleid.data.catalog import open_set_split

    known, val = open_set_split(read_catalog(synth_csv), 0.3, seed=0)
    result = train(known, TrainConfig(epochs=2, **TINY), tmp_path, val_catalog=val, progress=False)
    scores = [(h[f"val_{p}map5"], h["epoch"], name) for h in result.history for p, name in (("", "neck"), ("pooled_", "pooled"))]
    best_map, best_epoch, best_output = max(scores, key=lambda s: (s[0], -s[1]))
    _, payload = load_checkpoint(result.checkpoint)
    assert payload["extra"]["epoch"] == best_epoch and payload["config"]["output"] == best_output


def test_training_draws_each_photo_from_its_crop_alternatives(synth_csv, tmp_path, monkeypatch):
    import whaleid.model.augment as augment

    catalog = read_catalog(synth_csv)
    paths = catalog.paths
    # every photo's "crops": itself (weight 0.25) or the first photo (0.75)
    catalog.table["alternatives"] = [((p, 0.25), (paths[0], 0.75)) for p in paths]
    opened = []
    real_open = augment.open_image
    monkeypatch.setattr(augment, "open_image", lambda p: opened.append(p) or real_open(p))
    train(catalog, TrainConfig(epochs=3, **TINY), tmp_path, progress=False)
    share_first = opened.count(paths[0]) / len(opened)
    assert len(opened) >= 3 * (len(paths) // 8) * 8
    assert abs(share_first - (0.75 + 0.25 / len(paths))) < 0.08


def test_progressive_resizing_changes_the_input_size_at_the_stated_epochs(synth_csv, tmp_path):
    config = TrainConfig(epochs=4, max_steps_per_epoch=1, img_size_schedule={0: 32, 2: 40, 3: 48}, **{**TINY, "img_size": 48})
    result = train(read_catalog(synth_csv), config, tmp_path, progress=False)
    assert [h["img_size"] for h in result.history] == [32, 32, 40, 48]
    _, payload = load_checkpoint(result.checkpoint)
    assert payload["config"]["img_size"] == 48  # inference at the final size
    with pytest.raises(ValueError, match="epoch 0"):
        TrainConfig(img_size_schedule={2: 64})


def _initial_model():
    from accelerate.utils import set_seed

    from whaleid.model.network import EmbeddingModel, ModelConfig

    set_seed(0)  # train() seeds the same way before building its model
    return EmbeddingModel(ModelConfig(backbone="test_efficientnet", embedding_dim=16, img_size=48), pretrained=False)


@pytest.mark.parametrize(("late", "all_", "stem_moves", "top_moves"), [(1, 1, False, False), (0, 1, False, True), (0, 0, True, True)])
def test_sequential_unfreezing_holds_layers_until_their_epoch(synth_csv, tmp_path, late, all_, stem_moves, top_moves):
    config = TrainConfig(epochs=1, max_steps_per_epoch=2, unfreeze_late_epoch=late, unfreeze_all_epoch=all_, warmup_epochs=0, **TINY)
    trained, _ = load_checkpoint(train(read_catalog(synth_csv), config, tmp_path, progress=False).checkpoint)
    before = _initial_model()
    moved = lambda name: not torch.equal(trained.state_dict()[name], before.state_dict()[name])  # noqa: E731
    assert moved("backbone.conv_stem.weight") == stem_moves
    assert moved("backbone.conv_head.weight") == top_moves
    assert moved("neck.0.weight")  # the neck always learns


def test_layer_decay_scales_learning_rates_down_the_backbone():
    from whaleid.train import param_groups

    model = _initial_model()
    config = TrainConfig(backbone_lr=1e-3, lr=1e-2, layer_decay=0.5, **{k: v for k, v in TINY.items() if k != "batch_size"})
    groups, starts = param_groups(model, [model.neck], config)
    lrs = [g["lr"] for g in groups[:-1]]
    assert max(lrs) == 1e-3 and groups[-1]["lr"] == 1e-2  # the top backbone layer, the heads
    assert lrs == sorted(lrs)  # stem (first) slowest
    assert set(lrs) == {1e-3 * 0.5**d for d in range(len(set(lrs)))}
    assert sum(len(g["params"]) for g in groups[:-1]) == len(list(model.backbone.parameters()))
    assert starts == [0] * len(groups)


def test_two_process_cpu_ddp_trains_and_writes_the_same_checkpoint_format(synth_csv, tmp_path):
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as s:  # a free port for the rendezvous, on this machine only
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = ["train", str(synth_csv), "--backbone", "test_efficientnet", "--no-pretrained", "--epochs", "2", "--img-size", "48",
            "--batch-size", "8", "--embedding-dim", "16", "--workers", "0"]
    ddp = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
         "--master_port", str(port), "-m", "whaleid.app.cli", *args, "--out", str(tmp_path / "ddp")],
        capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    single = train(read_catalog(synth_csv), TrainConfig(epochs=2, **TINY), tmp_path / "one", progress=False)
    history = [json.loads(line) for line in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert [h["processes"] for h in history] == [2, 2]
    a, pa = load_checkpoint(single.checkpoint)
    b, pb = load_checkpoint(tmp_path / "ddp" / "model.pt")
    assert pa.keys() == pb.keys() and pa["labels"] == pb["labels"] and pa["config"] == pb["config"]
    assert {k: v.shape for k, v in a.state_dict().items()} == {k: v.shape for k, v in b.state_dict().items()}
    assert pb["head"]["weight"].shape == pa["head"]["weight"].shape
    assert not torch.equal(b.state_dict()["backbone.conv_stem.weight"], _initial_model().state_dict()["backbone.conv_stem.weight"])
    assert ddp.stdout.count("model:") == 1


def test_fold_models_each_hold_out_their_own_fold(synth_csv, tmp_path):
    import pandas as pd

    from whaleid.train import checkpoints, train_folds

    catalog = read_catalog(synth_csv)
    results = train_folds(catalog, TrainConfig(epochs=1, max_steps_per_epoch=1, **TINY), tmp_path, folds=3, progress=False)
    folds = pd.read_csv(tmp_path / "folds.csv")
    assert sorted(folds["image"]) == sorted(catalog.table["image"]) and set(folds["fold"]) == {0, 1, 2}  # each photo once
    assert checkpoints(tmp_path) == [tmp_path / f"fold{i}" / "model.pt" for i in range(3)]
    for fold, result in enumerate(results):
        _, payload = load_checkpoint(result.checkpoint)
        assert payload["labels"] == sorted(folds.loc[folds["fold"] != fold, "individual_id"].unique())  # trained without its fold
        held = folds.loc[folds["fold"] == fold, "image"]
        assert len(held) and "val_map5" in result.history[0]  # validated on the held-out fold


@pytest.mark.parametrize(("option", "value", "message"), [
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
    ("img_size", 16, "img_size must be an integer >= 32"),
    ("label_smoothing", 1.0, r"label_smoothing must be in \[0, 1\)"),
    ("seed", -1, "seed must be an integer in"),
    ("hflip", "no", "hflip must be true or false"),
    ("mixed_precision", "fp32", "mixed_precision must be one of auto, no, fp16, bf16"),
    ("img_size_schedule", {0: 64, 2: 8}, "img_size_schedule needs epochs >= 0 and sizes >= 32"),
])
def test_config_refuses_values_training_cannot_use_and_names_the_option(option, value, message):
    with pytest.raises(UserError, match=f"^{message}"):
        TrainConfig(**{option: value})


@given(st.sampled_from(sorted(n for n, (integer, _, _) in LIMITS.items() if integer)), st.integers(-10**6, 10**6))
def test_every_integer_option_is_accepted_exactly_in_its_range(name, value):
    _, _, ok = LIMITS[name]
    if ok(value):
        assert getattr(TrainConfig(**{name: value}), name) == value
    else:
        with pytest.raises(UserError, match=name):
            TrainConfig(**{name: value})


def test_every_recipe_shipped_is_a_valid_config():
    from whaleid.experiments.recipe import load_recipe

    for path in sorted((Path(__file__).parents[1] / "configs").glob("*.yaml")):
        load_recipe(path)


def test_training_refuses_a_catalog_without_two_individuals_or_two_photos(synth_csv, tmp_path):
    catalog = read_catalog(synth_csv)
    one_whale = catalog.subset(catalog.table["individual_id"] == catalog.table["individual_id"].iloc[0])
    with pytest.raises(UserError, match="only 1 individual"):
        train(one_whale, TrainConfig(epochs=1, **TINY), tmp_path, progress=False)
    with pytest.raises(UserError, match="has 1 photo"):
        train(catalog.subset([0]), TrainConfig(epochs=1, **TINY), tmp_path, progress=False)
    with pytest.raises(UserError, match="the validation catalog has 1 photo"):
        train(catalog, TrainConfig(epochs=1, **TINY), tmp_path, val_catalog=catalog.subset([0]), progress=False)
    assert not list(tmp_path.iterdir())  # refused before anything was written
    two = catalog.subset(catalog.table.drop_duplicates("individual_id").index[:2])  # one photo each: one batch of 2
    assert len(train(two, TrainConfig(epochs=1, **TINY), tmp_path, progress=False).history) == 1


@pytest.mark.parametrize(("steps", "message"), [(2, "the loss became nan at epoch 1 step 2"),
                                                (1, "the weights became NaN or infinite in epoch 1")])
def test_divergent_training_stops_and_saves_no_nan_model(synth_csv, tmp_path, monkeypatch, steps, message):
    real_step = torch.optim.AdamW.step

    def diverging_step(self, *args, **kwargs):  # what an overflowing update does to a weight
        out = real_step(self, *args, **kwargs)
        with torch.no_grad():
            self.param_groups[-1]["params"][0].fill_(float("nan"))
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", diverging_step)
    config = TrainConfig(epochs=1, max_steps_per_epoch=steps, **TINY)
    with pytest.raises(UserError, match=f"^training diverged: {message}; lower --lr \\(now 0.001\\)"):
        train(read_catalog(synth_csv), config, tmp_path, progress=False)
    assert not (tmp_path / "model.pt").exists() and not (tmp_path / "last.pt").exists()


def test_resume_after_a_crash_between_an_epoch_and_its_checkpoint_lists_each_epoch_once(synth_csv, tmp_path):
    catalog = read_catalog(synth_csv)
    config = dict(max_steps_per_epoch=1, **TINY)
    train(catalog, TrainConfig(epochs=1, **config), tmp_path, progress=False)
    metrics = tmp_path / "metrics.jsonl"
    line = metrics.read_text()
    # killed after epoch 2's metrics line but before its last.pt, and again mid-way through a line
    metrics.write_text(line + line.replace('"epoch": 1', '"epoch": 2') + line[:20])
    result = train(catalog, TrainConfig(epochs=2, **config), tmp_path, resume=True, progress=False)
    lines = [json.loads(text) for text in metrics.read_text().splitlines()]
    assert [h["epoch"] for h in lines] == [1, 2] and lines == result.history


def test_resume_refuses_a_damaged_or_foreign_training_state(synth_csv, tmp_path):
    catalog = read_catalog(synth_csv)
    config = TrainConfig(epochs=2, max_steps_per_epoch=1, **TINY)
    train(catalog, TrainConfig(epochs=1, max_steps_per_epoch=1, **TINY), tmp_path, progress=False)
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


def test_a_missing_run_folder_is_a_user_error(tmp_path):
    from whaleid.train import checkpoints

    with pytest.raises(UserError, match="does not exist"):
        checkpoints(tmp_path / "nowhere")
    with pytest.raises(UserError, match="no model.pt in"):
        checkpoints(tmp_path)


def test_each_epoch_prints_one_short_line():
    record = {"epoch": 3, "loss": 4.2104, "val_map5": 0.4, "val_pooled_map5": 0.412, "images_per_second": 12.34}
    assert epoch_line(record, 20) == "epoch 3/20  loss 4.210  val MAP@5 0.412  12.3 img/s"  # the better output
    no_batch = {"epoch": 1, "loss": float("nan"), "images_per_second": 0.0}
    assert epoch_line(no_batch, 2) == "epoch 1/2  loss \u2013  0.0 img/s"
