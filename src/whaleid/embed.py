"""Batched embedding of photos: L2-normalised once, here, with optional flip TTA."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
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
    class_cosines: np.ndarray | None = None  # (photos, meta["classes"]) cosine to each trained individual's centre

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
        if self.class_cosines is not None:
            with atomic_path(directory / "class_cosines.npy") as tmp, open(tmp, "wb") as f:
                np.save(f, self.class_cosines)
        else:
            (directory / "class_cosines.npy").unlink(missing_ok=True)
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
            class_cosines=np.load(directory / "class_cosines.npy") if (directory / "class_cosines.npy").exists() else None,
        )


ENSEMBLES = ("concat", "mean")


class Embedder:
    """Turns photos into unit embeddings with exactly the preprocessing the model was trained with.

    A model saved with its ArcFace head also gives each photo's cosine to every training
    individual's class centre (``Embeddings.class_cosines``), for the kNN/logit blend in
    :mod:`whaleid.scoring`.
    """

    def __init__(
        self,
        model: EmbeddingModel,
        batch_size: int = 32,
        tta_flip: bool = False,
        device: str | torch.device | None = None,
        num_workers: int | None = None,
        head: dict | None = None,
        classes: Sequence[str] | None = None,
    ):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.to(self.device).eval()
        self.config = model.config
        self.head = head
        self.classes = list(classes or []) if head else []
        # class centres normalised once, not per batch
        self.centres = F.normalize(torch.as_tensor(head["weight"]).float(), dim=1).to(self.device) if head else None
        self.batch_size = batch_size
        self.tta_flip = tta_flip
        self.num_workers = default_workers() if num_workers is None else num_workers
        self.transform = eval_transform(self.config.img_size, self.config.mean, self.config.std)
        self.source: dict = {}  # where the weights came from, so a query path can rebuild this embedder
        self.preprocess: dict | None = None  # how photos were cropped for the model (whaleid.cache), recorded with the vectors

    @classmethod
    def from_checkpoint(cls, path: str | Path | Sequence[str | Path], ensemble: str = "concat", **kwargs) -> "Embedder | Ensemble":
        """One model.pt, or several: an :class:`Ensemble` (k-fold members)."""
        if not isinstance(path, (str, Path)):
            paths = list(path)
            if len(paths) > 1:
                return Ensemble([cls.from_checkpoint(p, **kwargs) for p in paths], ensemble)
            path = paths[0]
        model, payload = load_checkpoint(path)
        embedder = cls(model, head=payload.get("head"), classes=payload.get("labels"), **kwargs)
        embedder.source = {"checkpoint": str(Path(path).resolve())}
        embedder.preprocess = payload.get("extra", {}).get("preprocess")
        return embedder

    @classmethod
    def from_source(cls, source: dict, img_size: int = 224, **kwargs) -> "Embedder | Ensemble":
        """Rebuild the embedder that made a set of embeddings (see `Embeddings.meta['source']`)."""
        if "checkpoint" in source:
            return cls.from_checkpoint(source["checkpoint"], **kwargs)
        if "checkpoints" in source:
            return cls.from_checkpoint(source["checkpoints"], ensemble=source.get("ensemble", "concat"), **kwargs)
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
    def embed_batch(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Unit embeddings, and (with a head) the cosine to each class centre, best sub-centre."""
        images = images.to(self.device, non_blocking=True)
        vectors, neck = self.model.embed_both(images)
        if self.tta_flip:
            flipped, flipped_neck = self.model.embed_both(images.flip(-1))
            vectors, neck = vectors + flipped, neck + flipped_neck
        vectors = F.normalize(vectors.float(), dim=1)
        if self.centres is None:
            return vectors, None
        cos = F.linear(F.normalize(neck.float(), dim=1), self.centres).view(len(images), -1, int(self.head["k"]))
        return vectors, cos.amax(dim=2)

    def _embed(self, paths: list[str], progress: bool) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        loader = DataLoader(
            PhotoDataset(paths, self.transform),
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            collate_fn=collate_skipping,
            persistent_workers=False,
        )
        vectors = np.zeros((len(paths), self.model.output_dim), dtype=np.float32)
        cosines = np.zeros((len(paths), len(self.classes)), dtype=np.float32) if self.head else None
        ok = np.zeros(len(paths), dtype=bool)
        with tqdm(total=len(paths), desc="embed", unit="photo", disable=not progress) as bar:
            for batch in loader:
                if batch is not None:
                    images, _, indices = batch
                    v, c = self.embed_batch(images)
                    vectors[indices.numpy()] = v.cpu().numpy()
                    if cosines is not None:
                        cosines[indices.numpy()] = c.cpu().numpy()
                    ok[indices.numpy()] = True
                bar.update(min(self.batch_size, bar.total - bar.n))
        return vectors[ok], (cosines[ok] if cosines is not None else None), ok

    def embed_paths(self, paths: list[str], progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Vectors for the photos that opened, and a mask of which did."""
        vectors, _, ok = self._embed(paths, progress)
        return vectors, ok

    def embed_catalog(self, catalog: Catalog, progress: bool = True) -> Embeddings:
        table = catalog.table
        vectors, cosines, ok = self._embed(table["path"].tolist(), progress)
        failed = table.loc[~ok, ["image"]].assign(reason="unreadable at embedding time")
        failures = pd.concat([catalog.problems[["image", "reason"]], failed], ignore_index=True)
        columns = [c for c in ("image", "species", "individual_id") if c in table]
        meta = {
            "model": _describe(self.config),
            "source": self.source,
            "preprocess": self.preprocess,
            "tta_flip": self.tta_flip,
            "n": int(ok.sum()),
        }
        if cosines is not None:
            meta["classes"], meta["arcface_scale"] = self.classes, float(self.head["scale"])
        return Embeddings(vectors, table.loc[ok, columns].reset_index(drop=True), failures, meta, cosines)


def ensemble(members: Sequence[Embeddings], mode: str = "concat") -> Embeddings:
    """One set of embeddings from several models' embeddings of the same photos.

    ``"concat"`` joins the unit vectors, scaled so the result is unit length (its
    cosine is the members' mean cosine); ``"mean"`` averages them and renormalises.
    Class cosines are averaged over the members that know each class (-1 where none
    does). Photos some member could not read are dropped.
    """
    if mode not in ENSEMBLES:
        raise ValueError(f"unknown ensemble {mode!r}; valid: {', '.join(ENSEMBLES)}")
    if mode == "mean" and len({m.vectors.shape[1] for m in members}) > 1:
        raise ValueError("ensemble 'mean' needs members of one embedding size; use 'concat'")
    common = set.intersection(*(set(m.table["image"]) for m in members))
    first = members[0]
    keep = first.table["image"].isin(common).to_numpy()
    table = first.table[keep].reset_index(drop=True)
    rows = [m.table.reset_index(drop=True).reset_index().set_index("image").loc[table["image"], "index"].to_numpy() for m in members]
    parts = [m.vectors[r] for m, r in zip(members, rows)]
    if mode == "concat":
        vectors = np.concatenate(parts, axis=1) / np.sqrt(len(parts))
    else:
        total = np.sum(parts, axis=0)
        vectors = total / np.linalg.norm(total, axis=1, keepdims=True).clip(min=1e-12)
    meta = {**first.meta, "ensemble": {"members": len(members), "mode": mode},
            "source": {"checkpoints": [m.meta.get("source", {}).get("checkpoint") for m in members], "ensemble": mode}}
    cosines = None
    if all(m.class_cosines is not None for m in members):
        classes = sorted({c for m in members for c in m.meta["classes"]})
        total, count = np.zeros((len(table), len(classes)), np.float32), np.zeros(len(classes), np.float32)
        for m, r in zip(members, rows):
            columns = np.searchsorted(classes, m.meta["classes"])
            total[:, columns] += m.class_cosines[r]
            count[columns] += 1
        cosines = np.where(count > 0, total / count.clip(min=1), -1.0).astype(np.float32)
        meta["classes"] = classes
    failures = pd.concat([m.failures for m in members], ignore_index=True).drop_duplicates("image")
    return Embeddings(vectors.astype(np.float32), table, failures, meta, cosines)


class Ensemble:
    """Several embedders used as one (k-fold members), combined by :func:`ensemble`."""

    def __init__(self, members: Sequence[Embedder], mode: str = "concat"):
        if mode not in ENSEMBLES:
            raise ValueError(f"unknown ensemble {mode!r}; valid: {', '.join(ENSEMBLES)}")
        self.members, self.mode = list(members), mode
        self.config = self.members[0].config
        self.source = {"checkpoints": [m.source.get("checkpoint") for m in self.members], "ensemble": mode}

    @property
    def preprocess(self) -> dict | None:
        return self.members[0].preprocess

    @preprocess.setter
    def preprocess(self, value: dict | None) -> None:
        for m in self.members:
            m.preprocess = value

    def embed_catalog(self, catalog: Catalog, progress: bool = True) -> Embeddings:
        return ensemble([m.embed_catalog(catalog, progress) for m in self.members], self.mode)

    def embed_paths(self, paths: list[str], progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
        table = pd.DataFrame({"image": paths, "path": paths, "individual_id": None})
        catalog = Catalog(table, images_dir=Path("/"))
        combined = self.embed_catalog(catalog, progress)
        return combined.vectors, np.isin(np.asarray(paths, dtype=object), combined.table["image"].to_numpy())


def _describe(config: ModelConfig) -> dict:
    return {
        "backbone": config.backbone,
        "embedding_dim": config.embedding_dim,
        "output": config.output,
        "img_size": config.img_size,
        "mean": list(config.mean),
        "std": list(config.std),
    }
