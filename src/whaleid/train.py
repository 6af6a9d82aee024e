"""Metric-learning training loop: Accelerate, AdamW, warmup + cosine, checkpoints and resume."""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from numbers import Integral
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from timm.optim import param_groups_layer_decay
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from whaleid.data.catalog import Catalog, kfold, split_fold
from whaleid.errors import UserError
from whaleid.files import atomic_path
from whaleid.model.augment import PhotoDataset, collate_skipping, train_transform
from whaleid.model.checkpoint import STEM, read_saved, save_checkpoint
from whaleid.model.embed import Embedder, default_workers
from whaleid.model.losses import ArcFaceLoss, ArcFaceSubCenter, SpeciesHead, dynamic_margins
from whaleid.model.network import MIN_IMG_SIZE, OUTPUTS, EmbeddingModel, ModelConfig, check_limits
from whaleid.search.metrics import cell
from whaleid.search.openset import score_open_set

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


@dataclass
class TrainResult:
    checkpoint: Path
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0


def _mixed_precision(choice: str) -> str:
    if choice != "auto":
        return choice
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"


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


def validate(model: EmbeddingModel, catalog: Catalog, batch_size: int, num_workers: int | None) -> dict:
    """Leave-one-out metrics among held-out photos (each queries all the others), for each output.

    Keys are `map5`, `top1_known`, ... for the neck and `pooled_map5`, ... for the pooled features.
    """
    was_training, output = model.training, model.config.output
    device = next(model.parameters()).device
    metrics = {}
    for name in OUTPUTS if model.config.embedding_dim else ("neck",):
        model.config.output = name
        # torch: the weights change every epoch, an ONNX export per validation would not pay
        embedder = Embedder(model, batch_size=batch_size, num_workers=num_workers, device=device, engine="torch")
        embeddings = embedder.embed_catalog(catalog, progress=False)
        scores = score_open_set(embeddings.vectors, embeddings.table["individual_id"].tolist())
        metrics.update({(k if name == "neck" else f"{name}_{k}"): v for k, v in scores.items()})
    model.config.output = output
    model.train(was_training)
    return metrics


def _best_output(record: dict) -> tuple[float, str]:
    """The record's best validation MAP@5 and the output that reached it (epoch number without validation)."""
    if "val_map5" not in record:
        return record["epoch"], "neck"
    candidates = [
        (record.get(f"val_{prefix}map5", -1.0), name) for prefix, name in (("", "neck"), ("pooled_", "pooled"))
    ]
    return max(candidates, key=lambda c: c[0])  # ties: the neck, then the earliest epoch


def _check_trainable(catalog: Catalog) -> None:
    """ArcFace learns by telling individuals apart, a batch at a time, and BatchNorm needs two photos per batch."""
    if len(catalog) < 2:
        raise UserError(
            f"the training catalog has {len(catalog)} photo(s): training needs at least 2, of at least 2 individuals"
        )
    if catalog.n_individuals < 2:
        raise UserError(
            f"the training catalog has photos of only {catalog.n_individuals} individual(s): training "
            "learns to tell individuals apart, so it needs at least 2"
        )


def _diverged(config: TrainConfig, what: str) -> UserError:
    return UserError(
        f"training diverged: {what}; lower --lr (now {config.lr:g}) and --backbone-lr "
        f"(now {config.backbone_lr:g}) and train again"
    )


def epoch_line(record: dict, epochs: int) -> str:
    """A short line per epoch for the terminal; metrics.jsonl keeps every number."""
    parts = [f"epoch {record['epoch']}/{epochs}", f"loss {cell(record['loss'])}"]
    if "val_map5" in record:
        parts.append(f"val MAP@5 {cell(_best_output(record)[0])}")
    parts.append(f"{record['images_per_second']:.1f} img/s")
    return "  ".join(parts)


@dataclass
class _Run:
    """One training run's pieces, prepared by Accelerate: what each epoch step works with."""

    accelerator: Accelerator
    model: torch.nn.Module
    criterion: torch.nn.Module
    species_head: torch.nn.Module | None
    optimizer: torch.optim.Optimizer
    loader: DataLoader
    scheduler: torch.optim.lr_scheduler.LRScheduler
    dataset: PhotoDataset
    transform: Callable[[int], Callable]  # the training transform of an epoch (its input size)
    steps_per_epoch: int
    n_species: int
    workers: int


