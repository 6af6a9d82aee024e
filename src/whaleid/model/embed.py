"""Batched embedding of photos: L2-normalised once, here, with optional flip TTA.

An :class:`Embedder` records with its vectors everything that made them (model, weights,
photo preparation, TTA; :mod:`whaleid.model.embeddings`), so a query path can refuse
vectors made otherwise and rebuild the same embedder.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from whaleid.data.catalog import Catalog
from whaleid.errors import UserError
from whaleid.model import DEFAULT_IMG_SIZE
from whaleid.model.augment import PhotoDataset, collate_skipping, eval_transform
from whaleid.model.checkpoint import load_checkpoint
from whaleid.model.embeddings import ENSEMBLES, Embeddings, ensemble, fingerprint, first_line
from whaleid.model.keypoints import KeypointConfig, extract_files
from whaleid.model.network import DEFAULT_BACKBONE, EmbeddingModel, ModelConfig
from whaleid.model.onnx import ENGINES, OnnxEmbedding, cache_dir, onnx_embedding, weights_digest


def default_workers() -> int:
    """Decoding overlaps the forward pass only when a core is left for it."""
    return min(4, max(0, (os.cpu_count() or 1) - 1))


class Embedder:
    """Turns photos into unit embeddings with exactly the preprocessing the model was trained with.

    A model saved with its ArcFace head also gives each photo's cosine to every training
    individual's class centre (``Embeddings.class_cosines``), for the kNN/logit blend in
    :mod:`whaleid.search.scoring`.
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
        engine: str = "auto",
        preprocess: dict | None = None,
        keypoints: KeypointConfig | None = None,
    ):
        if engine not in ENGINES:
            raise UserError(f"unknown engine {engine!r}; valid: {', '.join(ENGINES)}")
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
        self.weights: str | None = None  # which weights: checkpoint file hash or zero-shot backbone (fingerprint)
        self.preprocess = (
            preprocess  # how photos were cropped for the model (whaleid.preprocess), recorded with the vectors
        )
        self.keypoints = keypoints  # also extract local features, for re-ranking
        # "auto": ONNX Runtime on CPU where the export works, else torch; see whaleid.model.onnx
        self.engine = engine
        self.export_to: tuple[str, Path] | None = None  # (weights digest, folder) of a checkpoint's ONNX export
        self._onnx: OnnxEmbedding | None | bool = False  # False: not chosen yet, None: torch
        self.photos, self.seconds = 0, 0.0  # embedded so far and the time it took, for throughput reports

    @classmethod
    def from_checkpoint(
        cls, path: str | Path | Sequence[str | Path], ensemble: str = "concat", **kwargs
    ) -> Embedder | Ensemble:
        """One checkpoint (model.json), or several: an :class:`Ensemble` (k-fold members). Photos are prepared
        as the checkpoint records unless ``preprocess`` is given (None: uncropped)."""
        if not isinstance(path, (str, Path)):
            paths = list(path)
            if len(paths) > 1:
                keypoints = kwargs.pop("keypoints", None)  # of the photos: extracted once, not per member
                return Ensemble([cls.from_checkpoint(p, **kwargs) for p in paths], ensemble, keypoints)
            path = paths[0]
        model, checkpoint = load_checkpoint(path)
        kwargs.setdefault("preprocess", checkpoint.preprocess)
        embedder = cls(model, head=checkpoint.head, classes=checkpoint.labels, **kwargs)
        embedder.source = {"checkpoint": str(checkpoint.path.resolve())}
        embedder.weights = checkpoint.digest[:16]  # of the weights file: the same wherever the pair is copied
        embedder.export_to = (checkpoint.digest, checkpoint.path.parent)
        return embedder

    @classmethod
    def from_source(cls, source: dict, img_size: int = DEFAULT_IMG_SIZE, **kwargs) -> Embedder | Ensemble:
        """Rebuild the embedder that made a set of embeddings (see `Embeddings.meta['source']`)."""
        if "checkpoint" in source:
            return cls.from_checkpoint(source["checkpoint"], **kwargs)
        if "checkpoints" in source:
            return cls.from_checkpoint(source["checkpoints"], ensemble=source.get("ensemble", "concat"), **kwargs)
        if "zero_shot" in source:
            return cls.zero_shot(source["zero_shot"], img_size, **kwargs)
        raise ValueError("these embeddings do not say which model made them")

    @classmethod
    def zero_shot(cls, backbone: str = DEFAULT_BACKBONE, img_size: int = DEFAULT_IMG_SIZE, **kwargs) -> Embedder:
        """Pretrained backbone features with GeM pooling and no trained neck: the baseline to beat."""
        embedder = cls(EmbeddingModel(ModelConfig(backbone=backbone, embedding_dim=0, img_size=img_size)), **kwargs)
        embedder.source = {"zero_shot": backbone}
        embedder.weights = f"zero-shot {backbone}"
        return embedder

    @property
    def onnx(self) -> OnnxEmbedding | None:
        """The ONNX Runtime session that embeds in place of torch, exported on first use; None: torch embeds."""
        if self._onnx is False:
            self._onnx = self._open_onnx()
        return self._onnx

    def _open_onnx(self) -> OnnxEmbedding | None:
        if self.engine == "torch" or (self.engine == "auto" and self.device.type != "cpu"):
            return None
        if self.device.type != "cpu":
            raise UserError(f"--engine onnx runs on the CPU, not on {self.device}: use --engine torch there")
        digest, folder = self.export_to or (weights_digest(self.model), cache_dir())
        try:
            return onnx_embedding(self.model, digest, folder)
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure to export or load falls back to the slower, same-result path
            if self.engine == "onnx":
                raise UserError(f"cannot run {self.config.backbone} on ONNX Runtime: {first_line(exc)}") from None
            warnings.warn(
                f"embedding with torch: {self.config.backbone} did not export to ONNX ({first_line(exc)})",
                stacklevel=2,
            )
            return None

    @property
    def runs_on(self) -> str:
        """What ran the model: "onnx" or "torch" (known once a photo was embedded)."""
        return "torch" if self._onnx in (False, None) else "onnx"

    def _embed_both(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.onnx is None:
            return self.model.embed_both(images.to(self.device, non_blocking=True))
        vectors, neck = self.onnx(images.numpy())
        return torch.from_numpy(vectors), torch.from_numpy(neck)

    @torch.inference_mode()
    def embed_batch(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Unit embeddings, and (with a head) the cosine to each class centre, best sub-centre."""
        vectors, neck = self._embed_both(images)
        if self.tta_flip:
            flipped, flipped_neck = self._embed_both(images.flip(-1))
            vectors, neck = vectors + flipped, neck + flipped_neck
        vectors = F.normalize(vectors.float(), dim=1)
        if self.centres is None:
            return vectors, None
        cos = F.linear(F.normalize(neck.float(), dim=1), self.centres).view(len(images), -1, int(self.head["k"]))
        return vectors, cos.amax(dim=2)

    def _embed(self, paths: list[str], progress: bool) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        self.onnx  # noqa: B018 - export or load before the clock starts: a one-off, not throughput
        start = time.perf_counter()
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
        self.photos, self.seconds = self.photos + len(paths), self.seconds + time.perf_counter() - start
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
            "weights": self.weights,
            "n": int(ok.sum()),
            "dim": int(vectors.shape[1]),
        }
        meta["fingerprint"] = fingerprint(meta)
        if cosines is not None:
            meta["classes"], meta["arcface_scale"] = self.classes, float(self.head["scale"])
        embeddings = Embeddings(vectors, table.loc[ok, columns].reset_index(drop=True), failures, meta, cosines)
        return with_keypoints(embeddings, table.loc[ok, "path"].tolist(), self.keypoints, progress)


def with_keypoints(
    embeddings: Embeddings, paths: Sequence[str], config: KeypointConfig | None, progress: bool = False
) -> Embeddings:
    """The embeddings with the local features of their photos (``paths``, one per vector) when ``config``."""
    if config is None:
        return embeddings
    embeddings.keypoints = extract_files(paths, config, progress=progress)
    embeddings.meta["keypoints"] = config.to_dict()
    return embeddings


class Ensemble:
    """Several embedders used as one (k-fold members), combined by :func:`ensemble`."""

    def __init__(self, members: Sequence[Embedder], mode: str = "concat", keypoints: KeypointConfig | None = None):
        if mode not in ENSEMBLES:
            raise ValueError(f"unknown ensemble {mode!r}; valid: {', '.join(ENSEMBLES)}")
        self.members, self.mode = list(members), mode
        self.config = self.members[0].config
        self.source = {"checkpoints": [m.source.get("checkpoint") for m in self.members], "ensemble": mode}
        self.keypoints = keypoints

    @property
    def preprocess(self) -> dict | None:
        return self.members[0].preprocess

    @property
    def photos(self) -> int:
        return self.members[0].photos  # every member embeds the same photos

    @property
    def seconds(self) -> float:
        return sum(m.seconds for m in self.members)

    @property
    def runs_on(self) -> str:
        return self.members[0].runs_on

    def embed_catalog(self, catalog: Catalog, progress: bool = True) -> Embeddings:
        joined = ensemble([m.embed_catalog(catalog, progress) for m in self.members], self.mode)
        paths = catalog.table.set_index("image").loc[joined.table["image"], "path"].tolist()
        return with_keypoints(joined, paths, self.keypoints, progress)

    def embed_paths(self, paths: list[str], progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
        embeddings, ok = embed_files(self, paths, progress)
        return embeddings.vectors, ok


def photos_per_second(embedder: Embedder | Ensemble) -> float:
    """How fast an embedder has gone so far (its export or cache load not counted)."""
    return embedder.photos / embedder.seconds if embedder.seconds else 0.0


def throughput(embedder: Embedder | Ensemble) -> str:
    """How fast an embedder went, in words: "212 photos in 3.1 s (68.4 photos/s on onnx)"."""
    rate = photos_per_second(embedder)
    return f"{embedder.photos} photos in {embedder.seconds:.1f} s ({rate:.1f} photos/s on {embedder.runs_on})"


def embed_files(
    embedder: Embedder | Ensemble, paths: Sequence[str], progress: bool = False
) -> tuple[Embeddings, np.ndarray]:
    """Embeddings of loose photo files (class cosines included), and a mask of which photos opened."""
    paths = list(paths)
    catalog = Catalog(pd.DataFrame({"image": paths, "path": paths, "individual_id": None}), images_dir=Path("/"))
    embeddings = embedder.embed_catalog(catalog, progress)
    return embeddings, np.isin(np.asarray(paths, dtype=object), embeddings.table["image"].to_numpy())


def _describe(config: ModelConfig) -> dict:
    return {
        "backbone": config.backbone,
        "embedding_dim": config.embedding_dim,
        "output": config.output,
        "img_size": config.img_size,
        "mean": list(config.mean),
        "std": list(config.std),
    }
