"""Embedding model: a timm backbone, GeM pooling and a linear + BatchNorm neck.

The ArcFace head is not part of this model: it belongs to training (`whaleid.model.losses`).
Inference models output raw embeddings; `whaleid.model.embed` normalises them once.
"""

from __future__ import annotations

import pickle
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from whaleid.errors import UserError
from whaleid.files import atomic_path
from whaleid.model.pretrained import create_backbone

DEFAULT_BACKBONE = "tf_efficientnet_lite0"
OUTPUTS = ("neck", "pooled")
FORMAT = "whaleid.model/1"


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
    img_size: int = 224
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


class EmbeddingModel(nn.Module):
    def __init__(self, config: ModelConfig, pretrained: bool | str = True):
        super().__init__()
        self.backbone, data_config = create_backbone(
            config.backbone, pretrained=pretrained, num_classes=0, global_pool="",
            **({"drop_path_rate": config.drop_path} if config.drop_path else {}),
        )
        if pretrained:
            # The normalisation belongs to the weights the backbone starts from.
            config.mean = tuple(float(v) for v in data_config["mean"])
            config.std = tuple(float(v) for v in data_config["std"])
        if config.grad_checkpointing:
            self.backbone.set_grad_checkpointing(True)
        if config.output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {config.output!r}")
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


def save_checkpoint(
    model: EmbeddingModel, path: str | Path, labels: list[str], extra: dict | None = None, head: dict | None = None
) -> Path:
    """Inference checkpoint: weights, model config, label map and (optionally) the ArcFace head; written atomically.

    ``head`` (``weight`` (classes x sub-centers, dim), ``k``, ``scale``) lets inference
    score photos against every training individual's class centre, for the kNN/logit blend.
    """
    path = Path(path)
    payload = {
        "format": FORMAT,
        "config": asdict(model.config),
        "state_dict": model.state_dict(),
        "labels": list(labels),
        "extra": extra or {},
        "head": head,
    }
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:  # through a file object, a full disk raises OSError(ENOSPC)
            torch.save(payload, f)
    return path


def read_saved(path: str | Path, what: str, advice: str) -> Any:
    """A file this package saved with ``torch.save``, loaded as tensors and plain data only (no code runs).

    Whatever makes it unusable (missing, empty, cut short by a crash or a full disk, another
    program's file) becomes one UserError naming the file, never EOFError or a pickle error.
    """
    path = Path(path)
    if path.is_dir():
        reason = "a directory"
    elif not path.exists():
        reason = "no such file"
    elif path.stat().st_size == 0:
        reason = "empty file"
    else:
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except PermissionError:
            reason = "permission denied"
        except pickle.UnpicklingError:  # holds Python objects that a whaleid file never has
            reason = "not a whaleid file"
        except Exception:  # EOFError, OSError, RuntimeError (zip), KeyError...: the bytes are cut short or damaged
            reason = "truncated or corrupt"
    raise UserError(f"{path} is not a readable whaleid {what} ({reason}): {advice}")


def load_checkpoint(path: str | Path) -> tuple[EmbeddingModel, dict]:
    """Rebuild the model from an inference checkpoint (no pretrained download needed)."""
    advice = "retrain, or point --model at the model.pt that `whaleid train` wrote"
    payload = read_saved(path, "model", advice)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UserError(f"{path} is not a readable whaleid model (not a whaleid checkpoint): {advice}")
    try:
        config = ModelConfig(**payload["config"])
        config.mean, config.std = tuple(config.mean), tuple(config.std)
        model = EmbeddingModel(config, pretrained=False)
        model.load_state_dict(payload["state_dict"], strict=True)
    except (KeyError, TypeError, ValueError, RuntimeError) as error:  # fields or weights that do not fit the model
        raise UserError(f"{path} is not a readable whaleid model (its weights do not fit its config): "
                        f"{advice}") from error
    model.eval()
    return model, payload
