"""One typed description of what happens to photos before the model, and the one place that applies it.

Training records its :class:`PreprocessConfig` in the checkpoint; embedding, the CLI and
an :class:`~whaleid.search.identify.Identifier` read it back, so a query photo is cropped
exactly as the gallery's were.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from whaleid.data.catalog import Catalog
from whaleid.errors import UserError
from whaleid.preprocess.boxes import read_boxes
from whaleid.preprocess.cache import DEFAULT_ROOT, CacheSettings
from whaleid.preprocess.cache_writer import cached_catalog
from whaleid.settings import from_dict, to_dict

__all__ = ["PreprocessConfig", "parse_probabilities", "prepare", "prepare_paths"]


@dataclass(frozen=True)
class PreprocessConfig:
    """The crop cache's settings (crop, background, grayscale, sizes, ...) and, for box crops, the training mix."""

    cache: CacheSettings
    probabilities: dict[str, float] | None = None  # training mix of box sources, e.g. body 0.6, fin 0.15, full 0.25

    @property
    def source(self) -> str | None:
        """The box source used at inference: the one training drew most often."""
        return max(self.probabilities, key=self.probabilities.get) if self.probabilities else None

    def to_dict(self) -> dict:
        return to_dict(self)

    @classmethod
    def from_dict(cls, values: Mapping | None) -> PreprocessConfig | None:
        return None if values is None else from_dict(cls, values, "preprocess")

    @classmethod
    def from_options(
        cls,
        crop: str | None,
        background: str | None,
        probabilities: str | None,
        img_size: int,
        recorded: PreprocessConfig | None,
    ) -> PreprocessConfig | None:
        """The options given (e.g. on the command line), else what the model recorded, else nothing."""
        if crop is None and background is None:
            return recorded
        if (crop or "none") == "none" and background is None:
            return None
        settings = CacheSettings(sizes=(img_size,), crop=crop or "none", background=background)
        return cls(settings, parse_probabilities(probabilities))


def parse_probabilities(text: str | None) -> dict[str, float] | None:
    """'body=0.6,fin=0.15,full=0.25' as a mapping of box source to share."""
    if not text:
        return None
    try:
        return {k.strip(): float(v) for k, v in (part.split("=") for part in text.split(","))}
    except ValueError:
        raise UserError(f"box probabilities must look like 'body=0.6,fin=0.15,full=0.25', got {text!r}") from None


def box_table(catalog: Catalog, boxes: Sequence[str | os.PathLike] | None) -> pd.DataFrame:
    """The user's box files as one table for this catalog's photos (what `crop: boxes` needs)."""
    if not boxes:
        raise UserError("--crop boxes needs --boxes FILE (the box files)")
    photos = dict(zip(catalog.table["image"], catalog.paths))
    return pd.concat([read_boxes(b, photos) for b in boxes], ignore_index=True)


def prepare(
    catalog: Catalog,
    config: PreprocessConfig | None,
    cache_root: str | os.PathLike = DEFAULT_ROOT,
    boxes: Sequence[str | os.PathLike] | None = None,
    training: bool = False,
    progress: bool = True,
) -> Catalog:
    """The catalog with paths into the crop cache (built or reused); unchanged without a config.

    Training draws a box source per photo by ``probabilities``; embedding uses the most likely one.
    """
    if config is None:
        return catalog
    table = box_table(catalog, boxes) if config.cache.crop == "boxes" else None
    return cached_catalog(
        catalog,
        config.cache,
        Path(cache_root),
        table,
        source=config.source,
        probabilities=config.probabilities if training else None,
        progress=progress,
    )


def prepare_paths(
    paths: Sequence[str], config: PreprocessConfig | None, cache_root: str | os.PathLike = DEFAULT_ROOT
) -> tuple[list[str], np.ndarray]:
    """Loose photo files as the model should read them, and which of them could be prepared."""
    paths = [str(Path(p).resolve()) for p in paths]
    if config is None:
        return paths, np.ones(len(paths), dtype=bool)
    if config.cache.crop == "boxes":
        raise UserError("this gallery was embedded with external boxes; crop the photos with `whaleid cache` first")
    catalog = Catalog(pd.DataFrame({"image": paths, "individual_id": None}), images_dir=Path("/"))
    cached = prepare(catalog, config, cache_root, progress=False).table.set_index("image")["path"]
    return cached.tolist(), np.array([p in cached.index for p in paths], dtype=bool)
