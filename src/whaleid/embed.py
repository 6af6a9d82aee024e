"""Batched embedding of photos: L2-normalised once, here, with optional flip TTA."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from whaleid.augment import PhotoDataset, collate_skipping, eval_transform
from whaleid.catalog import Catalog
from whaleid.files import atomic_path
from whaleid.model import DEFAULT_BACKBONE, EmbeddingModel, ModelConfig, load_checkpoint


def default_workers() -> int:
    """Decoding overlaps the forward pass only when a core is left for it."""
    return min(4, max(0, (os.cpu_count() or 1) - 1))


@dataclass
class Embeddings:
    """Unit vectors, one per photo that could be read, with the catalog rows they belong to."""

    vectors: np.ndarray
    table: pd.DataFrame  # image, species, individual_id of each vector's photo
    failures: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["image", "reason"]))
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.vectors)

    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with atomic_path(directory / "vectors.npy") as tmp, open(tmp, "wb") as f:
            np.save(f, self.vectors)
        with atomic_path(directory / "photos.csv") as tmp:
            self.table.to_csv(tmp, index=False)
        with atomic_path(directory / "failures.csv") as tmp:
            self.failures.to_csv(tmp, index=False)
        with atomic_path(directory / "embeddings.json") as tmp:  # last: a folder with it is complete
            tmp.write_text(json.dumps(self.meta, indent=2))
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> "Embeddings":
        directory = Path(directory)
        return cls(
            vectors=np.load(directory / "vectors.npy"),
            table=pd.read_csv(directory / "photos.csv", dtype=str, keep_default_na=False),
            failures=pd.read_csv(directory / "failures.csv", dtype=str, keep_default_na=False),
            meta=json.loads((directory / "embeddings.json").read_text()),
        )


class Embedder:
    """Turns photos into unit embeddings with exactly the preprocessing the model was trained with."""

    def __init__(
        self,
        model: EmbeddingModel,
        batch_size: int = 32,
        tta_flip: bool = False,
        device: str | torch.device | None = None,
        num_workers: int | None = None,
    ):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.to(self.device).eval()
        self.config = model.config
        self.batch_size = batch_size
        self.tta_flip = tta_flip
        self.num_workers = default_workers() if num_workers is None else num_workers
        self.transform = eval_transform(self.config.img_size, self.config.mean, self.config.std)
        self.source: dict = {}  # where the weights came from, so a query path can rebuild this embedder
        self.preprocess: dict | None = None  # how photos were cropped for the model (whaleid.cache), recorded with the vectors

    @classmethod
    def from_checkpoint(cls, path: str | Path, **kwargs) -> "Embedder":
        model, payload = load_checkpoint(path)
        embedder = cls(model, **kwargs)
        embedder.source = {"checkpoint": str(Path(path).resolve())}
        embedder.preprocess = payload.get("extra", {}).get("preprocess")
        return embedder

    @classmethod
    def from_source(cls, source: dict, img_size: int = 224, **kwargs) -> "Embedder":
        """Rebuild the embedder that made a set of embeddings (see `Embeddings.meta['source']`)."""
        if "checkpoint" in source:
            return cls.from_checkpoint(source["checkpoint"], **kwargs)
        if "zero_shot" in source:
            return cls.zero_shot(source["zero_shot"], img_size, **kwargs)
        raise ValueError("these embeddings do not say which model made them")

    @classmethod
    def zero_shot(cls, backbone: str = DEFAULT_BACKBONE, img_size: int = 224, **kwargs) -> "Embedder":
        """Pretrained backbone features with GeM pooling and no trained neck: the baseline to beat."""
        embedder = cls(EmbeddingModel(ModelConfig(backbone=backbone, embedding_dim=0, img_size=img_size)), **kwargs)
        embedder.source = {"zero_shot": backbone}
        return embedder

    @torch.inference_mode()
    def embed_batch(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.device, non_blocking=True)
        vectors = self.model.embed(images)
        if self.tta_flip:
            vectors = vectors + self.model.embed(images.flip(-1))
        return F.normalize(vectors.float(), dim=1)

    def embed_paths(self, paths: list[str], progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Vectors for the photos that opened, and a mask of which did."""
        loader = DataLoader(
            PhotoDataset(paths, self.transform),
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            collate_fn=collate_skipping,
            persistent_workers=False,
        )
        vectors = np.zeros((len(paths), self.model.output_dim), dtype=np.float32)
        ok = np.zeros(len(paths), dtype=bool)
        with tqdm(total=len(paths), desc="embed", unit="photo", disable=not progress) as bar:
            for batch in loader:
                if batch is not None:
                    images, _, indices = batch
                    vectors[indices.numpy()] = self.embed_batch(images).cpu().numpy()
                    ok[indices.numpy()] = True
                bar.update(min(self.batch_size, bar.total - bar.n))
        return vectors[ok], ok

    def embed_catalog(self, catalog: Catalog, progress: bool = True) -> Embeddings:
        table = catalog.table
        vectors, ok = self.embed_paths(table["path"].tolist(), progress=progress)
        failed = table.loc[~ok, ["image"]].assign(reason="unreadable at embedding time")
        failures = pd.concat([catalog.problems[["image", "reason"]], failed], ignore_index=True)
        columns = [c for c in ("image", "species", "individual_id") if c in table]
        return Embeddings(
            vectors=vectors,
            table=table.loc[ok, columns].reset_index(drop=True),
            failures=failures,
            meta={
                "model": _describe(self.config),
                "source": self.source,
                "preprocess": self.preprocess,
                "tta_flip": self.tta_flip,
                "n": int(ok.sum()),
            },
        )


def _describe(config: ModelConfig) -> dict:
    return {
        "backbone": config.backbone,
        "embedding_dim": config.embedding_dim,
        "output": config.output,
        "img_size": config.img_size,
        "mean": list(config.mean),
        "std": list(config.std),
    }
