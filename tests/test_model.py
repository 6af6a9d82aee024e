import pytest
import torch

from whaleid.errors import UserError
from whaleid.model.network import EmbeddingModel, GeM, ModelConfig
from whaleid.settings import from_dict

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
    with pytest.raises(UserError, match="^output must be one of neck, pooled, got 'logits'"):
        ModelConfig(backbone="test_efficientnet", output="logits")


def test_drop_path_reaches_the_backbone_and_is_off_at_inference():
    config = ModelConfig(**{**vars(TINY), "drop_path": 0.5})
    model = EmbeddingModel(config, pretrained=False)
    rates = [m.drop_prob for m in model.backbone.modules() if type(m).__name__ == "DropPath"]
    assert rates and max(rates) > 0
    x = torch.randn(2, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x))


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("img_size", 16, "img_size must be an integer >= 32, got 16"),
        ("img_size", 64.0, "img_size must be an integer >= 32, got 64.0"),
        ("embedding_dim", -1, r"embedding_dim must be an integer >= 0 \(0: no neck\), got -1"),
        ("embedding_dim", True, "embedding_dim must be an integer >= 0"),
        ("drop_path", 1.0, r"drop_path must be in \[0, 1\), got 1.0"),
        ("backbone", "", "backbone must be a timm model name, got ''"),
        ("grad_checkpointing", "yes", "grad_checkpointing must be true or false, got 'yes'"),
    ],
)
def test_config_refuses_values_no_model_can_be_built_with(option, value, message):
    with pytest.raises(UserError, match=f"^{message}"):
        ModelConfig(**{option: value})


def test_config_from_plain_data_takes_lists_for_tuples_and_refuses_unknown_keys():
    config = from_dict(ModelConfig, {"backbone": "test_efficientnet", "mean": [0.1, 0.2, 0.3], "img_size": 64})
    assert config.mean == (0.1, 0.2, 0.3) and config.img_size == 64
    with pytest.raises(UserError, match=r"unknown ModelConfig keys: \['img_sise'\]"):
        from_dict(ModelConfig, {"img_sise": 64})
