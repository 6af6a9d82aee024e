"""ArcFace family heads for training: sub-centers and dynamic per-class margins.

Heads live only in training; inference uses the embedding alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# The Happywhale 2022 winners' dynamic margin m = a * n^(-lambda) + b, and scale s.
MARGIN_A, MARGIN_LAMBDA, MARGIN_B, ARCFACE_SCALE = 0.27, 0.36, 0.05, 21.0


def dynamic_margins(
    class_counts: Sequence[int] | np.ndarray,
    a: float = MARGIN_A,
    lam: float = MARGIN_LAMBDA,
    b: float = MARGIN_B,
) -> torch.Tensor:
    """Larger margins for rare classes: few photos need a stricter separation to generalise."""
    counts = torch.as_tensor(np.asarray(class_counts), dtype=torch.float64).clamp(min=1)
    return (a * counts.pow(-lam) + b).float()


class ArcFaceSubCenter(nn.Module):
    """Additive angular margin logits with k sub-centers per class.

    Sub-centers absorb noisy or very different views of one animal (left/right
    side, fluke vs. fin): a sample only needs to be close to one of its class's k
    centers. `margins` is one float or one value per class (see `dynamic_margins`).
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        k: int = 3,
        s: float = ARCFACE_SCALE,
        margins: float | torch.Tensor = 0.3,
    ):
        super().__init__()
        self.num_classes, self.k, self.s = num_classes, k, s
        self.weight = nn.Parameter(torch.empty(num_classes * k, in_features))
        nn.init.xavier_uniform_(self.weight)
        margins = torch.as_tensor(margins, dtype=torch.float32).expand(num_classes).clone()
        self.register_buffer("margins", margins)

    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Cosine to each class: the best of its k sub-centers."""
        cos = F.linear(F.normalize(embeddings.float()), F.normalize(self.weight.float()))
        return cos.view(-1, self.num_classes, self.k).amax(dim=2)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Scaled logits; with labels, the target class gets cos(theta + m)."""
        cos = self.cosine(embeddings)
        if labels is None:
            return self.s * cos
        m = self.margins[labels]
        target = cos.gather(1, labels[:, None]).squeeze(1).clamp(-1.0, 1.0)
        # cos(theta+m) = cos*cos(m) - sin*sin(m); the clamp keeps sqrt's gradient finite at |cos| = 1.
        sine = (1.0 - target * target).clamp(min=1e-7).sqrt()
        shifted = target * torch.cos(m) - sine * torch.sin(m)
        # Past theta = pi - m, cos(theta+m) would increase again; fall back to a linear penalty.
        shifted = torch.where(target > torch.cos(math.pi - m), shifted, target - torch.sin(math.pi - m) * m)
        logits = cos.scatter(1, labels[:, None], shifted[:, None])
        return self.s * logits


class ArcFaceLoss(nn.Module):
    """Cross-entropy over ArcFace logits, with optional label smoothing."""

    def __init__(self, head: ArcFaceSubCenter, label_smoothing: float = 0.0):
        super().__init__()
        self.head = head
        self.label_smoothing = label_smoothing

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.head(embeddings, labels), labels, label_smoothing=self.label_smoothing)


class SpeciesHead(nn.Module):
    """Auxiliary species classifier: the winners found it regularises the embedding."""

    def __init__(self, in_features: int, num_species: int):
        super().__init__()
        self.fc = nn.Linear(in_features, num_species)

    def forward(self, embeddings: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.fc(embeddings), species)
