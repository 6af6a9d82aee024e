"""Photos in: a survey's photos added (copied, embedded, matched, queued for review) or an existing labelled
catalog imported. Photo files are written before their rows, so an interrupted ``add`` leaves no half rows
and re-running it finishes the batch."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from whaleid.data.catalog import read_catalog
from whaleid.data.checks import CatalogError
from whaleid.data.images import check_image, image_suffix
from whaleid.files import atomic_path
from whaleid.store.db import Database
from whaleid.store.errors import ConflictError, NotFound
from whaleid.store.exif import check_encounter, photo_exif
from whaleid.store.gallery import Gallery
from whaleid.store.models import EMBED_CHUNK, Models, Progress
from whaleid.store.queries import chunks, individual, named, now, resolve
from whaleid.store.schema import Decision, Embedding, Encounter, Individual, Model, Photo, Rejected

Readable = list[tuple[Path, str, str]]  # (path, name, sha256) of photos that can be read


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


class Intake:
    """Adds and imports photos into one catalog folder."""

    def __init__(self, directory: Path, db: Database, models: Models, gallery: Gallery):
        self.dir, self.db, self.models, self.gallery = directory, db, models, gallery

    def add(
        self,
        paths: Sequence[str | os.PathLike],
        encounter: EncounterInfo | int | None = None,
        *,
        names: Sequence[str] | None = None,
        progress: Progress | None = None,
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
        with self.db.reader() as session:
            model = self.models.active(session)
            fresh = self._copy_in(session, readable, result)
        vectors, fresh = self._embed_fresh(model, fresh, result, progress)
        if progress:  # (never inside the transaction: a listener may write progress to the same database)
            progress("matching", 0, len(fresh))
        with self.db.session() as session, session.begin():
            if self.models.active(session).id != model.id:
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
            self.gallery.propose(session, model, photos, vectors)
            result.added = [p.id for p in photos]
        return result

    @staticmethod
    def _encounter(session: Session, encounter: EncounterInfo | int | None) -> int | None:
        if isinstance(encounter, int):
            if session.get(Encounter, encounter) is None:
                raise NotFound(f"no encounter {encounter} in the catalog")
            return encounter
        if encounter is None or not encounter.given():
            return None
        row = Encounter(**vars(encounter), created_at=now())
        session.add(row)
        session.flush()
        return row.id

    def _embed_fresh(self, model: Model, fresh: list[dict], result: AddResult, progress) -> tuple[np.ndarray, list]:
        """Vectors of the copied photos; the unembeddable recorded in ``result``."""
        vectors, ok = self.models.embed_stored(model, [f["file"] for f in fresh], progress)
        for f, good in zip(fresh, ok):
            if not good:
                result.rejected.append((f["original_name"], "could not be prepared or embedded"))
        return vectors, [f for f, good in zip(fresh, ok) if good]

    @staticmethod
    def _known(session: Session, digests: list[str]) -> set[str]:
        return {
            s for chunk in chunks(digests) for s in session.scalars(select(Photo.sha256).where(Photo.sha256.in_(chunk)))
        }

    @staticmethod
    def _readable(paths: list[Path], names: list[str], result: AddResult, progress=None) -> Readable:
        """The photos that can be read; the others recorded in ``result`` with their reason."""
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

    def _copy_in(self, session: Session, readable: Readable, result: AddResult) -> list[dict]:
        """Readable photos not yet in the catalog, copied (atomically) under photos/; the others recorded in
        ``result`` as duplicates.

        A copy is named by its content (sha256) and its detected format, never by anything the user gave.
        """
        fresh, seen = [], set()
        crop_status = "as model" if self.models.crops(session) else "none"
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

    def import_catalog(
        self, csv: str | os.PathLike, images: str | os.PathLike | None = None, reviewer: str = "import"
    ) -> AddResult:
        """An existing labelled catalog (Happywhale CSV + images): every photo added and confirmed as labelled."""
        catalog = read_catalog(csv, images, progress=True)
        result = AddResult(rejected=[(r.image, r.reason) for r in catalog.problems.itertuples()])
        names = catalog.table["image"].tolist()  # unique in a catalog, unlike the file names of two folders
        readable = self._readable([Path(p) for p in catalog.paths], names, result)
        labels = dict(zip(names, catalog.table["individual_id"]))
        with self.db.session() as session, session.begin():
            _refuse_conflicts(session, csv, readable, labels)
            model = self.models.active(session)
            fresh = self._copy_in(session, readable, result)
            session.add_all(Rejected(original_name=n, reason=r, added_at=now()) for n, r in result.rejected)
            by_name = dict(zip(names, catalog.table.itertuples()))
            vectors, ok = self.models.embed(model, [str(self.dir / "photos" / f["file"]) for f in fresh])
            individuals: dict[str, Individual] = {}
            kept = [f for f, good in zip(fresh, ok) if good]
            for f, vector in zip(kept, vectors):
                row = by_name[f["original_name"]]
                found = individuals.get(row.individual_id) or individual(
                    session, row.individual_id, row.species, None, reviewer
                )
                individuals[row.individual_id] = found
                photo = Photo(**f, state="confirmed", individual_id=found.id, added_at=now(), version=1)
                session.add(photo)
                session.flush()
                session.add(Embedding(photo_id=photo.id, model_id=model.id, vector=vector.tobytes()))
                session.add(
                    Decision(
                        kind="confirm", photo_id=photo.id, individual_id=found.id, reviewer=reviewer, created_at=now()
                    )
                )
                result.added.append(photo.id)
        return result


def _refuse_conflicts(session: Session, csv: str | os.PathLike, readable: Readable, labels: dict[str, str]) -> None:
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
    for digest, file, found in [
        row
        for chunk in chunks(list(rows))
        for row in session.execute(query.where(Photo.sha256.in_(chunk), Photo.state == "confirmed")).all()
    ]:
        known = resolve(session, found).catalog_id
        clashes += [
            f"{n} ({labels[n]}) and the catalog's photos/{file} ({known})"
            for n in rows[digest]
            if _resolved_id(session, labels[n]) != known
        ]
    if clashes:
        raise CatalogError(
            f"{csv}: {len(clashes)} photo(s) labelled as two individuals (the same bytes): "
            f"{'; '.join(clashes[:5])}{' ...' if len(clashes) > 5 else ''}: keep one label per photo"
        )


def _resolved_id(session: Session, catalog_id: str) -> str:
    """The id an individual's id stands for now (merges followed); an id not in the catalog stands for itself."""
    found = named(session, catalog_id)
    return catalog_id if found is None else resolve(session, found).catalog_id