def _heads(
    model: EmbeddingModel, catalog: Catalog, config: TrainConfig
) -> tuple[ArcFaceLoss, SpeciesHead | None, np.ndarray, int]:
    """The ArcFace loss, the optional species head, each photo's target and the number of species.

    With a species head, a target codes both: ``individual * n_species + species``.
    """
    labels = catalog.table["label"].to_numpy()
    counts = np.bincount(labels, minlength=len(catalog.labels))
    margins = (
        dynamic_margins(counts, config.margin_a, config.margin_lambda, config.margin_b)
        if config.dynamic_margin
        else config.margin
    )
    head = ArcFaceSubCenter(model.embedding_dim, len(catalog.labels), config.subcenters, config.arcface_scale, margins)
    criterion = ArcFaceLoss(head, config.label_smoothing)
    species_names = sorted(catalog.table["species"].unique())
    species_head = SpeciesHead(model.embedding_dim, len(species_names)) if config.species_head else None
    species_codes = catalog.table["species"].map({s: i for i, s in enumerate(species_names)}).to_numpy()
    targets = labels if species_head is None else labels * len(species_names) + species_codes
    return criterion, species_head, targets, len(species_names)


def _loader(dataset: PhotoDataset, config: TrainConfig, workers: int) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=config.batch_size,
        shuffle=True,
        drop_last=len(dataset) > config.batch_size,
        num_workers=workers,
        collate_fn=collate_skipping,
        persistent_workers=workers > 0 and not config.img_size_schedule,  # fresh workers see a resized transform
    )


