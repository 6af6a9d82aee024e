"""The metric-learning training loop: Accelerate, AdamW, warmup + cosine, checkpoints and resume."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from whaleid.data.catalog import Catalog
from whaleid.errors import UserError
from whaleid.model.checkpoint import STEM
from whaleid.train.config import TrainConfig
from whaleid.train.run import Run, prepare_run
from whaleid.train.state import resume_state, save_epoch
from whaleid.train.validation import validate

__all__ = ["TrainResult", "train"]


@dataclass
class TrainResult:
    checkpoint: Path
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0


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


def _step(run: Run, images: torch.Tensor, target: torch.Tensor, config: TrainConfig, epoch: int, step: int) -> float:
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


def _epoch(run: Run, config: TrainConfig, epoch: int, val_catalog: Catalog | None, progress: bool) -> dict:
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


def train(
    catalog: Catalog,
    config: TrainConfig,
    out_dir: str | Path,
    val_catalog: Catalog | None = None,
    resume: bool = False,
    progress: bool = True,
    preprocess: dict | None = None,
    extra: dict | None = None,
    on_epoch: Callable[[int, int], None] | None = None,
) -> TrainResult:
    """Train an embedding model on `catalog`; writes the checkpoint (`model.json` + `model.safetensors`),
    `last.pt` and `metrics.jsonl` in `out_dir`.

    ``preprocess`` (how the photos were cropped, see :mod:`whaleid.preprocess.cache`) is stored in
    the checkpoint so that embedding later prepares photos the same way; ``extra``
    (e.g. the resolved recipe) is stored with it; ``on_epoch(done, epochs)`` follows progress (a web job's).
    """
    _check_trainable(catalog)
    if val_catalog is not None and len(val_catalog) < 2:  # found out here, not after the first epoch
        raise UserError(
            f"the validation catalog has {len(val_catalog)} photo(s): leave-one-out validation needs at least 2"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    catalog = catalog.relabel()
    run = prepare_run(catalog, config)
    start_epoch, history = resume_state(run, out_dir / "last.pt", out_dir / "metrics.jsonl", resume)
    started = time.time() - sum(h["seconds"] for h in history)
    for epoch in range(start_epoch, config.epochs):
        history.append(_epoch(run, config, epoch, val_catalog, progress))
        if run.accelerator.is_main_process:
            save_epoch(run, config, out_dir, history, catalog.labels, preprocess, extra)
        run.accelerator.wait_for_everyone()
        if on_epoch is not None:
            on_epoch(epoch + 1, config.epochs)
    return TrainResult(out_dir / f"{STEM}.json", history, time.time() - started)
