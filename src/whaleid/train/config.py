"""What a training run is told: :class:`TrainConfig` and the range each option must lie in."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

from whaleid.errors import UserError
from whaleid.model.augment import train_transform
from whaleid.model.network import MIN_IMG_SIZE, ModelConfig, check_limits

__all__ = ["CLI_NAMES", "FLAGS", "LIMITS", "MIXED_PRECISION", "OPTIONAL", "TrainConfig"]

MIXED_PRECISION = ("auto", "no", "fp16", "bf16")


# The range of each numeric option: (integer?, the rule as said to the user, the test); OPTIONAL ones may be None.
# The model's own (embedding_dim, img_size, drop_path) are checked by ModelConfig.
LIMITS = {
    "epochs": (True, ">= 1", lambda v: v >= 1),
    "batch_size": (True, ">= 2 (BatchNorm needs two photos per batch)", lambda v: v >= 2),
    # AdamW moves each weight by about the learning rate per step: past 1, one step wipes out the weights.
    "lr": (False, "in (0, 1]", lambda v: 0 < v <= 1),
    "backbone_lr": (False, "in [0, 1] (0: the backbone stays as it is)", lambda v: 0 <= v <= 1),
    "weight_decay": (False, "a finite number >= 0", lambda v: 0 <= v < math.inf),
    "warmup_epochs": (False, "a finite number >= 0", lambda v: 0 <= v < math.inf),
    "grad_accum": (True, ">= 1", lambda v: v >= 1),
    "clip_grad": (False, "a finite number >= 0 (0: no clipping)", lambda v: 0 <= v < math.inf),
    "seed": (True, "in [0, 2**31)", lambda v: 0 <= v < 2**31),
    "subcenters": (True, ">= 1", lambda v: v >= 1),
    "arcface_scale": (False, "a finite number > 0", lambda v: 0 < v < math.inf),
    "margin": (False, "in [0, pi/2) radians", lambda v: 0 <= v < math.pi / 2),
    "margin_a": (False, "a finite number >= 0", lambda v: 0 <= v < math.inf),
    "margin_lambda": (False, "a finite number >= 0", lambda v: 0 <= v < math.inf),
    "margin_b": (False, "a finite number >= 0", lambda v: 0 <= v < math.inf),
    "species_weight": (False, "a finite number >= 0", lambda v: 0 <= v < math.inf),
    "label_smoothing": (False, "in [0, 1)", lambda v: 0 <= v < 1),
    "rotation": (False, "in [0, 180] degrees", lambda v: 0 <= v <= 180),
    "crop_min_scale": (False, "in (0, 1]", lambda v: 0 < v <= 1),
    "jitter": (False, "in [0, 2] (hue jitter is a quarter of it, at most 0.5)", lambda v: 0 <= v <= 2),
    "grayscale": (False, "a probability in [0, 1]", lambda v: 0 <= v <= 1),
    "cutout": (False, "a probability in [0, 1]", lambda v: 0 <= v <= 1),
    "num_workers": (True, ">= 0", lambda v: v >= 0),
    "max_steps_per_epoch": (True, ">= 1", lambda v: v >= 1),
    "unfreeze_late_epoch": (True, ">= 0", lambda v: v >= 0),
    "unfreeze_all_epoch": (True, ">= 0", lambda v: v >= 0),
    "layer_decay": (False, "in (0, 1]", lambda v: 0 < v <= 1),
}


OPTIONAL = {"num_workers", "max_steps_per_epoch"}


FLAGS = ("dynamic_margin", "species_head", "hflip")


CLI_NAMES = {"max_steps_per_epoch": "--max-steps", "num_workers": "--workers"}  # where the flag is not the field's name


def _option(name: str) -> str:
    return f"{name} ({CLI_NAMES[name]})" if name in CLI_NAMES else name


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)  # the network trained; inference rebuilds it from this
    pretrained: bool | str = True
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3  # neck, pooling and heads: they start from scratch
    backbone_lr: float = 2e-4  # pretrained layers move slower
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    grad_accum: int = 1
    clip_grad: float = 5.0
    seed: int = 0
    subcenters: int = 3
    arcface_scale: float = 21.0
    dynamic_margin: bool = True
    margin: float = 0.3  # used when dynamic_margin is off
    margin_a: float = 0.27
    margin_lambda: float = 0.36
    margin_b: float = 0.05
    species_head: bool = False
    species_weight: float = 0.1
    label_smoothing: float = 0.0
    hflip: bool = False
    rotation: float = 10.0
    crop_min_scale: float = 0.7  # random resized crop keeps at least this share of the photo
    jitter: float = 0.2  # colour jitter strength
    grayscale: float = 0.0  # probability of a grey training view
    cutout: float = 0.25  # probability of erasing a patch
    num_workers: int | None = None
    mixed_precision: str = "auto"  # auto: bf16 on a GPU that has it, else full precision
    max_steps_per_epoch: int | None = None  # for smoke tests
    # Progressive resizing: {first epoch (0-based): input size}; inference uses model.img_size.
    img_size_schedule: dict[int, int] | None = None
    # Sequential unfreezing: before unfreeze_late_epoch only pooling, neck and heads learn; before
    # unfreeze_all_epoch the later half of the backbone joins them; then everything trains.
    unfreeze_late_epoch: int = 0
    unfreeze_all_epoch: int = 0
    layer_decay: float = 1.0  # per-layer learning rates: each backbone layer down from the top gets this factor

    def __post_init__(self) -> None:
        """Refuse values training cannot use, before any model is built, naming the option."""
        if self.mixed_precision is False:  # YAML reads a bare `no` as false
            self.mixed_precision = "no"
        check_limits(self, LIMITS, OPTIONAL, _option)
        for name in FLAGS:
            if not isinstance(getattr(self, name), bool):
                raise UserError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if not isinstance(self.pretrained, (bool, str)) or self.pretrained == "":
            raise UserError(f"pretrained must be true, false or a weights file, got {self.pretrained!r}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise UserError(
                f"mixed_precision must be one of {', '.join(MIXED_PRECISION)}, got {self.mixed_precision!r}"
            )
        if self.img_size_schedule:
            try:  # YAML/JSON keys
                self.img_size_schedule = {int(k): int(v) for k, v in self.img_size_schedule.items()}
            except (TypeError, ValueError, AttributeError) as error:
                raise UserError(
                    f"img_size_schedule must map epochs to sizes, got {self.img_size_schedule!r}"
                ) from error
            if 0 not in self.img_size_schedule:
                raise UserError("img_size_schedule must say the size of epoch 0")
            if min(self.img_size_schedule) < 0 or min(self.img_size_schedule.values()) < MIN_IMG_SIZE:
                raise UserError(
                    f"img_size_schedule needs epochs >= 0 and sizes >= {MIN_IMG_SIZE}, got {self.img_size_schedule}"
                )

    def with_options(self, **options: Any) -> TrainConfig:
        """A copy with the options given (None: not given), the model's own set on ``model``: for command-line
        flags, which name training and model settings side by side."""
        given = {name: value for name, value in options.items() if value is not None}
        model = {name: given.pop(name) for name in list(given) if name in {f.name for f in fields(ModelConfig)}}
        return replace(self, model=replace(self.model, **model), **given)

    def size_at(self, epoch: int) -> int:
        """Input size of a 0-based epoch under the progressive-resizing schedule."""
        if not self.img_size_schedule:
            return self.model.img_size
        return self.img_size_schedule[max(e for e in self.img_size_schedule if e <= epoch)]

    def transform(self, epoch: int, mean: Sequence[float], std: Sequence[float]) -> Callable:
        """The augmentations of a 0-based epoch, for a backbone normalised with ``mean`` and ``std``."""
        return train_transform(
            self.size_at(epoch),
            mean,
            std,
            self.hflip,
            self.rotation,
            (self.crop_min_scale, 1.0),
            self.jitter,
            self.cutout,
            self.grayscale,
        )
