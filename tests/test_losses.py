import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from whaleid.model.losses import ArcFaceLoss, ArcFaceSubCenter, SpeciesHead, dynamic_margins


def test_dynamic_margins_match_the_winners_formula():
    # m = 0.27 * n^-0.36 + 0.05, worked out by hand for n = 1, 8, 40
    assert dynamic_margins([1, 8, 40]).tolist() == pytest.approx([0.32, 0.177718, 0.121552], abs=1e-6)


def _reference_logits(emb, weight, labels, margins, k, s):
    """Independent float64 computation with arccos, straight from the ArcFace paper."""
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    weight = weight / np.linalg.norm(weight, axis=1, keepdims=True)
    cos = (emb @ weight.T).reshape(len(emb), -1, k).max(axis=2)
    out = cos.copy()
    for i, y in enumerate(labels):
        theta = math.acos(np.clip(cos[i, y], -1, 1))
        m = margins[y]
        out[i, y] = math.cos(theta + m) if theta + m <= math.pi else cos[i, y] - math.sin(math.pi - m) * m
    return s * out


def test_arcface_logits_against_independent_computation():
    torch.manual_seed(0)
    head = ArcFaceSubCenter(8, num_classes=5, k=3, s=21.0, margins=dynamic_margins([1, 2, 3, 10, 50]))
    emb = torch.randn(6, 8)
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    got = head(emb, labels).detach().numpy()
    want = _reference_logits(
        emb.numpy().astype(np.float64),
        head.weight.detach().numpy().astype(np.float64),
        labels.numpy(),
        head.margins.numpy(),
        3,
        21.0,
    )
    np.testing.assert_allclose(got, want, atol=1e-4)
    # the margin only lowers the target logit
    plain = head(emb).detach().numpy()
    rows = np.arange(6)
    assert np.all(got[rows, labels] < plain[rows, labels])
    mask = np.ones_like(got, dtype=bool)
    mask[rows, labels] = False
    np.testing.assert_allclose(got[mask], plain[mask], atol=1e-6)


def test_subcenters_take_the_closest_center():
    head = ArcFaceSubCenter(2, num_classes=1, k=2, s=1.0, margins=0.0)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    assert head(torch.tensor([[0.0, 3.0]])).item() == pytest.approx(1.0)
    assert head(torch.tensor([[1.0, 1.0]])).item() == pytest.approx(math.sqrt(0.5), abs=1e-6)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_no_nan_when_embedding_sits_on_or_opposite_its_center(sign):
    head = ArcFaceSubCenter(4, num_classes=3, k=1, margins=0.5)
    emb = (sign * head.weight[1:2].detach().clone()).requires_grad_(True)
    loss = ArcFaceLoss(head)(emb, torch.tensor([1]))
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(emb.grad).all() and torch.isfinite(head.weight.grad).all()


def test_label_smoothing_is_cross_entropy_over_margin_logits():
    torch.manual_seed(1)
    head = ArcFaceSubCenter(8, num_classes=4, k=2, margins=0.3)
    emb, labels = torch.randn(5, 8), torch.tensor([0, 1, 2, 3, 1])
    logits = head(emb, labels)
    manual = -(
        0.9 * F.log_softmax(logits, 1).gather(1, labels[:, None]).squeeze(1) + 0.1 / 4 * F.log_softmax(logits, 1).sum(1)
    ).mean()
    assert ArcFaceLoss(head, label_smoothing=0.1)(emb, labels).item() == pytest.approx(manual.item(), rel=1e-5)


def test_species_head_is_plain_cross_entropy():
    torch.manual_seed(2)
    head, emb, y = SpeciesHead(8, 3), torch.randn(4, 8), torch.tensor([0, 2, 1, 2])
    assert head(emb, y).item() == pytest.approx(F.cross_entropy(head.fc(emb), y).item())
