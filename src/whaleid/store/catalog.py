"""The living catalog: photos come in, the model proposes, a reviewer decides, the gallery grows.

A catalog is a folder: ``catalog.json`` (which database), ``catalog.db`` (the SQLite default),
``photos/`` (content-addressed copies, named by sha256), ``models/v<N>/`` (the models that
embedded them) and ``index/`` (a cache of gallery vectors, rebuilt from the database when
missing). Every command is one transaction; photo files are written before their rows, so an
interrupted ``add`` leaves no half rows and re-running it finishes the batch.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session, aliased

from whaleid.data.catalog import CatalogError, read_catalog
from whaleid.data.images import check_image, image_suffix
from whaleid.errors import UserError
from whaleid.files import atomic_path, inside, spreadsheet_safe
from whaleid.model.checkpoint import checkpoint_files, checkpoints
from whaleid.model.embed import Embedder, Embeddings, embed_files
from whaleid.model.keypoints import KeypointFiles
from whaleid.preprocess.prepare import PreprocessConfig, prepare_paths
from whaleid.search.fusion import Fusion
from whaleid.search.identify import SIDECAR, Identifier, IdentifyConfig
from whaleid.search.index import ExactIndex
from whaleid.search.rerank import RerankConfig
from whaleid.settings import from_dict, to_dict
from whaleid.store.db import check_new, database_file, migrate, open_catalog, open_engine, reading, sqlite_url
from whaleid.store.exif import check_encounter, photo_exif
from whaleid.store.schema import (
    Decision,
    Embedding,
    Encounter,
    Individual,
    MatchRun,
    Model,
    Photo,
    Rejected,
    Setting,
)

CONFIG = "catalog.json"
PHOTO_KINDS = ("confirm", "new", "unsure")
EMBED_CHUNK = 16  # photos embedded per step of an add's progress
BATCH_MATCHES = 3  # same-batch photos kept per photo: two photos of one new animal should find each other


class ConflictError(UserError):
    """Someone else decided on this photo first."""


def now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


@dataclass
class EncounterInfo:
    date: str | None = None
    place: str | None = None
    latitude: float | None = None
    longitude: float | None = None
    observer: str | None = None
    notes: str | None = None

    def __post_init__(self) -> None:
        """Refuse what Darwin Core exports would carry wrongly (a date that is not ISO 8601, a place off the
        globe), here, so that every way in (the CLI, the web's upload form) says the same one line."""
        check_encounter(self.date, self.latitude, self.longitude)

    def given(self) -> bool:
        return any(v is not None for v in vars(self).values())


@dataclass
class AddResult:
    added: list[int] = field(default_factory=list)  # photo ids, in the order given
    duplicates: list[str] = field(default_factory=list)  # names of photos already in the catalog
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (name, reason)


@dataclass
class QueueItem:
    photo: int
    name: str
    encounter: int | None
    candidates: list[dict]
    batch_matches: list[dict]
    version: int


class CatalogStore:
    """One catalog folder and its database; the web app and the CLI both work through this."""

    def __init__(self, directory: str | os.PathLike, db: str | None = None):
        """The catalog in ``directory``, on its own database or on ``db`` (a URL) when given."""
        self.dir = Path(directory)
        if self.dir.exists() and not self.dir.is_dir():
            raise UserError(f"{self.dir} is a file, not a catalog folder: give the folder `whaleid catalog init` made")
        config_path = self.dir / CONFIG
        if not config_path.is_file():
            raise UserError(f"{self.dir} is not a whaleid catalog (no {CONFIG}): make one with `whaleid catalog init`")
        self.config = _read_config(config_path)
        self.engine = open_engine(db or self.config.get("db") or sqlite_url(self.dir))
        self.read_engine = reading(self.engine)
        open_catalog(self.engine)
        self._embedders: dict[int, Embedder] = {}
        self._gallery: tuple[tuple, Identifier | None] | None = None  # (stamp, gallery), see `gallery`

    def session(self) -> Session:
        """A session for writing, whose objects stay readable after its transaction commits (they are returned)."""
        return Session(self.engine, expire_on_commit=False)

    def reader(self) -> Session:
        """A session for reading only: on SQLite it never waits for, nor blocks, a writer."""
        return Session(self.read_engine, expire_on_commit=False)

    # ------------------------------------------------------------------ creation

    @classmethod
    def create(cls, directory: str | os.PathLike, model: str | os.PathLike, db: str | None = None) -> CatalogStore:
        """A new catalog folder with its database (SQLite in the folder unless ``db`` is a URL) and first model.

        A database that holds a catalog already is refused (two catalogs on one database would change
        each other's model), and a failed ``init`` removes what it made, so that it can simply be re-run.
        """
        directory = Path(directory)
        if directory.exists() and not directory.is_dir():
            raise UserError(f"{directory} is a file: give `whaleid catalog init` a new folder")
        if (directory / CONFIG).exists():
            raise UserError(f"{directory} is already a catalog")
        source = _model_source(Path(model))  # a bad model path fails here, before anything is written
        engine = open_engine(db or sqlite_url(directory))
        with _undone_on_failure(directory, database_file(engine)):
            try:
                directory.mkdir(parents=True, exist_ok=True)
                (directory / "photos").mkdir(exist_ok=True)
            except PermissionError as error:
                raise UserError(
                    f"cannot make {directory} ({error.strerror}): choose a folder you can write to"
                ) from None
            try:
                check_new(engine)
                migrate(engine)
            finally:
                engine.dispose()
            with atomic_path(directory / CONFIG) as tmp:
                tmp.write_text(json.dumps({"format": "whaleid.catalog/1", "db": db}, indent=2), encoding="utf-8")
            store = cls(directory, db)
            with store.session() as session, session.begin():
                first = store._register_model(session, *source)
                session.merge(Setting(key="active_model", value={"id": first.id}))
        return store

    def _register_model(
        self, session: Session, members: list[str], threshold, preprocess, reranking: dict | None = None
    ) -> Model:
        """The model's checkpoint(s) (see :func:`_model_source`) copied in; the caller makes it active once it has
        its vectors (a catalog whose active model has none cannot match)."""
        version = (session.scalar(select(Model.version).order_by(Model.version.desc()).limit(1)) or 0) + 1
        copied = []
        for i, member in enumerate(members):
            target = self.dir / "models" / f"v{version}" / str(i)
            target.mkdir(parents=True, exist_ok=True)
            for file in checkpoint_files(member):
                with atomic_path(target / file.name) as tmp:
                    shutil.copyfile(file, tmp)
            copied.append(f"models/v{version}/{i}/{checkpoint_files(member)[-1].name}")
        embedder = Embedder.from_checkpoint([self.dir / c for c in copied])
        preprocess = preprocess if preprocess is not None else embedder.preprocess
        digest = hashlib.sha256(json.dumps(sorted(_weights(embedder))).encode()).hexdigest()[:16]
        row = Model(
            version=version,
            file_hash=digest,
            source={"checkpoints": copied},
            created_at=now(),
            threshold=None if threshold is None and not reranking else {"value": threshold, **(reranking or {})},
            preprocess=preprocess,
        )
        session.add(row)
        session.flush()
        embedder.preprocess = preprocess
        self._embedders[row.id] = embedder  # built once, for this model's first embeddings too
        return row

    # ------------------------------------------------------------------ models and vectors

    def active_model(self, session: Session) -> Model:
        setting = session.get(Setting, "active_model")
        if setting is None:
            raise UserError(f"{self.dir} has no model: run `whaleid catalog reindex {self.dir} --model MODEL`")
        return session.get(Model, setting.value["id"])

    def embedder(self, model: Model) -> Embedder:
        if model.id not in self._embedders:
            embedder = Embedder.from_checkpoint([self.dir / p for p in model.source["checkpoints"]], batch_size=32)
            embedder.preprocess = model.preprocess
            self._embedders[model.id] = embedder
        return self._embedders[model.id]

    def embed(self, model: Model, paths: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Unit vectors of photo files prepared as the model's gallery was, and which photos gave one
        (and, when the model re-ranks, their keypoints stored under the photos' content names)."""
        files, prepared = prepare_paths(paths, PreprocessConfig.from_dict(model.preprocess), self.dir / "cache")
        embeddings, ok = embed_files(self.embedder(model), files, progress=len(files) > 50)
        opened = prepared.copy()
        opened[prepared] = ok
        keypoints = self._keypoints(model)
        if keypoints is not None:
            names = [Path(p).stem for p, good in zip(paths, opened) if good]
            keypoints.write(names, [f for f, good in zip(files, ok) if good])
        return embeddings.vectors, opened

    def _keypoints(self, model: Model, files: Sequence[str] = ()) -> KeypointFiles | None:
        """The stored keypoints of these photo files (by content name), when the model re-ranks."""
        rerank = _reranking(model)[0]
        if rerank is None:
            return None
        return KeypointFiles(
            self.dir / "index" / f"keypoints{model.id}", rerank.keypoints, [Path(f).stem for f in files]
        )

    def gallery(self, session: Session, model: Model) -> Identifier | None:
        """An Identifier over every confirmed photo, from the vector cache plus what was confirmed since.

        Kept in memory while nothing changed it (no decision, no new vectors), so a long-running
        process (the web app, a batch of adds) builds it once.
        """
        stamp = self._stamp(session, model)
        if self._gallery is not None and self._gallery[0] == stamp:
            return self._gallery[1]
        grown = self._grown(session, model, stamp)
        if grown is not None:
            self._gallery = (stamp, grown)
            return grown
        rows = confirmed(session, Photo.id, Individual.catalog_id, Individual.species, Photo.file)
        identifier = None
        if rows:
            vectors = self._vectors(session, model, np.array([r[0] for r in rows], dtype=np.int64))
            threshold = (model.threshold or {}).get("value")
            rerank, fusion = _reranking(model)
            identifier = Identifier(
                ExactIndex(vectors, copy=False),
                [r[1] for r in rows],
                IdentifyConfig(rerank=rerank),
                threshold,
                {"preprocess": model.preprocess},
                [r[2] for r in rows],
                self._keypoints(model, [r[3] for r in rows]),
                fusion,
            )
        self._gallery = (self._stamp(session, model), identifier)
        return identifier

    def _grown(self, session: Session, model: Model, stamp: tuple) -> Identifier | None:
        """The gallery in memory plus the photos confirmed since, when confirmations are all that happened."""
        model_and_cache = (stamp[0], stamp[3])
        if (
            self._gallery is None
            or self._gallery[1] is None
            or (self._gallery[0][0], self._gallery[0][3]) != model_and_cache
        ):
            return None  # another model, or the vector cache was rebuilt
        since = session.execute(select(Decision.kind, Decision.photo_id).where(Decision.id > self._gallery[0][1])).all()
        if any(kind not in ("confirm", "new") for kind, _ in since):
            return None  # an undo, merge or unsure can move photos out: rebuild from the database
        photo_ids = sorted({photo for _, photo in since})
        query = select(Photo.id, Individual.catalog_id, Individual.species, Photo.file).join(
            Individual, Photo.individual_id == Individual.id
        )
        rows = session.execute(
            query.where(Photo.id.in_(photo_ids[:MAX_PARAMETERS]), Photo.state == "confirmed").order_by(Photo.id)
        ).all()
        if len(photo_ids) > MAX_PARAMETERS or stamp[2] != len(self._gallery[1]) + len(rows):
            return None  # not simply appended (e.g. photos confirmed twice over, or very many)
        old = self._gallery[1]
        ids = np.array([r[0] for r in rows], np.int64)
        fresh_ids, fresh = self._stored_vectors(session, model, ids) if len(rows) else (None, None)
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
        cache = self.dir / "index" / f"model{model.id}.npz"
        return (
            model.id,
            session.scalar(select(func.max(Decision.id))),
            session.scalar(select(func.count()).where(Photo.state == "confirmed")),
            cache.stat().st_mtime_ns if cache.exists() else None,
        )

    def _vectors(self, session: Session, model: Model, photo_ids: np.ndarray) -> np.ndarray:
        """Vectors of these photos: the cache files, topped up from the database when they lack some.

        The cache is a large base file and a small delta file: a top-up rewrites only the delta,
        until it holds a tenth of the base, when both are merged into a new base.
        """
        base, delta = (self.dir / "index" / f"model{model.id}{suffix}.npz" for suffix in ("", ".delta"))
        ids, vectors = _load_vectors(base)
        delta_ids, delta_vectors = _load_vectors(delta) if ids.size else (ids, vectors)
        ids, vectors = _joined((ids, vectors), (delta_ids, delta_vectors))
        missing = np.setdiff1d(photo_ids, ids)
        if missing.size:
            fresh = self._stored_vectors(session, model, missing)
            ids, vectors = _joined((ids, vectors), fresh)
            delta_ids, delta_vectors = _joined((delta_ids, delta_vectors), fresh)
            if base.is_file() and len(delta_ids) * 10 < len(ids):
                _save_vectors(delta, delta_ids, delta_vectors)
            else:
                _save_vectors(base, ids, vectors)
                delta.unlink(missing_ok=True)
        position = {int(p): i for i, p in enumerate(ids)}
        return vectors[[position[int(p)] for p in photo_ids]]

    def _stored_vectors(self, session: Session, model: Model, photo_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows = [
            row
            for chunk in _chunks(photo_ids.tolist())
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

    # ------------------------------------------------------------------ photos in

    def add(
        self,
        paths: Sequence[str | os.PathLike],
        encounter: EncounterInfo | int | None = None,
        *,
        names: Sequence[str] | None = None,
        progress: Callable[[str, int, int], None] | None = None,
    ) -> AddResult:
        """Copy photos in, embed them, match them against the catalog and each other, queue them for review.

        ``encounter`` is a new encounter's details or an existing encounter's id; ``names`` are the
        photos' original names when the files were staged under other names (web uploads); ``progress``
        hears ``(stage, done, total)``. Files are checked, copied and embedded before the write
        transaction, which then only inserts rows and matches: reviewers' decisions never wait
        behind an embedding.
        """
        result = AddResult()
        paths = [Path(p) for p in paths]
        names = [p.name for p in paths] if names is None else list(names)
        readable = self._readable(paths, names, result, progress)
        with self.reader() as session:
            model = self.active_model(session)
            fresh = self._copy_in(session, readable, result)
        vectors, fresh = self._embed_fresh(model, fresh, result, progress)
        if progress:  # (never inside the transaction: a listener may write progress to the same database)
            progress("matching", 0, len(fresh))
        with self.session() as session, session.begin():
            if self.active_model(session).id != model.id:
                raise ConflictError("the catalog's model changed while these photos were embedded: add them again")
            session.add_all(Rejected(original_name=n, reason=r, added_at=now()) for n, r in result.rejected)
            known = self._known(session, [f["sha256"] for f in fresh])  # another add may have taken some meanwhile
            result.duplicates += [f["original_name"] for f in fresh if f["sha256"] in known]
            vectors = vectors[[f["sha256"] not in known for f in fresh]] if len(fresh) else vectors
            fresh = [f for f in fresh if f["sha256"] not in known]
            if not fresh:
                return result
            encounter_id = self._encounter(session, encounter)
            photos = [Photo(**f, encounter_id=encounter_id, state="pending", added_at=now(), version=0) for f in fresh]
            session.add_all(photos)
            session.flush()
            session.add_all(
                Embedding(photo_id=p.id, model_id=model.id, vector=v.tobytes()) for p, v in zip(photos, vectors)
            )
            self._match(session, model, photos, vectors)
            result.added = [p.id for p in photos]
        return result

    def _encounter(self, session: Session, encounter: EncounterInfo | int | None) -> int | None:
        if isinstance(encounter, int):
            if session.get(Encounter, encounter) is None:
                raise UserError(f"no encounter {encounter} in the catalog")
            return encounter
        if encounter is None or not encounter.given():
            return None
        row = Encounter(**vars(encounter), created_at=now())
        session.add(row)
        session.flush()
        return row.id

    def _embed_fresh(
        self, model: Model, fresh: list[dict], result: AddResult, progress
    ) -> tuple[np.ndarray, list[dict]]:
        """Vectors of the copied photos, a chunk at a time (so that progress moves); the unembeddable recorded."""
        parts, kept = [], []
        for start in range(0, len(fresh), EMBED_CHUNK):
            if progress:
                progress("embedding", start, len(fresh))
            chunk = fresh[start : start + EMBED_CHUNK]
            vectors, ok = self.embed(model, [str(self.dir / "photos" / f["file"]) for f in chunk])
            parts.append(vectors)
            for f, good in zip(chunk, ok):
                if good:
                    kept.append(f)
                else:
                    result.rejected.append((f["original_name"], "could not be prepared or embedded"))
        if progress:
            progress("embedding", len(fresh), len(fresh))
        return (np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)), kept

    def _known(self, session: Session, digests: list[str]) -> set[str]:
        return {
            s
            for chunk in _chunks(digests)
            for s in session.scalars(select(Photo.sha256).where(Photo.sha256.in_(chunk)))
        }

    def _readable(
        self, paths: list[Path], names: list[str], result: AddResult, progress=None
    ) -> list[tuple[Path, str, str]]:
        """(path, name, sha256) of the photos that can be read; the others recorded in ``result`` with their reason."""
        readable = []
        for i, (path, name) in enumerate(zip(paths, names)):
            if progress and i % EMBED_CHUNK == 0:
                progress("checking", i, len(paths))
            reason = check_image(path)
            if reason is not None:
                result.rejected.append((name, reason))
                continue
            readable.append((path, name, hashlib.sha256(path.read_bytes()).hexdigest()))
        return readable

    def _copy_in(self, session: Session, readable: list[tuple[Path, str, str]], result: AddResult) -> list[dict]:
        """Readable photos not yet in the catalog, copied (atomically) under photos/; the others recorded in
        ``result`` as duplicates.

        A copy is named by its content (sha256) and its detected format, never by anything the user gave.
        """
        fresh, seen = [], set()
        crop_status = "as model" if self._has_crop(session) else "none"
        known = self._known(session, [digest for _, _, digest in readable])
        for path, original, digest in readable:
            if digest in seen or digest in known:
                result.duplicates.append(original)
                continue
            seen.add(digest)
            data = path.read_bytes()
            name = digest + image_suffix(path)
            target = self.dir / "photos" / name
            if not target.exists():  # a re-run after an interruption finds the file already there
                with atomic_path(target) as tmp:
                    tmp.write_bytes(data)
            taken_at, latitude, longitude = photo_exif(path)
            fresh.append(
                {
                    "sha256": digest,
                    "file": name,
                    "original_name": original,
                    "size": len(data),
                    "taken_at": taken_at,
                    "latitude": latitude,
                    "longitude": longitude,
                    "crop_box": None,
                    "crop_status": crop_status,
                }
            )
        return fresh

    def _has_crop(self, session: Session) -> bool:
        preprocess = PreprocessConfig.from_dict(self.active_model(session).preprocess)
        return preprocess is not None and preprocess.cache.crop != "none"

    def _match(self, session: Session, model: Model, photos: list[Photo], vectors: np.ndarray) -> None:
        """Candidates from the gallery (new_individual where the threshold says), and the nearest batch photos."""
        gallery = self.gallery(session, model)
        queries = Embeddings(
            vectors,
            pd.DataFrame({"image": [p.file for p in photos]}),
            keypoints=self._keypoints(model, [p.file for p in photos]),
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
                    filters={"threshold": (model.threshold or {}).get("value")},
                    created_at=now(),
                )
            )

    def import_catalog(
        self, csv: str | os.PathLike, images: str | os.PathLike | None = None, reviewer: str = "import"
    ) -> AddResult:
        """An existing labelled catalog (Happywhale CSV + images): every photo added and confirmed as labelled."""
        catalog = read_catalog(csv, images, progress=True)
        result = AddResult(rejected=[(r.image, r.reason) for r in catalog.problems.itertuples()])
        names = catalog.table["image"].tolist()  # unique in a catalog, unlike the file names of two folders
        readable = self._readable([Path(p) for p in catalog.paths], names, result)
        labels = dict(zip(names, catalog.table["individual_id"]))
        with self.session() as session, session.begin():
            self._refuse_conflicts(session, csv, readable, labels)
            model = self.active_model(session)
            fresh = self._copy_in(session, readable, result)
            session.add_all(Rejected(original_name=n, reason=r, added_at=now()) for n, r in result.rejected)
            by_name = dict(zip(names, catalog.table.itertuples()))
            vectors, ok = self.embed(model, [str(self.dir / "photos" / f["file"]) for f in fresh])
            individuals: dict[str, Individual] = {}
            kept = [f for f, good in zip(fresh, ok) if good]
            for f, vector in zip(kept, vectors):
                row = by_name[f["original_name"]]
                individual = individuals.get(row.individual_id) or self._individual(
                    session, row.individual_id, row.species, None, reviewer
                )
                individuals[row.individual_id] = individual
                photo = Photo(**f, state="confirmed", individual_id=individual.id, added_at=now(), version=1)
                session.add(photo)
                session.flush()
                session.add(Embedding(photo_id=photo.id, model_id=model.id, vector=vector.tobytes()))
                session.add(
                    Decision(
                        kind="confirm",
                        photo_id=photo.id,
                        individual_id=individual.id,
                        reviewer=reviewer,
                        created_at=now(),
                    )
                )
                result.added.append(photo.id)
        return result

    def _refuse_conflicts(
        self, session: Session, csv: str | os.PathLike, readable: list[tuple[Path, str, str]], labels: dict[str, str]
    ) -> None:
        """One photo (the same bytes) under two individuals, in two rows or in a row and the catalog, is
        refused naming both, as two rows of one image name are: keeping either label would be a guess."""
        rows: dict[str, list[str]] = {}
        for _, name, digest in readable:
            rows.setdefault(digest, []).append(name)
        clashes = [
            " and ".join(f"{n} ({labels[n]})" for n in names)
            for names in rows.values()
            if len({labels[n] for n in names}) > 1
        ]
        query = select(Photo.sha256, Photo.file, Individual).join(Individual, Photo.individual_id == Individual.id)
        for digest, file, individual in [
            row
            for chunk in _chunks(list(rows))
            for row in session.execute(query.where(Photo.sha256.in_(chunk), Photo.state == "confirmed")).all()
        ]:
            known = self.resolve(session, individual).catalog_id
            clashes += [
                f"{n} ({labels[n]}) and the catalog's photos/{file} ({known})"
                for n in rows[digest]
                if self._resolved_id(session, labels[n]) != known
            ]
        if clashes:
            raise CatalogError(
                f"{csv}: {len(clashes)} photo(s) labelled as two individuals (the same bytes): "
                f"{'; '.join(clashes[:5])}{' ...' if len(clashes) > 5 else ''}: keep one label per photo"
            )

    def _resolved_id(self, session: Session, catalog_id: str) -> str:
        """The id an individual's id stands for now (merges followed); an id not in the catalog stands for itself."""
        found = session.scalar(select(Individual).where(Individual.catalog_id == catalog_id))
        return catalog_id if found is None else self.resolve(session, found).catalog_id

    def _individual(self, session: Session, catalog_id: str, species: str, name: str | None, reviewer: str):
        """The individual with this catalog id, made when it does not exist yet."""
        found = session.scalar(select(Individual).where(Individual.catalog_id == catalog_id))
        if found is None:
            found = Individual(catalog_id=catalog_id, species=species, name=name, created_by=reviewer, created_at=now())
            session.add(found)
            session.flush()
        return found

    # ------------------------------------------------------------------ review

    def queue(self, limit: int | None = 50) -> list[QueueItem]:
        """Photos awaiting a decision, oldest first, with what the model proposed for each."""
        with self.reader() as session:
            query = select(Photo).where(Photo.state == "pending").order_by(Photo.id)
            photos = session.scalars(query.limit(limit) if limit else query).all()
            runs = {
                r.photo_id: r
                for r in session.scalars(
                    select(MatchRun)
                    .where(MatchRun.photo_id.in_([p.id for p in photos[:MAX_PARAMETERS]]))
                    .order_by(MatchRun.id)
                )
            }
            return [
                QueueItem(
                    p.id,
                    p.original_name,
                    p.encounter_id,
                    runs[p.id].candidates if p.id in runs else [],
                    runs[p.id].batch_matches if p.id in runs else [],
                    p.version,
                )
                for p in photos
            ]

    def photo(self, session: Session, ref: str | int) -> Photo:
        """A photo by id, or by a unique prefix (8+ characters) of its sha256."""
        if isinstance(ref, int) or str(ref).isdigit():
            found = session.get(Photo, int(ref))
        else:
            text = str(ref).lower()
            if len(text) < 8:
                raise UserError(f"photo {ref!r}: give its number or at least 8 characters of its sha256")
            matches = session.scalars(select(Photo).where(Photo.sha256.startswith(text)).limit(2)).all()
            if len(matches) > 1:
                raise UserError(f"photo {ref!r} is ambiguous: give more characters of its sha256")
            found = matches[0] if matches else None
        if found is None:
            raise UserError(f"no photo {ref!r} in {self.dir}")
        return found

    def decide(
        self,
        photo_ref: str | int,
        *,
        confirm: str | None = None,
        new: bool = False,
        unsure: bool = False,
        name: str | None = None,
        species: str | None = None,
        reviewer: str = "reviewer",
        expected_version: int | None = None,
    ) -> Decision:
        """One decision on a pending photo: this is individual ``confirm``, a new individual, or can't tell."""
        if sum([confirm is not None, new, unsure]) != 1:
            raise UserError("decide with exactly one of --confirm ID, --new or --unsure")
        with self.session() as session, session.begin():
            photo = self.photo(session, photo_ref)
            version = photo.version if expected_version is None else expected_version
            if photo.state != "pending" or photo.version != version:
                raise ConflictError(f"photo {photo.id} was already decided ({photo.state}); undo that decision first")
            individual = None
            if confirm is not None:
                individual = session.scalar(select(Individual).where(Individual.catalog_id == confirm))
                if individual is None:
                    raise UserError(f"no individual {confirm!r} in the catalog: check the id, or decide --new")
                individual = self.resolve(session, individual)
            elif new:
                individual = self._new_individual(
                    session, name, species or self._species_hint(session, photo), reviewer
                )
            kind = "confirm" if confirm is not None else "new" if new else "unsure"
            state = "unsure" if unsure else "confirmed"
            changed = session.execute(
                update(Photo)
                .where(Photo.id == photo.id, Photo.version == version)
                .values(state=state, individual_id=individual.id if individual else None, version=version + 1)
            ).rowcount
            if changed != 1:
                raise ConflictError(f"photo {photo.id} was decided by someone else meanwhile: reload and look again")
            run = session.scalar(select(MatchRun.id).where(MatchRun.photo_id == photo.id).order_by(MatchRun.id.desc()))
            event = Decision(
                kind=kind,
                photo_id=photo.id,
                individual_id=individual.id if individual else None,
                reviewer=reviewer,
                created_at=now(),
                match_run_id=run,
            )
            session.add(event)
        return event

    def _species_hint(self, session: Session, photo: Photo) -> str:
        """A new individual's species: that of the photo's best known candidate, else unknown."""
        run = session.scalar(select(MatchRun).where(MatchRun.photo_id == photo.id).order_by(MatchRun.id.desc()))
        for candidate in run.candidates if run else []:
            found = session.scalar(select(Individual).where(Individual.catalog_id == candidate["individual"]))
            if found is not None:
                return found.species
        return "unknown"

    def _new_individual(self, session: Session, name: str | None, species: str, reviewer: str) -> Individual:
        count = session.scalar(select(Individual.id).order_by(Individual.id.desc()).limit(1)) or 0
        catalog_id = f"WID-{count + 1:05d}"
        while session.scalar(select(Individual.id).where(Individual.catalog_id == catalog_id)) is not None:
            count += 1
            catalog_id = f"WID-{count + 1:05d}"
        return self._individual(session, catalog_id, species, name, reviewer)

    def resolve(self, session: Session, individual: Individual) -> Individual:
        """The individual an id now stands for, following merges."""
        seen = set()
        while individual.merged_into_id is not None and individual.id not in seen:
            seen.add(individual.id)
            individual = session.get(Individual, individual.merged_into_id)
        return individual

    def merge(self, source: str, target: str, reviewer: str = "reviewer") -> Decision:
        """Individual ``source`` is ``target``: its photos join target's, its id stays as an alias."""
        with self.session() as session, session.begin():
            a, b = (self._by_catalog_id(session, x) for x in (source, target))
            a, b = self.resolve(session, a), self.resolve(session, b)
            if a.id == b.id:
                raise UserError(f"{source!r} and {target!r} are already one individual: nothing to merge")
            a.merged_into_id = b.id
            session.execute(update(Photo).where(Photo.individual_id == a.id).values(individual_id=b.id))
            event = Decision(
                kind="merge", individual_id=a.id, other_individual_id=b.id, reviewer=reviewer, created_at=now()
            )
            session.add(event)
        return event

    def _by_catalog_id(self, session: Session, catalog_id: str) -> Individual:
        found = session.scalar(select(Individual).where(Individual.catalog_id == catalog_id))
        if found is None:
            raise UserError(f"no individual {catalog_id!r} in the catalog")
        return found

    def undo(self, event_id: int, reviewer: str = "reviewer") -> Decision:
        """An event that cancels an earlier one; the photos it touched are re-derived from the decisions."""
        with self.session() as session, session.begin():
            event = session.get(Decision, event_id)
            if event is None:
                raise UserError(f"no decision {event_id} in the catalog")
            if event.kind == "undo":
                raise UserError(f"decision {event_id} is itself an undo: decide again instead")
            if session.scalar(select(Decision.id).where(Decision.undoes_id == event_id)) is not None:
                raise UserError(f"decision {event_id} was already undone")
            undo = Decision(kind="undo", undoes_id=event.id, reviewer=reviewer, created_at=now())
            session.add(undo)
            session.flush()
            if event.kind == "merge":
                session.get(Individual, event.individual_id).merged_into_id = None
                target = self.resolve(session, session.get(Individual, event.other_individual_id))
                affected = session.scalars(select(Photo.id).where(Photo.individual_id == target.id)).all()
            else:
                affected = [event.photo_id]
            for photo_id in set(affected):
                self._reproject(session, session.get(Photo, photo_id))
        return undo

    def _reproject(self, session: Session, photo: Photo) -> None:
        """A photo's state and individual from its latest decision that was not undone."""
        undone = select(Decision.undoes_id).where(Decision.undoes_id.is_not(None))
        latest = session.scalar(
            select(Decision)
            .where(Decision.photo_id == photo.id, Decision.kind.in_(PHOTO_KINDS), Decision.id.not_in(undone))
            .order_by(Decision.id.desc())
            .limit(1)
        )
        if latest is None:
            photo.state, photo.individual_id = "pending", None
        elif latest.kind == "unsure":
            photo.state, photo.individual_id = "unsure", None
        else:
            photo.state = "confirmed"
            photo.individual_id = self.resolve(session, session.get(Individual, latest.individual_id)).id
        photo.version += 1

    # ------------------------------------------------------------------ models, exports, numbers

    def reindex(
        self,
        model: str | os.PathLike | None = None,
        *,
        version: int | None = None,
        progress: Callable[[str, int, int], None] | None = None,
    ) -> int:
        """Every photo embedded again and the model made active: a new ``model`` (registered first), an
        earlier ``version``, or the active one. Decisions stay as they are. Photos are embedded outside
        the write transaction, so review goes on meanwhile; photos added meanwhile are embedded at the end.
        The model becomes active in the transaction that stores its vectors: a reindex killed midway
        leaves the catalog on its old model, never on one without vectors."""
        if model is not None:
            with self.session() as session, session.begin():
                version = self._register_model(session, *_model_source(Path(model))).version
        with self.reader() as session:
            row = self.active_model(session) if version is None else self._version(session, version)
            photos = session.execute(select(Photo.id, Photo.file).order_by(Photo.id)).all()
        vectors, ok = self._embed_fresh(
            row, [{"file": f, "id": i, "original_name": f} for i, f in photos], AddResult(), progress
        )
        with self.session() as session, session.begin():
            session.execute(delete(Embedding).where(Embedding.model_id == row.id))
            kept = [i for (i, _), good in zip(photos, ok) if good]
            late = session.execute(
                select(Photo.id, Photo.file).where(Photo.id > (photos[-1][0] if photos else 0))
            ).all()
            if late:
                more, more_ok = self.embed(row, [str(self.dir / "photos" / f) for _, f in late])
                kept += [i for (i, _), good in zip(late, more_ok) if good]
                vectors = np.concatenate([vectors, more]) if len(vectors) else more
            session.add_all(Embedding(photo_id=i, model_id=row.id, vector=v.tobytes()) for i, v in zip(kept, vectors))
            session.merge(Setting(key="active_model", value={"id": row.id}))
            session.flush()
            for suffix in ("", ".delta"):  # the vector cache of this model, rebuilt from these rows
                (self.dir / "index" / f"model{row.id}{suffix}.npz").unlink(missing_ok=True)
            self._gallery = None
            self._rematch(session, row, dict(zip(kept, vectors)))
        return len(kept)

    def _rematch(self, session: Session, model: Model, vectors: dict[int, np.ndarray]) -> None:
        """New proposals from ``model`` for the photos still pending (each encounter a batch of its own)."""
        batches: dict[int | None, list[Photo]] = {}
        for photo in session.scalars(select(Photo).where(Photo.state == "pending").order_by(Photo.id)):
            if photo.id in vectors:
                batches.setdefault(photo.encounter_id, []).append(photo)
        for photos in batches.values():
            self._match(session, model, photos, np.stack([vectors[p.id] for p in photos]))

    def _version(self, session: Session, version: int) -> Model:
        found = session.scalar(select(Model).where(Model.version == version))
        if found is None:
            raise UserError(f"no model v{version} in {self.dir}")
        return found

    def models(self) -> list[dict]:
        """Every model the catalog has had, oldest first, with which one is active."""
        with self.reader() as session:
            active = self.active_model(session).id
            return [
                {
                    "version": m.version,
                    "active": m.id == active,
                    "checkpoints": m.source.get("checkpoints", []),
                    "threshold": (m.threshold or {}).get("value"),
                    "created_at": m.created_at.isoformat(timespec="seconds"),
                }
                for m in session.scalars(select(Model).order_by(Model.version))
            ]

    def table(self, kind: str) -> pd.DataFrame:
        """``happywhale`` (the grown catalog, to train the next model on), ``decisions`` (the event log) or
        ``dwc`` (Darwin Core occurrences), with no text cell a spreadsheet would run as a formula."""
        exporters = {"happywhale": export_happywhale, "decisions": export_decisions, "dwc": export_dwc}
        if kind not in exporters:
            raise UserError(f"unknown export format {kind!r}; valid: {', '.join(exporters)}")
        with self.reader() as session:
            return spreadsheet_safe(exporters[kind](session))  # ids, names and notes people typed

    def export(self, kind: str, path: str | os.PathLike, *, force: bool = False) -> int:
        """One of the :meth:`table` exports written as CSV; returns the rows written.

        Never inside the catalog folder nor over its database; a file that is there already is replaced
        only when it is an earlier export of this kind (its header says so), or with ``force``.
        """
        path = Path(path)
        table = self.table(kind)
        database = database_file(self.engine)
        ours = [database.with_name(database.name + s) for s in ("", "-wal", "-shm")] if database else []
        if inside(path, self.dir) or any(inside(path, f) for f in ours):
            raise UserError(f"{path} is in the catalog {self.dir}: write exports outside the catalog folder")
        if path.is_dir():
            raise UserError(f"{path} is a folder: give --out a file name")
        if path.exists() and not force and _first_line(path) != ",".join(table.columns):
            raise UserError(f"{path} exists and is not a {kind} export: choose another --out, or add --force")
        try:
            with atomic_path(path) as tmp:
                table.to_csv(tmp, index=False)
        except PermissionError as error:
            raise UserError(f"cannot write {path} ({error.strerror}): choose a folder you can write to") from None
        return len(table)

    def model_input(self, file: str) -> Path:
        """A stored photo as the active model sees it: its crop from the preprocessing cache, or itself."""
        with self.reader() as session:
            model = self.active_model(session)
        photo = self.dir / "photos" / file
        files, ok = prepare_paths([str(photo)], PreprocessConfig.from_dict(model.preprocess), self.dir / "cache")
        return Path(files[0]) if ok[0] else photo

    def stats(self) -> dict:
        """Photos by state, individuals, rejected photos, decisions per reviewer, new individuals per encounter."""
        with self.reader() as session:
            states = dict(session.execute(select(Photo.state, func.count()).group_by(Photo.state)).all())
            individuals = session.scalar(select(func.count()).where(Individual.merged_into_id.is_(None)))
            reviewers = dict(session.execute(select(Decision.reviewer, func.count()).group_by(Decision.reviewer)).all())
            discovered = session.execute(
                select(Photo.encounter_id, func.count())
                .join(Decision, Decision.photo_id == Photo.id)
                .where(Decision.kind == "new")
                .group_by(Photo.encounter_id)
                .order_by(Photo.encounter_id)
            ).all()
            return {
                "photos": sum(states.values()),
                "confirmed": states.get("confirmed", 0),
                "pending": states.get("pending", 0),
                "unsure": states.get("unsure", 0),
                "individuals": individuals,
                "rejected": session.scalar(select(func.count()).select_from(Rejected)),
                "decisions_per_reviewer": reviewers,
                "new_individuals_per_encounter": {str(e): n for e, n in discovered},
            }


def _first_line(path: Path) -> str:
    """The first line of a file, as an export's header would be ("" when it is not text)."""
    with open(path, "rb") as f:
        head = f.readline(4096)
    return head.decode("utf-8", "replace").rstrip("\r\n")


def _read_config(path: Path) -> dict:
    """``catalog.json``, or one line saying it is damaged and what it should hold."""
    fix = 'restore it, or write {"format": "whaleid.catalog/1", "db": null} in it for a catalog on its own catalog.db'
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"{path} is damaged (not UTF-8 text): {fix}") from None
    except json.JSONDecodeError as error:
        raise UserError(f"{path} is damaged (not JSON: {error.msg}, line {error.lineno}): {fix}") from None
    except OSError as error:
        raise UserError(f"cannot read {path}: {error.strerror or error}") from None
    if not isinstance(config, dict) or not isinstance(config.get("db"), str | None):
        raise UserError(f"{path} is damaged (not a catalog's settings): {fix}")
    return config


@contextlib.contextmanager
def _undone_on_failure(directory: Path, database: Path | None) -> Iterator[None]:
    """Remove what a failed ``init`` made (folders, its SQLite files), never what was there before it."""
    top = directory.absolute()
    while not top.parent.exists():  # the first folder `init` will make, when it makes the catalog's folder
        top = top.parent
    made = [top] if not top.exists() else [directory / n for n in ("photos", "models", "index", "cache", CONFIG)]
    if database is not None:
        made += [database.with_name(database.name + suffix) for suffix in ("", "-wal", "-shm", "-journal")]
    made = [path for path in made if not path.exists()]
    try:
        yield
    except BaseException:
        for path in made:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
        raise


def _load_vectors(path: Path) -> tuple[np.ndarray, np.ndarray]:
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


def _save_vectors(path: Path, ids: np.ndarray, vectors: np.ndarray) -> None:
    path.parent.mkdir(exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, ids=ids, vectors=vectors)


MAX_PARAMETERS = 10_000  # bound parameters per query: SQLite allows 32,766 by default, psycopg 65,535


def _chunks(values: list) -> list[list]:
    return [values[i : i + MAX_PARAMETERS] for i in range(0, len(values), MAX_PARAMETERS)]


def _model_source(path: Path) -> tuple[list[str], float | dict | None, dict | None, dict | None]:
    """A model's checkpoint files, threshold and preprocessing: from a saved Identifier, a run folder or a model.json."""
    if (path / SIDECAR).is_file():
        identifier = Identifier.load(path)
        members = _members(identifier.metadata.get("source", {}))
        reranking = None
        if identifier.config.rerank is not None and identifier.fusion is not None:  # its second stage comes along
            reranking = {"rerank": to_dict(identifier.config.rerank), "fusion": identifier.fusion.to_dict()}
        return members, identifier.threshold, identifier.metadata.get("preprocess"), reranking
    return [str(p) for p in checkpoints(path)], None, None, None


def _reranking(model: Model) -> tuple[RerankConfig | None, Fusion | None]:
    """The re-ranking stage a model came with from its saved Identifier (kept in its threshold settings)."""
    settings = model.threshold or {}
    if not settings.get("rerank"):
        return None, None
    return from_dict(RerankConfig, settings["rerank"], "re-ranking"), Fusion.from_dict(settings["fusion"])


def _members(source: dict) -> list[str]:
    if "checkpoint" in source:
        return [source["checkpoint"]]
    if "checkpoints" in source:
        return list(source["checkpoints"])
    raise UserError("a catalog needs a trained model (model.json, a run folder or a saved Identifier)")


def _weights(embedder) -> list[str]:
    members = getattr(embedder, "members", [embedder])
    return [m.weights for m in members]


__all__ = ["AddResult", "CatalogStore", "ConflictError", "EncounterInfo", "QueueItem"]


def confirmed(session: Session, *columns) -> list:
    """These columns of every confirmed photo and its individual, in the order photos came in."""
    query = select(*columns).join(Individual, Photo.individual_id == Individual.id).where(Photo.state == "confirmed")
    return session.execute(query.order_by(Photo.id)).all()


def export_happywhale(session: Session) -> pd.DataFrame:
    """image (under photos/), species, individual_id of every confirmed photo: `whaleid train` reads it as is."""
    rows = confirmed(session, Photo.file, Individual.species, Individual.catalog_id)
    return pd.DataFrame(rows, columns=["image", "species", "individual_id"])


def export_decisions(session: Session) -> pd.DataFrame:
    first, second = aliased(Individual), aliased(Individual)
    rows = session.execute(
        select(
            Decision.id,
            Decision.kind,
            Photo.sha256,
            first.catalog_id,
            second.catalog_id,
            Decision.undoes_id,
            Decision.reviewer,
            Decision.created_at,
        )
        .outerjoin(Photo, Decision.photo_id == Photo.id)
        .outerjoin(first, Decision.individual_id == first.id)
        .outerjoin(second, Decision.other_individual_id == second.id)
        .order_by(Decision.id)
    ).all()
    columns = ["event", "kind", "photo_sha256", "individual", "merged_into", "undoes", "reviewer", "time"]
    return pd.DataFrame(rows, columns=columns)


def export_dwc(session: Session) -> pd.DataFrame:
    """Darwin Core occurrences: one per confirmed photo, identified by the reviewer of its standing decision."""
    undone = select(Decision.undoes_id).where(Decision.undoes_id.is_not(None))
    standing = (
        select(Decision.photo_id, func.max(Decision.id).label("event"))
        .where(Decision.kind.in_(("confirm", "new")), Decision.id.not_in(undone))
        .group_by(Decision.photo_id)
        .subquery()
    )
    rows = session.execute(
        select(
            Photo.sha256,
            Photo.encounter_id,
            Individual.catalog_id,
            Encounter.date,
            Photo.taken_at,
            Photo.latitude,
            Photo.longitude,
            Encounter.latitude,
            Encounter.longitude,
            Decision.reviewer,
            Decision.created_at,
            Photo.file,
        )
        .join(Individual, Photo.individual_id == Individual.id)
        .join(standing, standing.c.photo_id == Photo.id)
        .join(Decision, Decision.id == standing.c.event)
        .outerjoin(Encounter, Photo.encounter_id == Encounter.id)
        .where(Photo.state == "confirmed")
        .order_by(Photo.id)
    ).all()
    table = pd.DataFrame(
        [
            {
                "occurrenceID": r[0],
                "eventID": "" if r[1] is None else f"encounter-{r[1]}",
                "organismID": r[2],
                "eventDate": r[3] or r[4] or "",
                "decimalLatitude": r[5] if r[5] is not None else r[7],
                "decimalLongitude": r[6] if r[6] is not None else r[8],
                "identifiedBy": r[9],
                "dateIdentified": r[10].date().isoformat(),
                "associatedMedia": f"photos/{r[11]}",
            }
            for r in rows
        ],
        columns=DWC_COLUMNS,
    )
    return table


DWC_COLUMNS = [
    "occurrenceID",
    "eventID",
    "organismID",
    "eventDate",
    "decimalLatitude",
    "decimalLongitude",
    "identifiedBy",
    "dateIdentified",
    "associatedMedia",
]
