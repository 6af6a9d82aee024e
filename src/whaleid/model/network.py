"""Embedding model: a timm backbone, GeM pooling and a linear + BatchNorm neck.

The ArcFace head is not part of this model: it belongs to training (`whaleid.model.losses`).
Inference models output raw embeddings; `whaleid.model.embed` normalises them once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from numbers import Integral, Real
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from whaleid.errors import UserError
from whaleid.model import DEFAULT_IMG_SIZE
from whaleid.model.pretrained import create_backbone

DEFAULT_BACKBONE = "tf_efficientnet_lite0"
OUTPUTS = ("neck", "pooled")
MIN_IMG_SIZE = 32  # the backbones downsample 32 times: a smaller input leaves them less than one feature pixel
# The range of each numeric option: (integer?, the rule as said to the user, the test).
LIMITS = {
    "embedding_dim": (True, ">= 0 (0: no neck)", lambda v: v >= 0),
    "img_size": (True, f">= {MIN_IMG_SIZE}", lambda v: v >= MIN_IMG_SIZE),
    "drop_path": (False, "in [0, 1)", lambda v: 0 <= v < 1),
}


def check_limits(settings: Any, limits: dict, optional: Collection[str] = (), name: Callable[[str], str] = str) -> None:
    """Refuse a number out of its range or of the wrong kind, naming the option and the rule.

    ``optional`` options may also be None; ``name`` says an option as the user knows it (a CLI flag).
    """
    for key, (integer, rule, ok) in limits.items():
        value = getattr(settings, key)
        if value is None and key in optional:
            continue
        number = isinstance(value, Integral if integer else Real) and not isinstance(value, bool)
        if not number or not ok(value):
            rule = ("None or " if key in optional else "") + ("an integer " if integer else "") + rule
            raise UserError(f"{name(key)} must be {rule}, got {value!r}")


class GeM(nn.Module):
    """Generalised mean pooling: p=1 is average pooling, large p tends to max pooling.

    A learnable p lets the model choose how peaky the pooling is; retrieval models
    with local cues (nicks, scars) usually settle around p = 3.
    """

    def __init__(self, p: float = 3.0, eps: float = 1e-6, learnable: bool = True):
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)), requires_grad=learnable)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.adaptive_avg_pool2d(x.clamp(min=self.eps).pow(self.p), 1)
        return pooled.pow(1.0 / self.p).flatten(1)

    def extra_repr(self) -> str:
        return f"p={self.p.item():.3f}, eps={self.eps}"


@dataclass
class ModelConfig:
    """Everything needed to rebuild the model and its preprocessing at query time."""

    backbone: str = DEFAULT_BACKBONE
    embedding_dim: int = 512  # 0: no neck, the pooled backbone features are the embedding
    img_size: int = DEFAULT_IMG_SIZE
    gem_p: float = 3.0
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    grad_checkpointing: bool = False
    drop_path: float = 0.0  # timm drop_path_rate; only active in training
    # What inference uses: the trained neck, or the GeM-pooled backbone features before it.
    # The neck fits the training individuals; pooled features can transfer better to unseen
    # ones (measured in docs/results/right-whales.md), so training picks on validation.
    output: str = "neck"
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Refuse values no model can be built with, naming the option, before any backbone is created."""
        check_limits(self, LIMITS)
        if not isinstance(self.backbone, str) or not self.backbone:
            raise UserError(f"backbone must be a timm model name, got {self.backbone!r}")
        if not isinstance(self.grad_checkpointing, bool):
            raise UserError(f"grad_checkpointing must be true or false, got {self.grad_checkpointing!r}")
        if self.output not in OUTPUTS:
            raise UserError(f"output must be one of {', '.join(OUTPUTS)}, got {self.output!r}")
        for key in ("mean", "std"):  # an edited model.json with std 0 failed only inside a DataLoader worker
            values = getattr(self, key)
            numbers = isinstance(values, (list, tuple)) and len(values) == 3
            numbers = numbers and all(
                isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(v) for v in values
            )
            if not numbers or (key == "std" and min(values) <= 0):
                rule = "three finite numbers above 0" if key == "std" else "three finite numbers"
                raise UserError(f"normalisation {key} must be {rule} (one per colour channel), got {values!r}")


class EmbeddingModel(nn.Module):
    def __init__(self, config: ModelConfig, pretrained: bool | str = True):
        super().__init__()
        self.backbone, data_config = create_backbone(
            config.backbone,
            pretrained=pretrained,
            num_classes=0,
            global_pool="",
            **({"drop_path_rate": config.drop_path} if config.drop_path else {}),
        )
        if pretrained:
            # The normalisation belongs to the weights the backbone starts from.
            config.mean = tuple(float(v) for v in data_config["mean"])
            config.std = tuple(float(v) for v in data_config["std"])
        if config.grad_checkpointing:
            self.backbone.set_grad_checkpointing(True)
        self.config = config
        self.pool = GeM(config.gem_p)
        features = self.backbone.num_features
        if config.embedding_dim:
            self.neck = nn.Sequential(nn.Linear(features, config.embedding_dim), nn.BatchNorm1d(config.embedding_dim))
        else:
            self.neck = nn.Identity()
        self.embedding_dim = config.embedding_dim or features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """The training embedding, the one the ArcFace head sees."""
        return self.neck(self.pool(self.backbone.forward_features(images)))

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """The inference embedding chosen by `config.output`."""
        return self.embed_both(images)[0]

    def embed_both(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The inference embedding and the neck embedding (what the ArcFace head scores) from one backbone pass."""
        pooled = self.pool(self.backbone.forward_features(images))
        neck = self.neck(pooled)
        return (pooled if self.config.output == "pooled" else neck), neck

    @property
    def output_dim(self) -> int:
        return self.backbone.num_features if self.config.output == "pooled" else self.embedding_dim
