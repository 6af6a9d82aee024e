"""A catalog's next model as a trainer: the store's retrain step hands it the confirmed photos (the store and
training know nothing of each other; the CLI and the web job build one of these and pass it in, as the
``Trainer`` that :mod:`whaleid.store.retrain` declares)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from whaleid.data.catalog import Catalog
from whaleid.settings import from_dict
from whaleid.train.config import TrainConfig
from whaleid.train.loop import train


def recipe_trainer(recipe: dict, epochs: int | None = None, in_thread: bool = False) -> Callable[..., Path]:
    """A trainer of ``recipe`` (training settings, as a checkpoint records them or a recipe's ``train`` section);
    ``epochs`` overrides its length. Settings are checked here, before any photo is read. ``in_thread``: it runs
    beside other threads (a server's job), where photos load in the training thread: a loader worker forked from
    a process whose other threads hold locks can hang for ever (it did, once in a test run of the web job)."""
    config = from_dict(TrainConfig, recipe, "train")
    config = config if epochs is None else replace(config, epochs=epochs)
    config = replace(config, num_workers=0) if in_thread else config

    def run(catalog: Catalog, out_dir: Path, preprocess: dict | None, progress: Callable | None) -> Path:
        def epoch_done(done: int, total: int) -> None:
            if progress is not None:
                progress("training", done, total)

        epoch_done(0, config.epochs)
        result = train(
            catalog, config, out_dir, preprocess=preprocess, progress=sys.stderr.isatty(), on_epoch=epoch_done
        )
        return result.checkpoint

    return run
