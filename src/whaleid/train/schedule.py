"""How fast each weight learns: warmup then cosine decay, per-layer rates and sequential unfreezing."""

from __future__ import annotations

import math

import torch
from timm.optim import param_groups_layer_decay

from whaleid.model.network import EmbeddingModel
from whaleid.train.config import TrainConfig

__all__ = ["param_groups", "warmup_cosine"]


def warmup_cosine(total_steps: int, warmup_steps: int):
    """LR multiplier: linear warmup from ~0, then cosine decay to 0."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def param_groups(
    model: EmbeddingModel, heads: list[torch.nn.Module], config: TrainConfig
) -> tuple[list[dict], list[int]]:
    """AdamW groups with per-layer learning rates, and the epoch from which each group learns.

    timm orders the backbone's layers (stem first, head convolution last); each layer
    below the top gets ``layer_decay`` times the learning rate of the one above, and
    1-D parameters (biases, norms) no weight decay. The epochs implement sequential
    unfreezing by a zero learning rate, which, unlike ``requires_grad``, is safe under DDP.
    """
    probe = param_groups_layer_decay(model.backbone, weight_decay=config.weight_decay, layer_decay=0.5)
    depths = [round(math.log2(1.0 / g["lr_scale"])) for g in probe]  # 0 = the top layer
    levels = max(depths) + 1
    groups, starts = [], []
    for group, depth in zip(probe, depths):
        groups.append(
            {
                "params": group["params"],
                "weight_decay": group["weight_decay"],
                "lr": config.backbone_lr * config.layer_decay**depth,
            }
        )
        late = depth < levels / 2
        starts.append(
            config.unfreeze_late_epoch if late else max(config.unfreeze_late_epoch, config.unfreeze_all_epoch)
        )
    groups.append(
        {"params": [p for h in heads for p in h.parameters()], "lr": config.lr, "weight_decay": config.weight_decay}
    )
    starts.append(0)
    return groups, starts
