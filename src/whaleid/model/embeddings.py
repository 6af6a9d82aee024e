"""Sets of embeddings: unit vectors with their photos, on disk, and the fingerprints that keep them apart.

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
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from whaleid.errors import UserError
from whaleid.files import atomic_path
from whaleid.model.keypoints import KeypointConfig, KeypointSet
from whaleid.settings import from_dict

FILES = ("vectors.npy", "photos.csv", "failures.csv", "embeddings.json")
KEYPOINTS = "keypoints.npz"  # optional: local features of the same photos, their settings in meta["keypoints"]
ENSEMBLES = ("concat", "mean")


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
                f"{directory / 'embeddings.json'} is not readable JSON ({first_line(exc)}): {again}"
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


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:120] if text else type(exc).__name__


def _load_array(path: Path, again: str) -> np.ndarray:
    """A .npy array, never a pickle (a pickle can run code)."""
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:  # a cut-short .npz is no zip
        raise UserError(f"{path} is not a valid array file ({first_line(exc)}): {again}") from None
    if not isinstance(array, np.ndarray):  # an .npz archive
        array.close()
        raise UserError(f"{path} is not a .npy array file: {again}")
    return array


def _load_table(path: Path, again: str) -> pd.DataFrame:
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.EmptyDataError, pd.errors.ParserError) as exc:
        raise UserError(f"{path} is not a readable CSV ({first_line(exc)}): {again}") from None


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
