"""Batched embedding of photos: L2-normalised once, here, with optional flip TTA.

Vectors are only comparable with vectors from the same model, photo preparation and TTA.
Every set of embeddings records a ``fingerprint`` of those (and its dimension) in its
meta, and :meth:`Embeddings.require_compatible` refuses to match a query, validation or
calibration set against a gallery made otherwise: the scores would be meaningless, with
no error to tell.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import time
import warnings
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from whaleid.data.catalog import Catalog
from whaleid.errors import UserError
from whaleid.files import atomic_path
from whaleid.model.augment import PhotoDataset, collate_skipping, eval_transform
from whaleid.model.checkpoint import load_checkpoint
from whaleid.model.keypoints import KeypointConfig, KeypointSet, extract_files
from whaleid.model.network import DEFAULT_BACKBONE, EmbeddingModel, ModelConfig
from whaleid.model.onnx import ENGINES, OnnxEmbedding, cache_dir, onnx_embedding, weights_digest
from whaleid.settings import from_dict


def default_workers() -> int:
    """Decoding overlaps the forward pass only when a core is left for it."""
    return min(4, max(0, (os.cpu_count() or 1) - 1))


FILES = ("vectors.npy", "photos.csv", "failures.csv", "embeddings.json")
KEYPOINTS = "keypoints.npz"  # optional: local features of the same photos, their settings in meta["keypoints"]


@dataclass
class Embeddings:
    """Unit vectors, one per photo that could be read, with the catalog rows they belong to."""

    vectors: np.ndarray
    table: pd.DataFrame  # image, species, individual_id of each vector's photo
    failures: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["image", "reason"]))
    meta: dict = field(default_factory=dict)
    class_cosines: np.ndarray | None = None  # (photos, meta["classes"]) cosine to each trained individual's centre
    directory: Path | None = None  # the folder it was loaded from, named in errors
    keypoints: KeypointSet | None = None  # one photo's local features per vector, for re-ranking

    def __len__(self) -> int:
        return len(self.vectors)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def save(self, directory: str | Path) -> Path:
        """Write the folder; the CSVs quote every cell, so names with commas, quotes or line breaks come back whole."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with atomic_path(directory / "vectors.npy") as tmp, open(tmp, "wb") as f:
            np.save(f, self.vectors)
        with atomic_path(directory / "photos.csv") as tmp:
            self.table.to_csv(tmp, index=False, quoting=csv.QUOTE_ALL)
        with atomic_path(directory / "failures.csv") as tmp:
            self.failures.to_csv(tmp, index=False, quoting=csv.QUOTE_ALL)
        if self.class_cosines is not None:
            with atomic_path(directory / "class_cosines.npy") as tmp, open(tmp, "wb") as f:
                np.save(f, self.class_cosines)
        else:
            (directory / "class_cosines.npy").unlink(missing_ok=True)
        if self.keypoints is not None:
            self.keypoints.save(directory / KEYPOINTS)
        else:
            (directory / KEYPOINTS).unlink(missing_ok=True)
        with atomic_path(directory / "embeddings.json") as tmp:  # last: a folder with it is complete
            tmp.write_text(json.dumps(self.meta, indent=2))
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> Embeddings:
        """Read a folder written by :meth:`save`; anything missing, unreadable or inconsistent is a UserError."""
        directory = Path(directory)
        again = f"run `whaleid embed CSV --out {directory}` again"
        if not os.path.isdir(directory):
            what = "is not a folder" if os.path.lexists(directory) else "not found"
            raise UserError(
                f"embeddings folder {what}: {directory} (make one with `whaleid embed CSV --out {directory}`)"
            )
        missing = [name for name in FILES if not (directory / name).is_file()]
        if missing:
            state = "is empty" if not any(directory.iterdir()) else f"lacks {', '.join(missing)}"
            raise UserError(f"{directory} is not a complete embeddings folder (it {state}): {again}")
        vectors = _load_array(directory / "vectors.npy", again)
        if vectors.ndim != 2 or not np.issubdtype(vectors.dtype, np.floating):
            raise UserError(
                f"{directory / 'vectors.npy'} holds a {vectors.dtype} array of shape {vectors.shape}, "
                f"not vectors: {again}"
            )
        vectors = vectors.astype(np.float32, copy=False)
        finite = np.isfinite(vectors).all(axis=1)
        if not finite.all():
            raise UserError(
                f"{directory / 'vectors.npy'} has NaN or inf in {int((~finite).sum())} of "
                f"{len(vectors)} vectors: {again}"
            )
        try:
            meta = json.loads((directory / "embeddings.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise UserError(
                f"{directory / 'embeddings.json'} is not readable JSON ({_first_line(exc)}): {again}"
            ) from None
        if not isinstance(meta, dict):
            raise UserError(f"{directory / 'embeddings.json'} is not a JSON object: {again}")
        table = _load_table(directory / "photos.csv", again)
        if "image" not in table.columns:
            raise UserError(f"{directory / 'photos.csv'} has no image column: {again}")
        if len(table) != len(vectors):
            raise UserError(
                f"{directory}: photos.csv lists {len(table)} photos but vectors.npy holds "
                f"{len(vectors)} vectors: {again}"
            )
        cosines = None
        if (directory / "class_cosines.npy").exists():
            cosines = _load_array(directory / "class_cosines.npy", again)
            if cosines.ndim != 2 or len(cosines) != len(vectors) or cosines.shape[1] != len(meta.get("classes", [])):
                raise UserError(
                    f"{directory / 'class_cosines.npy'} (shape {cosines.shape}) does not fit "
                    f"{len(vectors)} photos and {len(meta.get('classes', []))} classes: {again}"
                )
        keypoints = None
        if isinstance(meta.get("keypoints"), dict) and (directory / KEYPOINTS).is_file():
            keypoints = KeypointSet.load(directory / KEYPOINTS, keypoint_config(meta, again))
            if len(keypoints) != len(vectors):
                raise UserError(f"{directory / KEYPOINTS} holds {len(keypoints)} photos, not {len(vectors)}: {again}")
        failures = _load_table(directory / "failures.csv", again)
        return cls(vectors, table, failures, meta, cosines, directory, keypoints)

    def _named(self, what: str) -> str:
        return f"{what} {self.directory}" if self.directory else what

    def require_labels(self, what: str = "the gallery") -> None:
        """Refuse a set without an individual_id on every photo where one is needed (a gallery, a calibration set)."""
        if len(self) == 0:
            raise UserError(f"{self._named(what)} holds no vectors: embed a catalog with readable photos")
        ids = self.table["individual_id"] if "individual_id" in self.table else pd.Series([None] * len(self))
        unlabelled = ids.isna() | ids.astype(str).str.strip().eq("")
        if unlabelled.any():
            raise UserError(
                f"{self._named(what)}: {int(unlabelled.sum())} of {len(self)} photos have no individual_id; "
                "embed a labelled catalog (image,species,individual_id) for it"
            )

    def require_compatible(self, other: Embeddings, what: str, own: str = "the gallery") -> None:
        """Refuse ``other`` (named ``what`` in the error) unless it was made like these vectors (named ``own``)."""
        require_same_model(self.meta, self.dim, other.meta, other.dim, other._named(what), self._named(own))


def keypoint_config(meta: dict, again: str = "extract them again") -> KeypointConfig:
    """The keypoint settings recorded in a sidecar's meta."""
    recorded = dict(meta["keypoints"])
    version = recorded.pop("version", None)
    if version != KeypointConfig().to_dict()["version"]:
        raise UserError(f"keypoints of another whaleid version (format {version}): {again}")
    return from_dict(KeypointConfig, recorded, "keypoints")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:120] if text else type(exc).__name__


