import json
import math

import pytest
import torch

from whaleid.catalog import read_catalog
from whaleid.model import load_checkpoint
from whaleid.train import TrainConfig, train, warmup_cosine

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
    from whaleid.catalog import open_set_split

    known, val = open_set_split(read_catalog(synth_csv), 0.3, seed=0)
    result = train(known, TrainConfig(epochs=2, **TINY), tmp_path, val_catalog=val, progress=False)
    scores = [(h[f"val_{p}map5"], h["epoch"], name) for h in result.history for p, name in (("", "neck"), ("pooled_", "pooled"))]
    best_map, best_epoch, best_output = max(scores, key=lambda s: (s[0], -s[1]))
    _, payload = load_checkpoint(result.checkpoint)
    assert payload["extra"]["epoch"] == best_epoch and payload["config"]["output"] == best_output


def test_training_draws_each_photo_from_its_crop_alternatives(synth_csv, tmp_path, monkeypatch):
    import whaleid.augment as augment

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
