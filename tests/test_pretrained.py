"""Offline ImageNet weights: key conversion, strict loading, and that they really classify.

Test photos ship with installed dependencies, so no fixture files are needed:
- matplotlib's grace_hopper.jpg: official US Navy portrait (public domain);
  the classic ImageNet example, ground truth 'military uniform' (652).
- scikit-learn's china.jpg: Summer Palace, Beijing (Tower of Buddhist
  Incense), CC BY 2.0 by danielbuechele on Flickr (see
  sklearn/datasets/images/README.txt); ImageNet 'palace' (698).
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.cbook
import pytest
import timm
import torch
import torch.nn.functional as F
from PIL import Image
from timm.data import create_transform

from whaleid.errors import UserError
from whaleid.model import pretrained as P
from whaleid.model.pretrained import (
    LITE_MEAN,
    LITE_STD,
    OFFLINE_WEIGHTS,
    create_backbone,
    has_offline_weights,
    load_offline_weights,
    offline_state_dict,
)

LITE0 = "tf_efficientnet_lite0"
MILITARY_UNIFORM = 652
PALACE = 698


@pytest.fixture(autouse=True)
def _few_threads():
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def lite0_sd() -> dict[str, torch.Tensor]:
    return offline_state_dict(LITE0)


@pytest.fixture(scope="module")
def lite0():
    model, cfg = create_backbone(LITE0)
    return model.eval(), cfg


@pytest.fixture(scope="module")
def photos() -> torch.Tensor:
    """Grace Hopper and the Summer Palace, resized and center-cropped to 224, mean=std=0.5."""
    from sklearn.datasets import load_sample_image

    transform = create_transform(
        input_size=(3, 224, 224), interpolation="bicubic", crop_pct=0.875, mean=LITE_MEAN, std=LITE_STD
    )
    hopper = Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg")).convert("RGB")
    palace = Image.fromarray(load_sample_image("china.jpg"))
    return torch.stack([transform(hopper), transform(palace)])


def _assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ----------------------------------------------------------------- conversion


def test_registry_and_names():
    assert set(OFFLINE_WEIGHTS) == {"tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2"}
    assert all(has_offline_weights(n) for n in OFFLINE_WEIGHTS)
    assert has_offline_weights("tf_efficientnet_lite0.in1k")
    assert not has_offline_weights("efficientnet_lite0")  # same shapes, different (symmetric) padding
    assert not has_offline_weights("resnet18")
    with pytest.raises(KeyError, match="tf_efficientnet_lite0"):
        offline_state_dict("resnet18")


def test_lite0_loads_strict_into_timm(lite0_sd):
    model = timm.create_model(LITE0, pretrained=False)
    expected = model.state_dict()
    assert lite0_sd.keys() == expected.keys()
    assert all(lite0_sd[k].shape == expected[k].shape for k in expected)
    result = model.load_state_dict(lite0_sd, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert "classifier.weight" in lite0_sd and lite0_sd["classifier.weight"].shape == (1000, 1280)
    assert "blocks.0.0.conv_dw.weight" in lite0_sd and "blocks.1.0.conv_pwl.weight" in lite0_sd


@pytest.mark.parametrize("name", ["tf_efficientnet_lite1", "tf_efficientnet_lite2"])
def test_larger_variants_convert_and_load_strict(name):
    sd = offline_state_dict(name)
    model = timm.create_model(name, pretrained=False)
    result = model.load_state_dict(sd, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    # lite1/2 have deeper stages than lite0, so the flat index -> (stage, j) map must differ
    assert "blocks.5.4.conv_pwl.weight" in sd and "blocks.6.0.conv_pwl.weight" in sd


def test_wrong_variant_is_rejected(lite0_sd):
    with pytest.raises(ValueError, match="blocks"):
        P._convert_lukemelas(torch.load(P._weights_path(LITE0), weights_only=True), "tf_efficientnet_lite1")
    with pytest.raises(RuntimeError, match="missing"):
        load_offline_weights(timm.create_model("tf_efficientnet_lite1"), LITE0)


# Official TF EfficientNet-Lite0 block spec: repeats and first-block stride per stage.
_LITE0_REPEATS = (1, 2, 2, 3, 3, 4, 1)
_LITE0_STRIDES = (1, 2, 2, 2, 1, 2, 1)


def _reference_lite0(raw: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """EfficientNet-Lite0 written out on the raw lukemelas keys, with TF 'SAME' padding.

    Independent of timm and of the renaming, so a swapped BN (same shapes!)
    or a wrong padding mode would show up as a large difference.
    """

    def conv_same(x, w, stride, groups=1):
        (ih, iw), (kh, kw) = x.shape[-2:], w.shape[-2:]
        ph = max((math.ceil(ih / stride) - 1) * stride + kh - ih, 0)
        pw = max((math.ceil(iw / stride) - 1) * stride + kw - iw, 0)
        x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, w, None, stride, 0, 1, groups)

    def bn(x, p):
        return F.batch_norm(
            x, raw[f"{p}.running_mean"], raw[f"{p}.running_var"], raw[f"{p}.weight"], raw[f"{p}.bias"], False, 0.0, 1e-3
        )

    strides = [s if j == 0 else 1 for r, s in zip(_LITE0_REPEATS, _LITE0_STRIDES) for j in range(r)]
    x = F.relu6(bn(conv_same(x, raw["_conv_stem.weight"], 2), "_bn0"))
    for i, stride in enumerate(strides):
        p, inp = f"_blocks.{i}", x
        if f"{p}._expand_conv.weight" in raw:
            x = F.relu6(bn(F.conv2d(x, raw[f"{p}._expand_conv.weight"]), f"{p}._bn0"))
        w = raw[f"{p}._depthwise_conv.weight"]
        x = F.relu6(bn(conv_same(x, w, stride, groups=w.shape[0]), f"{p}._bn1"))
        x = bn(F.conv2d(x, raw[f"{p}._project_conv.weight"]), f"{p}._bn2")
        if stride == 1 and x.shape == inp.shape:
            x = x + inp
    assert f"_blocks.{len(strides)}._depthwise_conv.weight" not in raw
    x = F.relu6(bn(F.conv2d(x, raw["_conv_head.weight"]), "_bn1"))
    return F.linear(x.mean((2, 3)), raw["_fc.weight"], raw["_fc.bias"])


def test_converted_model_matches_independent_reference(lite0, photos):
    model, _ = lite0
    raw = torch.load(P._weights_path(LITE0), map_location="cpu", weights_only=True)
    with torch.no_grad():
        ours, ref = model(photos), _reference_lite0(raw, photos)
    assert torch.allclose(ours, ref, atol=1e-4, rtol=1e-4), (ours - ref).abs().max()


# ----------------------------------------------------------------- it classifies


def test_pretrained_lite0_classifies_photos(lite0, photos):
    model, cfg = lite0
    assert cfg["mean"] == LITE_MEAN and cfg["std"] == LITE_STD and tuple(cfg["input_size"]) == (3, 224, 224)
    with torch.no_grad():
        probs = model(photos).softmax(-1)
    top5 = probs.topk(5).indices
    assert MILITARY_UNIFORM in top5[0].tolist(), top5[0]
    assert top5[1, 0].item() == PALACE, top5[1]
    assert probs[1, PALACE] > 0.2


def test_random_init_does_not_classify(photos):
    torch.manual_seed(0)
    model, _ = create_backbone(LITE0, pretrained=False)
    with torch.no_grad():
        top5 = model.eval()(photos).topk(5).indices
    assert MILITARY_UNIFORM not in top5[0].tolist()
    assert top5[1, 0].item() != PALACE


# ----------------------------------------------------------------- heads removed


def test_headless_backbone_gives_penultimate_features(lite0, photos):
    full, _ = lite0
    backbone, cfg = create_backbone(LITE0, num_classes=0)
    assert not any(k.startswith("classifier.") for k in backbone.state_dict())
    assert cfg["mean"] == LITE_MEAN
    with torch.no_grad():
        expected = full.forward_head(full.forward_features(photos), pre_logits=True)
        got = backbone.eval()(photos)
    assert got.shape == (2, 1280)
    assert torch.allclose(got, expected, atol=1e-5)


def test_features_only_and_new_classifier(lite0_sd):
    feats = timm.create_model(LITE0, features_only=True, out_indices=(2, 4))
    load_offline_weights(feats, LITE0)  # conv_head/bn2/classifier absent, everything else strict
    assert torch.equal(feats.state_dict()["blocks.4.2.conv_pwl.weight"], lite0_sd["blocks.4.2.conv_pwl.weight"])

    model, _ = create_backbone(LITE0, num_classes=7)
    sd = model.state_dict()
    assert sd["classifier.weight"].shape == (7, 1280)  # fresh head for new classes
    assert torch.equal(sd["conv_head.weight"], lite0_sd["conv_head.weight"])


def test_mismatched_model_is_not_half_loaded():
    with pytest.raises(RuntimeError, match="conv_stem.weight"):
        create_backbone(LITE0, in_chans=1)


# ----------------------------------------------------------------- local checkpoints


def test_local_checkpoint_roundtrip(tmp_path: Path, lite0_sd):
    from safetensors.torch import save_file

    pth = tmp_path / "ddp.pth"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in lite0_sd.items()}}, pth)
    model, cfg = create_backbone(LITE0, pretrained=str(pth))
    _assert_same_state(model.state_dict(), lite0_sd)
    assert cfg["mean"] == LITE_MEAN

    st = tmp_path / "weights.safetensors"
    save_file({f"model.{k}": v.contiguous() for k, v in lite0_sd.items()}, str(st))
    model, _ = create_backbone(LITE0, pretrained=st, num_classes=0)
    assert model.state_dict()["conv_head.weight"].equal(lite0_sd["conv_head.weight"])

    # the packaged lukemelas-layout file itself is accepted as a path too
    model, _ = create_backbone(LITE0, pretrained=str(P._weights_path(LITE0)))
    _assert_same_state(model.state_dict(), lite0_sd)

    torch.save({f"module.{k}": v for k, v in lite0_sd.items() if not k.startswith("bn1.")}, tmp_path / "cut.pt")
    with pytest.raises(UserError, match="missing=.*bn1"):
        create_backbone(LITE0, pretrained=tmp_path / "cut.pt")
    with pytest.raises(FileNotFoundError):
        create_backbone(LITE0, pretrained=tmp_path / "nope.pth")


# ----------------------------------------------------------------- errors and other models


def test_unknown_name_lists_similar():
    with pytest.raises(UserError, match="Unknown timm model") as err:
        create_backbone("tf_efficientnet_lite9")
    assert "tf_efficientnet_lite0" in str(err.value)
    with pytest.raises(ValueError, match="resnet"):
        create_backbone("resnet_50x")


def test_hub_failure_names_offline_choices(monkeypatch):
    real = timm.create_model

    def offline(name, pretrained=False, **kw):
        if pretrained:
            raise OSError("We couldn't connect to 'https://huggingface.co'")
        return real(name, pretrained=False, **kw)

    monkeypatch.setattr(timm, "create_model", offline)
    monkeypatch.setattr(P, "_hub_reachable", lambda: True)
    with pytest.raises(UserError, match="tf_efficientnet_lite0") as err:
        create_backbone("resnet18")
    assert "huggingface" in str(err.value)

    # no network at all: fail at once instead of after the hub client's retries
    monkeypatch.setattr(P, "_hub_reachable", lambda: False)
    with pytest.raises(UserError, match="unreachable.*tf_efficientnet_lite0"):
        create_backbone("resnet18")


def test_random_init_other_model_uses_timm_config():
    model, cfg = create_backbone("resnet18", pretrained=False, num_classes=0)
    assert cfg["mean"] == pytest.approx((0.485, 0.456, 0.406)) and tuple(cfg["input_size"]) == (3, 224, 224)
    with pytest.raises(TypeError):
        create_backbone("resnet18", pretrained=1)  # type: ignore[arg-type]
