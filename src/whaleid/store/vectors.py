"""The gallery's vectors: rows of the embeddings table, cached per model in ``index/`` (rebuilt from the
database when missing or damaged)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from whaleid.errors import UserError
from whaleid.files import atomic_path
from whaleid.store.queries import chunks
from whaleid.store.schema import Embedding, Model


class VectorCache:
    """Each model's vectors as a large base file and a small delta file: a top-up rewrites only the delta,
    until it holds a tenth of the base, when both are merged into a new base."""

    def __init__(self, directory: Path):
        self.dir = directory

    def files(self, model: Model) -> tuple[Path, Path]:
        return tuple(self.dir / "index" / f"model{model.id}{suffix}.npz" for suffix in ("", ".delta"))

    def drop(self, model: Model) -> None:
        """Forget the model's cache: it is rebuilt from the database when next needed."""
        for file in self.files(model):
            file.unlink(missing_ok=True)

    def vectors(self, session: Session, model: Model, photo_ids: np.ndarray) -> np.ndarray:
        """Vectors of these photos: the cache files, topped up from the database when they lack some."""
        base, delta = self.files(model)
        ids, vectors = _load(base)
        delta_ids, delta_vectors = _load(delta) if ids.size else (ids, vectors)
        ids, vectors = _joined((ids, vectors), (delta_ids, delta_vectors))
        missing = np.setdiff1d(photo_ids, ids)
        if missing.size:
            fresh = self.stored(session, model, missing)
            ids, vectors = _joined((ids, vectors), fresh)
            delta_ids, delta_vectors = _joined((delta_ids, delta_vectors), fresh)
            if base.is_file() and len(delta_ids) * 10 < len(ids):
                _save(delta, delta_ids, delta_vectors)
            else:
                _save(base, ids, vectors)
                delta.unlink(missing_ok=True)
        position = {int(p): i for i, p in enumerate(ids)}
        return vectors[[position[int(p)] for p in photo_ids]]

    def stored(self, session: Session, model: Model, photo_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(photo ids, vectors) of these photos from the database; one line to reindex when some have none."""
        rows = [
            row
            for chunk in chunks(photo_ids.tolist())
            for row in session.execute(
                select(Embedding.photo_id, Embedding.vector).where(
                    Embedding.model_id == model.id, Embedding.photo_id.in_(chunk)
                )
            ).all()
        ]
        if len(rows) != photo_ids.size:
            raise UserError(
                f"{photo_ids.size - len(rows)} confirmed photo(s) have no vector for model "
                f"v{model.version}: run `whaleid catalog reindex {self.dir}`"
            )
        return np.array([r[0] for r in rows], np.int64), np.stack([np.frombuffer(r[1], np.float32) for r in rows])


def _load(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A vector cache file's (photo ids, vectors); nothing when missing or damaged (rebuilt from the database)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return data["ids"], data["vectors"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):  # (a file cut short is no zip)
        return np.zeros(0, np.int64), np.zeros((0, 0), np.float32)


def _joined(*parts: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    kept = [p for p in parts if p[0].size]
    if not kept:
        return parts[0]
    return np.concatenate([p[0] for p in kept]), np.concatenate([p[1] for p in kept])


def _save(path: Path, ids: np.ndarray, vectors: np.ndarray) -> None:
    path.parent.mkdir(exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, ids=ids, vectors=vectors)
