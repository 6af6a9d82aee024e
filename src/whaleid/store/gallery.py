"""The gallery: an Identifier over every confirmed photo, kept in memory while nothing changed it, what it
proposes for new photos, and every photo embedded again when the model changes (``reindex``)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from whaleid.model.embeddings import Embeddings
from whaleid.search.identify import Identifier
from whaleid.search.index import ExactIndex
from whaleid.store.db import Database
from whaleid.store.models import Models, Progress, model_source
from whaleid.store.queries import EDIT_KINDS, MAX_PARAMETERS, confirmed, now
from whaleid.store.schema import Decision, Embedding, Individual, MatchRun, Model, Photo
from whaleid.store.vectors import VectorCache

BATCH_MATCHES = 3  # same-batch photos kept per photo: two photos of one new animal should find each other


class Gallery:
    """The confirmed photos as an Identifier (built once per change, so a long-running process, the web app
    or a batch of adds, builds it once) and the proposals it makes."""

    def __init__(self, db: Database, models: Models, cache: VectorCache):
        self.db, self.models, self.cache = db, models, cache
        self._built: tuple[tuple, Identifier | None] | None = None  # (stamp, gallery), see `identifier`

    def identifier(self, session: Session, model: Model) -> Identifier | None:
        """An Identifier over every confirmed photo, from the vector cache plus what was confirmed since."""
        stamp = self._stamp(session, model)
        if self._built is not None and self._built[0] == stamp:
            return self._built[1]
        grown = self._grown(session, model, stamp)
        if grown is not None:
            self._built = (stamp, grown)
            return grown
        rows = confirmed(session, Photo.id, Individual.catalog_id, Individual.species, Photo.file)
        identifier = None
        if rows:
            vectors = self.cache.vectors(session, model, np.array([r[0] for r in rows], dtype=np.int64))
            record = self.models.record(model)
            identifier = Identifier(
                ExactIndex(vectors, copy=False),
                [r[1] for r in rows],
                record.scoring,
                record.threshold,
                {"preprocess": model.preprocess},
                [r[2] for r in rows],
                self.models.keypoints(model, [r[3] for r in rows]),
                record.fusion,
            )
        self._built = (self._stamp(session, model), identifier)
        return identifier

    def _grown(self, session: Session, model: Model, stamp: tuple) -> Identifier | None:
        """The gallery in memory plus the photos confirmed since, when confirmations are all that happened."""
        built = self._built
        if built is None or built[1] is None or (built[0][0], built[0][3]) != (stamp[0], stamp[3]):
            return None  # another model, or the vector cache was rebuilt
        since = session.execute(select(Decision.kind, Decision.photo_id).where(Decision.id > built[0][1])).all()
        if any(kind not in ("confirm", "new", *EDIT_KINDS) for kind, _ in since):
            return None  # an undo, merge or unsure can move photos out: rebuild from the database
        photo_ids = sorted({photo for _, photo in since} - {None})  # (renames and edits move no photo)
        query = select(Photo.id, Individual.catalog_id, Individual.species, Photo.file).join(
            Individual, Photo.individual_id == Individual.id
        )
        rows = session.execute(
            query.where(Photo.id.in_(photo_ids[:MAX_PARAMETERS]), Photo.state == "confirmed").order_by(Photo.id)
        ).all()
        old = built[1]
        if len(photo_ids) > MAX_PARAMETERS or stamp[2] != len(old) + len(rows):
            return None  # not simply appended (e.g. photos confirmed twice over, or very many)
        ids = np.array([r[0] for r in rows], np.int64)
        fresh_ids, fresh = self.cache.stored(session, model, ids) if len(rows) else (None, None)
        if fresh_ids is not None:
            fresh = fresh[np.argsort(fresh_ids)]  # rows are in photo order too
        vectors = old.index.vectors if fresh is None else np.concatenate([old.index.vectors, fresh])
        keypoints = (
            None if old.keypoints is None else old.keypoints.view(old.keypoints.names + [Path(r[3]).stem for r in rows])
        )
        return Identifier(
            ExactIndex(vectors, copy=False),
            old.gallery_ids + [r[1] for r in rows],
            old.config,
            old.threshold,
            old.metadata,
            old.gallery_species + [r[2] for r in rows],
            keypoints,
            old.fusion,
        )

    def _stamp(self, session: Session, model: Model) -> tuple:
        """What the gallery depends on: the model, the newest decision, the confirmed count, the vector cache file."""
        cache = self.cache.files(model)[0]
        return (
            model.id,
            session.scalar(select(func.max(Decision.id))),
            session.scalar(select(func.count()).where(Photo.state == "confirmed")),
            cache.stat().st_mtime_ns if cache.exists() else None,
        )

    def propose(self, session: Session, model: Model, photos: list[Photo], vectors: np.ndarray) -> None:
        """Candidates from the gallery (new_individual where the threshold says), and the nearest batch photos."""
        gallery = self.identifier(session, model)
        queries = Embeddings(
            vectors,
            pd.DataFrame({"image": [p.file for p in photos]}),
            keypoints=self.models.keypoints(model, [p.file for p in photos]),
        )
        answers = gallery.identify(queries) if gallery is not None else [None] * len(photos)
        within = vectors @ vectors.T
        np.fill_diagonal(within, -np.inf)
        for i, (photo, answer) in enumerate(zip(photos, answers)):
            candidates = (
                []
                if answer is None
                else [{"individual": a, "score": round(float(s), 6)} for a, s in zip(answer.ids, answer.scores)]
            )
            nearest = np.argsort(-within[i], kind="stable")[:BATCH_MATCHES]
            batch = [
                {"photo": photos[j].id, "score": round(float(within[i, j]), 6)}
                for j in nearest
                if np.isfinite(within[i, j])
            ]
            session.add(
                MatchRun(
                    photo_id=photo.id,
                    model_id=model.id,
                    candidates=candidates,
                    batch_matches=batch,
                    filters={"threshold": self.models.record(model).threshold},
                    created_at=now(),
                )
            )

    def reindex(
        self, model: str | os.PathLike | None = None, *, version: int | None = None, progress: Progress | None = None
    ) -> int:
        """Every photo embedded again and the model made active: a new ``model`` (registered first), an
        earlier ``version``, or the active one. Decisions stay as they are. Photos are embedded outside
        the write transaction, so review goes on meanwhile; photos added meanwhile are embedded at the end.
        The model becomes active in the transaction that stores its vectors: a reindex killed midway
        leaves the catalog on its old model, never on one without vectors."""
        if model is not None:
            with self.db.session() as session, session.begin():
                version = self.models.register(session, *model_source(Path(model))).version
        with self.db.reader() as session:
            row = self.models.active(session) if version is None else self.models.version(session, version)
            photos = session.execute(select(Photo.id, Photo.file).order_by(Photo.id)).all()
        vectors, ok = self.models.embed_stored(row, [f for _, f in photos], progress)
        with self.db.session() as session, session.begin():
            session.execute(delete(Embedding).where(Embedding.model_id == row.id))
            kept = [i for (i, _), good in zip(photos, ok) if good]
            late = session.execute(
                select(Photo.id, Photo.file).where(Photo.id > (photos[-1][0] if photos else 0))
            ).all()
            if late:
                more, more_ok = self.models.embed(row, [str(self.models.dir / "photos" / f) for _, f in late])
                kept += [i for (i, _), good in zip(late, more_ok) if good]
                vectors = np.concatenate([vectors, more]) if len(vectors) else more
            session.add_all(Embedding(photo_id=i, model_id=row.id, vector=v.tobytes()) for i, v in zip(kept, vectors))
            self.models.activate(session, row)
            session.flush()
            self.cache.drop(row)  # rebuilt from these rows
            self._built = None
            self._rematch(session, row, dict(zip(kept, vectors)))
        return len(kept)

    def _rematch(self, session: Session, model: Model, vectors: dict[int, np.ndarray]) -> None:
        """New proposals from ``model`` for the photos still pending (each encounter a batch of its own)."""
        batches: dict[int | None, list[Photo]] = {}
        for photo in session.scalars(select(Photo).where(Photo.state == "pending").order_by(Photo.id)):
            if photo.id in vectors:
                batches.setdefault(photo.encounter_id, []).append(photo)
        for photos in batches.values():
            self.propose(session, model, photos, np.stack([vectors[p.id] for p in photos]))
