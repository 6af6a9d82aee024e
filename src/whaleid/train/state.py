"""What a run leaves after each epoch (best checkpoint, ``last.pt``, ``metrics.jsonl``) and resuming from it."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch

from whaleid.errors import UserError
from whaleid.files import atomic_path
from whaleid.model.checkpoint import STEM, read_saved, save_checkpoint
from whaleid.train.config import TrainConfig
from whaleid.train.run import Run
from whaleid.train.validation import best_output, epoch_line

__all__ = ["resume_state", "save_epoch"]


def resume_state(run: Run, state_path: Path, metrics_path: Path, resume: bool) -> tuple[int, list[dict]]:
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


def save_epoch(
    run: Run,
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
    if max(history, key=lambda h: best_output(h)[0]) is record:
        unwrapped.config.output = best_output(record)[1]
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
