import re

import pytest
import torch

from whaleid.errors import UserError
from whaleid.model.network import (
    EmbeddingModel,
    GeM,
    ModelConfig,
    load_checkpoint,
    save_checkpoint,
)

TINY = ModelConfig(backbone="test_efficientnet", embedding_dim=32, img_size=64)


def test_gem_matches_hand_computed_generalised_mean():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 1, 2, 2)
    # ((1 + 8 + 27 + 64) / 4) ** (1/3) = 25 ** (1/3)
    assert GeM(p=3.0)(x).item() == pytest.approx(25 ** (1 / 3), rel=1e-5)
    assert GeM(p=1.0)(x).item() == pytest.approx(2.5, rel=1e-5)
    assert GeM(p=50.0)(x).item() == pytest.approx(4.0 * 0.25 ** (1 / 50), rel=1e-4)  # tends to the max


def test_gem_p_is_learned():
    gem = GeM()
    gem(torch.rand(2, 3, 4, 4) + 0.1).sum().backward()
    assert gem.p.grad is not None and gem.p.grad.abs() > 0


def test_embedding_shape_and_neck():
    model = EmbeddingModel(ModelConfig(**vars(TINY)), pretrained=False).eval()
    out = model(torch.randn(3, 3, 64, 64))
    assert out.shape == (3, 32)
    bare = EmbeddingModel(ModelConfig(backbone="test_efficientnet", embedding_dim=0), pretrained=False)
    assert bare.embedding_dim == bare.backbone.num_features == 256


def test_pretrained_model_takes_the_weights_normalisation():
    model = EmbeddingModel(ModelConfig(embedding_dim=0), pretrained=True)
    assert model.config.mean == (0.5, 0.5, 0.5) and model.config.std == (0.5, 0.5, 0.5)


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    model = EmbeddingModel(ModelConfig(**vars(TINY)), pretrained=False).eval()
    path = save_checkpoint(model, tmp_path / "model.pt", ["a", "b"], {"note": 1})
    loaded, payload = load_checkpoint(path)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    assert payload["labels"] == ["a", "b"] and loaded.config.img_size == 64
    assert not list(tmp_path.glob("*.tmp"))


class Opaque:
    """Any Python object: a pickle of one runs code when loaded, so it is refused."""


@pytest.mark.parametrize(("damage", "reason"), [
    (lambda path, whole: path.write_bytes(b""), "empty file"),
    (lambda path, whole: path.write_bytes(whole[: len(whole) // 2]), "truncated or corrupt"),
    (lambda path, whole: path.write_bytes(whole[:-10]), "truncated or corrupt"),  # was OSError: [Errno 22]
    (lambda path, whole: path.write_text("image,individual_id\n"), "not a whaleid file"),
    (lambda path, whole: torch.save({"state_dict": {}}, path), "not a whaleid checkpoint"),
    (lambda path, whole: torch.save({"x": Opaque()}, path), "not a whaleid file"),
    (lambda path, whole: path.mkdir(), "a directory"),
    (lambda path, whole: None, "no such file"),
])
def test_every_unreadable_model_file_is_one_user_error(tmp_path, damage, reason):
    model = EmbeddingModel(ModelConfig(**vars(TINY)), pretrained=False)
    whole = save_checkpoint(model, tmp_path / "good.pt", ["a"]).read_bytes()
    path = tmp_path / "model.pt"
    damage(path, whole)
    expected = rf"^{re.escape(str(path))} is not a readable whaleid model \({reason}\): retrain"
    with pytest.raises(UserError, match=expected):
        load_checkpoint(path)


def test_a_checkpoint_whose_weights_do_not_fit_its_config_is_a_user_error(tmp_path):
    model = EmbeddingModel(ModelConfig(**vars(TINY)), pretrained=False)
    path = save_checkpoint(model, tmp_path / "model.pt", ["a"])
    payload = torch.load(path, weights_only=True)
    payload["config"]["embedding_dim"] = 8  # the saved neck has 32
    torch.save(payload, path)
    with pytest.raises(UserError, match="do not fit its config"):
        load_checkpoint(path)


def test_inference_output_is_the_neck_or_the_pooled_features():
    torch.manual_seed(0)
    model = EmbeddingModel(ModelConfig(**vars(TINY)), pretrained=False).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.embed(x), model(x))
        model.config.output = "pooled"
        pooled = model.embed(x)
        torch.testing.assert_close(pooled, model.pool(model.backbone.forward_features(x)))
    assert pooled.shape == (2, model.output_dim) and model.output_dim == 256
    with pytest.raises(ValueError, match="output"):
        EmbeddingModel(ModelConfig(backbone="test_efficientnet", output="logits"), pretrained=False)


def test_drop_path_reaches_the_backbone_and_is_off_at_inference():
    config = ModelConfig(**{**vars(TINY), "drop_path": 0.5})
    model = EmbeddingModel(config, pretrained=False)
    rates = [m.drop_prob for m in model.backbone.modules() if type(m).__name__ == "DropPath"]
    assert rates and max(rates) > 0
    x = torch.randn(2, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x))
