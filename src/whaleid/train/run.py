"""One training run's pieces (model, heads, optimizer, loader, schedule), built in a fixed order from the seed."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader

from whaleid.data.catalog import Catalog
from whaleid.model.augment import PhotoDataset, collate_skipping
from whaleid.model.embed import default_workers
from whaleid.model.losses import ArcFaceLoss, ArcFaceSubCenter, SpeciesHead, dynamic_margins
from whaleid.model.network import EmbeddingModel
from whaleid.train.config import TrainConfig
from whaleid.train.schedule import param_groups, warmup_cosine

__all__ = ["Run", "prepare_run"]


def _mixed_precision(choice: str) -> str:
    if choice != "auto":
        return choice
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"


@dataclass
class Run:
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


def prepare_run(catalog: Catalog, config: TrainConfig) -> Run:
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
    return Run(
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
