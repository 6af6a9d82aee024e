"""The catalog's models: their registry, their files copied into ``models/v<N>/``, the one active model,
and embedding photos with one. Each model row holds a gallery record (:class:`GalleryRecord`: size,
photo preparation, ranking stages, fusion, threshold); it is written and read here and nowhere else."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from whaleid.errors import UserError
from whaleid.files import atomic_path
from whaleid.model.checkpoint import checkpoint_files, checkpoints, recorded_preparation
from whaleid.model.embed import Embedder, embed_files
from whaleid.model.keypoints import KeypointFiles, Keypoints
from whaleid.preprocess.prepare import PreprocessConfig, prepare_paths
from whaleid.search.fusion import Fusion
from whaleid.search.identify import Identifier, IdentifyConfig
from whaleid.search.record import GalleryRecord
from whaleid.search.saved import SIDECAR
from whaleid.settings import from_dict, to_dict
from whaleid.store.db import Database
from whaleid.store.errors import NotFound
from whaleid.store.queries import now
from whaleid.store.schema import Model, Setting

EMBED_CHUNK = 16  # photos embedded per step of a progress report
Progress = Callable[[str, int, int], None]


class Models:
    """The models of one catalog folder, and the embedders built from their copied files (one each, kept)."""

    def __init__(self, directory: Path, db: Database):
        self.dir, self.db = directory, db
        self._embedders: dict[int, Embedder] = {}
        self._records: dict[int, GalleryRecord] = {}  # a model row never changes once registered

    def register(self, session: Session, members: list[str], record: GalleryRecord):
        """The model's checkpoint(s) (see :func:`model_source`) copied in, with its record; the caller makes it
        active once it has its vectors (a catalog whose active model has none cannot match)."""
        version = (session.scalar(select(Model.version).order_by(Model.version.desc()).limit(1)) or 0) + 1
        copied = [self._copy(member, version, i) for i, member in enumerate(members)]
        given = {} if record.preprocess is None else {"preprocess": record.preprocess.to_dict()}  # else the file's
        embedder = Embedder.from_checkpoint([self.dir / c for c in copied], **given)
        digest = hashlib.sha256(json.dumps(sorted(_weights(embedder))).encode()).hexdigest()[:16]
        row = Model(
            version=version,
            file_hash=digest,
            source={"checkpoints": copied},
            created_at=now(),
            threshold=None if record.threshold is None else {"value": record.threshold},
            preprocess=embedder.preprocess,
            img_size=embedder.config.img_size,
            tta_flip=False,  # the catalog embeds every photo, gallery and new alike, once and without TTA
            scoring=None if record.scoring.rerank is None else to_dict(record.scoring),
            fusion=None if record.fusion is None else record.fusion.to_dict(),
        )
        session.add(row)
        session.flush()
        self._embedders[row.id] = embedder  # built once, for this model's first embeddings too
        return row

    def _copy(self, member: str, version: int, i: int) -> str:
        """One checkpoint's files copied under models/v<version>/<i>/; its path relative to the catalog."""
        target = self.dir / "models" / f"v{version}" / str(i)
        target.mkdir(parents=True, exist_ok=True)
        for file in checkpoint_files(member):
            with atomic_path(target / file.name) as tmp:
                shutil.copyfile(file, tmp)
        return f"models/v{version}/{i}/{checkpoint_files(member)[-1].name}"

    @staticmethod
    def activate(session: Session, model: Model) -> None:
        session.merge(Setting(key="active_model", value={"id": model.id}))

    def active(self, session: Session) -> Model:
        setting = session.get(Setting, "active_model")
        if setting is None:
            raise UserError(f"{self.dir} has no model: run `whaleid catalog reindex {self.dir} --model MODEL`")
        return session.get(Model, setting.value["id"])

    def version(self, session: Session, version: int) -> Model:
        found = session.scalar(select(Model).where(Model.version == version))
        if found is None:
            raise NotFound(f"no model v{version} in {self.dir}")
        return found

    def listed(self) -> list[dict]:
        """Every model the catalog has had, oldest first, with which one is active."""
        with self.db.reader() as session:
            active = self.active(session).id
            return [
                {
                    "version": m.version,
                    "active": m.id == active,
                    "checkpoints": m.source.get("checkpoints", []),
                    "threshold": self.record(m).threshold,
                    "created_at": m.created_at.isoformat(timespec="seconds"),
                    "report": self.report(m.version),
                }
                for m in session.scalars(select(Model).order_by(Model.version))
            ]

    def report_path(self, version: int) -> Path:
        """Where a version that the catalog trained keeps its report (see :mod:`whaleid.store.retrain`)."""
        return self.dir / "models" / f"v{version}" / "report.json"

    def report(self, version: int) -> dict | None:
        path = self.report_path(version)
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None

    def record(self, model: Model) -> GalleryRecord:
        """How this model's gallery is made and scored, from its row, read once (a row migrated from before the
        record has no size: its model file's)."""
        if model.id not in self._records:
            self._records[model.id] = self._read_record(model)
        return self._records[model.id]

    def _read_record(self, model: Model) -> GalleryRecord:
        files = [str(self.dir / p) for p in model.source["checkpoints"]]
        return GalleryRecord(
            source={"checkpoints": files},
            weights=model.file_hash,
            img_size=model.img_size or recorded_preparation(files[0])[0],
            preprocess=PreprocessConfig.from_dict(model.preprocess),
            tta_flip=bool(model.tta_flip),
            scoring=from_dict(IdentifyConfig, model.scoring or {}, "identifier config"),
            fusion=None if model.fusion is None else Fusion.from_dict(model.fusion),
            threshold=(model.threshold or {}).get("value"),
        )

    def embedder(self, model: Model) -> Embedder:
        """The model's embedder, built once; the photos' keypoints are stored apart (:meth:`keypoints`)."""
        if model.id not in self._embedders:
            self._embedders[model.id] = self.record(model).embedder(with_keypoints=False, batch_size=32)
        return self._embedders[model.id]

    def embed(self, model: Model, paths: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Unit vectors of photo files prepared as the model's gallery was, and which photos gave one
        (and, when the model re-ranks, their keypoints stored under the photos' content names)."""
        files, prepared = prepare_paths(paths, self.record(model).preprocess, self.dir / "cache")
        embeddings, ok = embed_files(self.embedder(model), files, progress=len(files) > 50)
        opened = prepared.copy()
        opened[prepared] = ok
        keypoints = self.keypoints(model)
        if keypoints is not None:
            names = [Path(p).stem for p, good in zip(paths, opened) if good]
            keypoints.write(names, [f for f, good in zip(files, ok) if good])
        return embeddings.vectors, opened

    def embed_stored(self, model: Model, files: list[str], progress: Progress | None) -> tuple[np.ndarray, np.ndarray]:
        """Vectors of stored photos (names under photos/), a chunk at a time so that progress moves, and which
        photos gave one."""
        parts, ok = [], []
        for start in range(0, len(files), EMBED_CHUNK):
            if progress:
                progress("embedding", start, len(files))
            vectors, good = self.embed(
                model, [str(self.dir / "photos" / f) for f in files[start : start + EMBED_CHUNK]]
            )
            parts.append(vectors)
            ok.append(good)
        if progress:
            progress("embedding", len(files), len(files))
        vectors = np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)
        return vectors, np.concatenate(ok) if ok else np.zeros(0, bool)

    def keypoints(self, model: Model, files: Sequence[str] = ()) -> KeypointFiles | None:
        """The stored keypoints of these photo files (by content name), when the model re-ranks."""
        rerank = self.record(model).scoring.rerank
        if rerank is None:
            return None
        return KeypointFiles(
            self.dir / "index" / f"keypoints{model.id}", rerank.keypoints, [Path(f).stem for f in files]
        )

    def photo_keypoints(self, model: Model, files: Sequence[str]) -> list[Keypoints]:
        """The keypoints of stored photos (names under photos/), extracted now where missing (a photo stored
        before its keypoints were lost or a re-ranking model came); the model must re-rank."""
        stored = self.keypoints(model, files)
        paths = [str(self.dir / "photos" / f) for f in files]
        prepared, ok = prepare_paths(paths, self.record(model).preprocess, self.dir / "cache")  # the readable ones
        stored.write([n for n, good in zip(stored.names, ok) if good], prepared)
        return [stored[i] for i in range(len(files))]

    def crops(self, session: Session) -> bool:
        """Whether the active model sees photos cropped."""
        preprocess = self.record(self.active(session)).preprocess
        return preprocess is not None and preprocess.cache.crop != "none"

    def model_input(self, file: str) -> Path:
        """A stored photo as the active model sees it: its crop from the preprocessing cache, or itself."""
        with self.db.reader() as session:
            model = self.active(session)
        photo = self.dir / "photos" / file
        files, ok = prepare_paths([str(photo)], self.record(model).preprocess, self.dir / "cache")
        return Path(files[0]) if ok[0] else photo


def model_source(path: Path) -> tuple[list[str], GalleryRecord]:
    """A model's checkpoint files and its record: from a saved Identifier (its threshold, photo preparation and,
    when its fusion was fitted, its re-ranking stage), a run folder or a model.json."""
    if (path / SIDECAR).is_file():
        identifier = Identifier.load(path)
        record = identifier.record
        reranks = record.scoring.rerank is not None and record.fusion is not None  # its second stage comes along
        scoring = IdentifyConfig(rerank=record.scoring.rerank if reranks else None)  # the catalog's own scorer
        return _members(record.source), replace(record, scoring=scoring, fusion=record.fusion if reranks else None)
    return [str(p) for p in checkpoints(path)], GalleryRecord()


def _members(source: dict) -> list[str]:
    if "checkpoint" in source:
        return [source["checkpoint"]]
    if "checkpoints" in source:
        return list(source["checkpoints"])
    raise UserError("a catalog needs a trained model (model.json, a run folder or a saved Identifier)")


def _weights(embedder) -> list[str]:
    members = getattr(embedder, "members", [embedder])
    return [m.weights for m in members]