def _prepare(catalog: Catalog, config: TrainConfig) -> _Run:
    """Model, heads, optimizer, loader and schedule, built in a fixed order from the seed (the RNG draws depend on it)."""
    set_seed(config.seed)
    accelerator = Accelerator(
        mixed_precision=_mixed_precision(config.mixed_precision),
        gradient_accumulation_steps=config.grad_accum,
        cpu=not torch.cuda.is_available(),  # lets `torchrun --nproc_per_node N` run DDP over gloo on CPUs
    )
    # A copy: the model sets its normalisation and output on its config, and the caller's config trains every fold.
    model = EmbeddingModel(copy.deepcopy(config.model), pretrained=config.pretrained)
    # NHWC: EfficientNet's depthwise convolutions train 1.6x faster on CPU (docs/benchmarks.md).
    model = model.to(memory_format=torch.channels_last)
    criterion, species_head, targets, n_species = _heads(model, catalog, config)
    heads = [model.pool, model.neck, criterion] + ([species_head] if species_head else [])
    groups, starts = param_groups(model, heads, config)
    optimizer = torch.optim.AdamW(groups)
    workers = default_workers() if config.num_workers is None else config.num_workers

    def transform(epoch: int) -> Callable:
        return config.transform(epoch, model.config.mean, model.config.std)

    alternatives = catalog.table["alternatives"].tolist() if "alternatives" in catalog.table else None
    dataset = PhotoDataset(catalog.table["path"].tolist(), transform(0), targets, alternatives)
    loader = _loader(dataset, config, workers)
    steps_per_epoch = (
        len(loader) if config.max_steps_per_epoch is None else min(len(loader), config.max_steps_per_epoch)
    )
    optimizer_steps = math.ceil(steps_per_epoch / config.grad_accum)
    schedule = warmup_cosine(optimizer_steps * config.epochs, round(optimizer_steps * config.warmup_epochs))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        [lambda step, start=start: schedule(step) * (step // optimizer_steps >= start) for start in starts],
    )
    modules = [model, criterion] + ([species_head] if species_head else [])
    prepared = accelerator.prepare(*modules, optimizer, loader, scheduler)
    species_head = prepared[2] if species_head else None
    return _Run(
        accelerator,
        prepared[0],
        prepared[1],
        species_head,
        *prepared[-3:],
        dataset,
        transform,
        steps_per_epoch,
        n_species,
        workers,
    )


def _resume(run: _Run, state_path: Path, metrics_path: Path, resume: bool) -> tuple[int, list[dict]]:
    """The epoch to start from and the history so far: from ``last.pt`` when resuming, else a fresh start."""
    accelerator = run.accelerator
    if not (resume and state_path.exists()):
        if accelerator.is_main_process:
            metrics_path.unlink(missing_ok=True)
        return 0, []
    state = read_saved(state_path, "training state", "delete it to train from the start, or leave out --resume")
    try:
        for module, key in zip((run.model, run.criterion, run.species_head), ("model", "criterion", "species_head")):
            if module is not None:
                accelerator.unwrap_model(module).load_state_dict(state[key])
        run.optimizer.load_state_dict(state["optimizer"])
        run.scheduler.load_state_dict(state["scheduler"])
        start_epoch, history = state["epoch"], state["history"]
    except (KeyError, TypeError, ValueError, RuntimeError) as error:  # another catalog, backbone or head
        raise UserError(
            f"{state_path} was saved by a run with other individuals or options: train into a new "
            "--out, or leave out --resume to start again"
        ) from error
    if accelerator.is_main_process:
        # A crash between an epoch's metrics line and its last.pt leaves a line that the resumed run repeats.
        with atomic_path(metrics_path) as tmp:
            tmp.write_text("".join(json.dumps(h) + "\n" for h in history))
    accelerator.print(f"resuming after epoch {start_epoch} from {state_path}")
    return start_epoch, history


def _step(run: _Run, images: torch.Tensor, target: torch.Tensor, config: TrainConfig, epoch: int, step: int) -> float:
    """One forward/backward pass (an optimizer step once the gradients are accumulated); returns the loss."""
    accelerator, model = run.accelerator, run.model
    with accelerator.accumulate(model):
        embeddings = model(images.contiguous(memory_format=torch.channels_last))
        ids = target // run.n_species if run.species_head else target
        loss = run.criterion(embeddings, ids)
        if run.species_head:
            loss = loss + config.species_weight * run.species_head(embeddings, target % run.n_species)
        value = loss.item()
        if not math.isfinite(value):
            raise _diverged(config, f"the loss became {value} at epoch {epoch + 1} step {step + 1}")
        accelerator.backward(loss)
        if accelerator.sync_gradients and config.clip_grad:
            accelerator.clip_grad_norm_([p for g in run.optimizer.param_groups for p in g["params"]], config.clip_grad)
        run.optimizer.step()
        run.scheduler.step() if accelerator.sync_gradients else None
        run.optimizer.zero_grad()
    return value


def _epoch(run: _Run, config: TrainConfig, epoch: int, val_catalog: Catalog | None, progress: bool) -> dict:
    """Train one epoch (seeded by its number, so a resumed run repeats it exactly), then validate; its record."""
    accelerator = run.accelerator
    set_seed(config.seed + epoch)  # each epoch's shuffling and augmentation is reproducible on resume
    run.dataset.transform = run.transform(epoch)
    run.model.train()
    epoch_start, losses, seen, size = time.time(), [], 0, config.size_at(epoch)
    bar = tqdm(
        total=run.steps_per_epoch,
        desc=f"epoch {epoch + 1}/{config.epochs}",
        leave=False,
        bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]",  # img/s, not s/it
        disable=not (progress and accelerator.is_main_process),
    )
    for step, batch in enumerate(run.loader):
        if step >= run.steps_per_epoch:
            break
        if batch is None or len(batch[0]) < 2:  # unreadable photos skipped; BatchNorm needs two
            continue
        images, target, _ = batch
        losses.append(_step(run, images, target, config, epoch, step))
        seen, size = seen + len(images), int(images.shape[-1])
        bar.update(1)
        bar.set_postfix_str(f"loss {np.mean(losses[-20:]):.3f}, {seen / (time.time() - epoch_start):.1f} img/s")
    record = {
        "epoch": epoch + 1,
        "loss": float(np.mean(losses)) if losses else float("nan"),
        "lr": run.scheduler.get_last_lr()[-1],  # the head group: never frozen, never decayed
        "seconds": time.time() - epoch_start,
        "img_size": size,
        "processes": accelerator.num_processes,
        "images_per_second": seen * accelerator.num_processes / max(time.time() - epoch_start, 1e-9),
    }
    unwrapped = accelerator.unwrap_model(run.model)
    if not all(torch.isfinite(t).all() for t in unwrapped.state_dict().values() if t.is_floating_point()):
        raise _diverged(config, f"the weights became NaN or infinite in epoch {epoch + 1}")
    if val_catalog is not None and accelerator.is_main_process:
        bar.set_postfix_str(f"loss {record['loss']:.3f}, validating")
        record.update(
            {f"val_{k}": v for k, v in validate(unwrapped, val_catalog, config.batch_size, run.workers).items()}
        )
    bar.close()
    return record