def _load_array(path: Path, again: str) -> np.ndarray:
    """A .npy array, never a pickle (a pickle can run code)."""
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:  # a cut-short .npz is no zip
        raise UserError(f"{path} is not a valid array file ({_first_line(exc)}): {again}") from None
    if not isinstance(array, np.ndarray):  # an .npz archive
        array.close()
        raise UserError(f"{path} is not a .npy array file: {again}")
    return array


def _load_table(path: Path, again: str) -> pd.DataFrame:
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.EmptyDataError, pd.errors.ParserError) as exc:
        raise UserError(f"{path} is not a readable CSV ({_first_line(exc)}): {again}") from None


# --------------------------------------------------------------------------- which model


def _identity(meta: dict) -> dict:
    """What makes two sets of vectors comparable: model, weights, photo preparation, ensemble.

    Flip TTA is left out: it averages two views in the same model's space, so vectors with and
    without it may be compared (a gallery embedded with TTA answers queries embedded without).
    """
    return {
        "model": meta.get("model"),
        "weights": meta.get("weights"),
        "crop": (meta.get("preprocess") or {}).get("cache"),
        "ensemble": meta.get("ensemble"),
    }


def fingerprint(meta: dict) -> str:
    """Short hash of :func:`_identity`: equal for vectors that may be compared."""
    text = json.dumps(_identity(meta), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _differences(meta: dict, other: dict) -> list[str]:
    """The recorded parts of two models' identities that differ, in words."""
    a, b = _identity(meta), _identity(other)
    both = isinstance(a["model"], dict) and isinstance(b["model"], dict)
    out = [
        f"{key} {a['model'].get(key)!r} vs {b['model'].get(key)!r}"
        for key in ("backbone", "img_size", "output", "embedding_dim", "mean", "std")
        if both and a["model"].get(key) != b["model"].get(key)
    ]
    recorded = {"weights": "weights", "crop": "preprocess"}  # older metas lack some
    said = {"weights": "weights", "crop": "photo cropping", "ensemble": "ensemble"}
    out += [
        words
        for key, words in said.items()
        if a[key] != b[key] and (key not in recorded or (recorded[key] in meta and recorded[key] in other))
    ]
    source, other_source = meta.get("source"), other.get("source")
    if not (meta.get("weights") and other.get("weights")) and source and other_source and source != other_source:
        out.append("model file")
    return out


def _describe_model(meta: dict, dim: int) -> str:
    model = meta.get("model")
    name = meta.get("fingerprint") or (model.get("backbone") if isinstance(model, dict) else None) or "not recorded"
    return f"{dim}-d, model {name}"


def require_same_model(meta: dict, dim: int, other_meta: dict, other_dim: int, what: str, own: str) -> None:
    """Raise UserError unless vectors described by ``other_meta`` may be compared with those of ``meta``.

    With fingerprints on both sides they must be equal; embeddings made before
    fingerprints are compared on what they record (dimension, model, model file).
    """
    differences = _differences(meta, other_meta)
    if meta.get("fingerprint") and other_meta.get("fingerprint"):
        same = meta["fingerprint"] == other_meta["fingerprint"]
    else:
        same = not differences
    if dim != other_dim or not same:
        detail = f"; they differ in {', '.join(differences)}" if differences else ""
        raise UserError(
            f"{what} come from another model ({_describe_model(other_meta, other_dim)}) than {own} "
            f"({_describe_model(meta, dim)}{detail}): embed both with the same --model (and --crop)"
        )


ENSEMBLES = ("concat", "mean")


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
        self.preprocess: dict | None = (
            None  # how photos were cropped for the model (whaleid.preprocess.cache), recorded with the vectors
        )
        self.keypoints: KeypointConfig | None = None  # also extract local features, for re-ranking
        # "auto": ONNX Runtime on CPU where the export works, else torch; see whaleid.model.onnx
        self.engine = engine
        self.export_to: tuple[str, Path] | None = None  # (weights digest, folder) of a checkpoint's ONNX export
        self._onnx: OnnxEmbedding | None | bool = False  # False: not chosen yet, None: torch
        self.photos, self.seconds = 0, 0.0  # embedded so far and the time it took, for throughput reports

    @classmethod
    def from_checkpoint(
        cls, path: str | Path | Sequence[str | Path], ensemble: str = "concat", **kwargs
    ) -> Embedder | Ensemble:
        """One checkpoint (model.json), or several: an :class:`Ensemble` (k-fold members)."""
        if not isinstance(path, (str, Path)):
            paths = list(path)
            if len(paths) > 1:
                return Ensemble([cls.from_checkpoint(p, **kwargs) for p in paths], ensemble)
            path = paths[0]
        model, checkpoint = load_checkpoint(path)
        embedder = cls(model, head=checkpoint.head, classes=checkpoint.labels, **kwargs)
        embedder.source = {"checkpoint": str(checkpoint.path.resolve())}
        embedder.weights = checkpoint.digest[:16]  # of the weights file: the same wherever the pair is copied
        embedder.export_to = (checkpoint.digest, checkpoint.path.parent)
        embedder.preprocess = checkpoint.preprocess
        return embedder

    @classmethod
    def from_source(cls, source: dict, img_size: int = 224, **kwargs) -> Embedder | Ensemble:
        """Rebuild the embedder that made a set of embeddings (see `Embeddings.meta['source']`)."""
        if "checkpoint" in source:
            return cls.from_checkpoint(source["checkpoint"], **kwargs)
        if "checkpoints" in source:
            return cls.from_checkpoint(source["checkpoints"], ensemble=source.get("ensemble", "concat"), **kwargs)
        if "zero_shot" in source:
            return cls.zero_shot(source["zero_shot"], img_size, **kwargs)
        raise ValueError("these embeddings do not say which model made them")

    @classmethod
    def zero_shot(cls, backbone: str = DEFAULT_BACKBONE, img_size: int = 224, **kwargs) -> Embedder:
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
                raise UserError(f"cannot run {self.config.backbone} on ONNX Runtime: {_first_line(exc)}") from None
            warnings.warn(
                f"embedding with torch: {self.config.backbone} did not export to ONNX ({_first_line(exc)})",
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
    rows = [
        m.table.reset_index(drop=True).reset_index().set_index("image").loc[table["image"], "index"].to_numpy()
        for m in members
    ]
    parts = [m.vectors[r] for m, r in zip(members, rows)]
    if mode == "concat":
        vectors = np.concatenate(parts, axis=1) / np.sqrt(len(parts))
    else:
        total = np.sum(parts, axis=0)
        vectors = total / np.linalg.norm(total, axis=1, keepdims=True).clip(min=1e-12)
    meta = {
        **first.meta,
        "ensemble": {"members": len(members), "mode": mode},
        "source": {"checkpoints": [m.meta.get("source", {}).get("checkpoint") for m in members], "ensemble": mode},
        "weights": [m.meta.get("weights") for m in members],
        "n": len(table),
        "dim": int(vectors.shape[1]),
    }
    meta["fingerprint"] = fingerprint(meta)
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
    keypoints = None if first.keypoints is None else first.keypoints.take(rows[0])  # photos, not models
    return Embeddings(vectors.astype(np.float32), table, failures, meta, cosines, keypoints=keypoints)


class Ensemble:
    """Several embedders used as one (k-fold members), combined by :func:`ensemble`."""

    def __init__(self, members: Sequence[Embedder], mode: str = "concat"):
        if mode not in ENSEMBLES:
            raise ValueError(f"unknown ensemble {mode!r}; valid: {', '.join(ENSEMBLES)}")
        self.members, self.mode = list(members), mode
        self.config = self.members[0].config
        self.source = {"checkpoints": [m.source.get("checkpoint") for m in self.members], "ensemble": mode}
        self.keypoints: KeypointConfig | None = None

    @property
    def preprocess(self) -> dict | None:
        return self.members[0].preprocess

    @preprocess.setter
    def preprocess(self, value: dict | None) -> None:
        for m in self.members:
            m.preprocess = value

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