def _save_epoch(
    run: _Run,
    config: TrainConfig,
    out_dir: Path,
    history: list[dict],
    labels: list[str],
    preprocess: dict | None,
    extra: dict | None,
) -> None:
    """The main process's files after an epoch: the checkpoint if it is the best so far, last.pt, its metrics line."""
    accelerator, record = run.accelerator, history[-1]
    unwrapped = accelerator.unwrap_model(run.model)
    criterion = accelerator.unwrap_model(run.criterion)
    # With validation, the checkpoint is the epoch and output that generalised best to unseen individuals.
    if max(history, key=lambda h: _best_output(h)[0]) is record:
        unwrapped.config.output = _best_output(record)[1]
        saved = {**(extra or {}), "train_config": asdict(config), "history": history, "epoch": record["epoch"]}
        arcface = criterion.head
        head = {"weight": arcface.weight.detach().float().cpu(), "k": arcface.k, "scale": arcface.s}
        save_checkpoint(unwrapped, out_dir / STEM, labels, head, preprocess, saved)
    state = {
        "model": unwrapped.state_dict(),
        "criterion": criterion.state_dict(),
        "species_head": accelerator.unwrap_model(run.species_head).state_dict() if run.species_head else None,
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "epoch": record["epoch"],
        "history": history,
    }
    with atomic_path(out_dir / "last.pt") as tmp:
        with open(tmp, "wb") as f:
            torch.save(state, f)
    with (out_dir / "metrics.jsonl").open("a") as f:  # after last.pt, so a listed epoch is always one to resume from
        f.write(json.dumps(record) + "\n")
    accelerator.print(epoch_line(record, config.epochs))


def train(
    catalog: Catalog,
    config: TrainConfig,
    out_dir: str | Path,
    val_catalog: Catalog | None = None,
    resume: bool = False,
    progress: bool = True,
    preprocess: dict | None = None,
    extra: dict | None = None,
) -> TrainResult:
    """Train an embedding model on `catalog`; writes the checkpoint (`model.json` + `model.safetensors`),
    `last.pt` and `metrics.jsonl` in `out_dir`.

    ``preprocess`` (how the photos were cropped, see :mod:`whaleid.preprocess.cache`) is stored in
    the checkpoint so that embedding later prepares photos the same way; ``extra``
    (e.g. the resolved recipe) is stored with it.
    """
    _check_trainable(catalog)
    if val_catalog is not None and len(val_catalog) < 2:  # found out here, not after the first epoch
        raise UserError(
            f"the validation catalog has {len(val_catalog)} photo(s): leave-one-out validation needs at least 2"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    catalog = catalog.relabel()
    run = _prepare(catalog, config)
    start_epoch, history = _resume(run, out_dir / "last.pt", out_dir / "metrics.jsonl", resume)
    started = time.time() - sum(h["seconds"] for h in history)
    for epoch in range(start_epoch, config.epochs):
        history.append(_epoch(run, config, epoch, val_catalog, progress))
        if run.accelerator.is_main_process:
            _save_epoch(run, config, out_dir, history, catalog.labels, preprocess, extra)
        run.accelerator.wait_for_everyone()
    return TrainResult(out_dir / f"{STEM}.json", history, time.time() - started)


def train_folds(
    catalog: Catalog,
    config: TrainConfig,
    out_dir: str | Path,
    folds: int,
    resume: bool = False,
    progress: bool = True,
    preprocess: dict | None = None,
    extra: dict | None = None,
) -> list[TrainResult]:
    """One model per fold in ``out_dir/fold<i>``, each validated on its held-out fold: an ensemble's members.

    ``out_dir/folds.csv`` records which fold each photo was held out in.
    """
    if isinstance(folds, bool) or not isinstance(folds, Integral) or folds < 2:
        raise UserError(
            f"--folds must be an integer >= 2 (one model per fold), got {folds!r}; for one model, leave it out"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    assignment = kfold(catalog, folds, config.seed)
    with atomic_path(out_dir / "folds.csv") as tmp:
        catalog.table[["image", "individual_id"]].assign(fold=assignment).to_csv(tmp, index=False)
    results = []
    for fold in range(folds):
        fit, held = split_fold(catalog, assignment, fold)
        results.append(
            train(
                fit,
                config,
                out_dir / f"fold{fold}",
                val_catalog=held,
                resume=resume,
                progress=progress,
                preprocess=preprocess,
                extra=extra,
            )
        )
    return results
