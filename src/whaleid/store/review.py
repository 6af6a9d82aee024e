"""Review: the queue of photos awaiting a decision, and the decisions (decide, merge, undo), each one
append-only event whose effect is cached on the photo rows in the same transaction (an undo also undoes
the renames and edits of :mod:`whaleid.store.edits`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from whaleid.errors import UserError
from whaleid.store.db import Database
from whaleid.store.edits import revert
from whaleid.store.errors import ConflictError, NotFound
from whaleid.store.queries import EDIT_KINDS, MAX_PARAMETERS, PHOTO_KINDS, individual, named, now, resolve, undone
from whaleid.store.schema import Decision, Individual, MatchRun, Photo


@dataclass
class QueueItem:
    photo: int
    name: str
    encounter: int | None
    candidates: list[dict]
    batch_matches: list[dict]
    version: int


class Review:
    """The queue and the decisions of one catalog."""

    def __init__(self, directory: Path, db: Database):
        self.dir, self.db = directory, db

    def queue(self, limit: int | None = 50) -> list[QueueItem]:
        """Photos awaiting a decision, oldest first, with what the model proposed for each."""
        with self.db.reader() as session:
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
            raise NotFound(f"no photo {ref!r} in {self.dir}")
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
        with self.db.session() as session, session.begin():
            photo = self.photo(session, photo_ref)
            version = photo.version if expected_version is None else expected_version
            if photo.state != "pending" or photo.version != version:
                raise ConflictError(f"photo {photo.id} was already decided ({photo.state}); undo that decision first")
            chosen = None
            if confirm is not None:
                chosen = named(session, confirm)
                if chosen is None:
                    raise NotFound(f"no individual {confirm!r} in the catalog: check the id, or decide --new")
                chosen = resolve(session, chosen)
            elif new:
                chosen = _new_individual(session, name, species or _species_hint(session, photo), reviewer)
            changed = session.execute(
                update(Photo)
                .where(Photo.id == photo.id, Photo.version == version)
                .values(
                    state="unsure" if unsure else "confirmed",
                    individual_id=chosen.id if chosen else None,
                    version=version + 1,
                )
            ).rowcount
            if changed != 1:
                raise ConflictError(f"photo {photo.id} was decided by someone else meanwhile: reload and look again")
            run = session.scalar(select(MatchRun.id).where(MatchRun.photo_id == photo.id).order_by(MatchRun.id.desc()))
            event = Decision(
                kind="confirm" if confirm is not None else "new" if new else "unsure",
                photo_id=photo.id,
                individual_id=chosen.id if chosen else None,
                reviewer=reviewer,
                created_at=now(),
                match_run_id=run,
            )
            session.add(event)
        return event

    def merge(self, source: str, target: str, reviewer: str = "reviewer") -> Decision:
        """Individual ``source`` is ``target``: its photos join target's, its id stays as an alias."""
        with self.db.session() as session, session.begin():
            a, b = (resolve(session, _by_catalog_id(session, x)) for x in (source, target))
            if a.id == b.id:
                raise UserError(f"{source!r} and {target!r} are already one individual: nothing to merge")
            a.merged_into_id = b.id
            session.execute(update(Photo).where(Photo.individual_id == a.id).values(individual_id=b.id))
            event = Decision(
                kind="merge", individual_id=a.id, other_individual_id=b.id, reviewer=reviewer, created_at=now()
            )
            session.add(event)
        return event

    def undo(self, event_id: int, reviewer: str = "reviewer") -> Decision:
        """An event that cancels an earlier one; the photos it touched are re-derived from the decisions."""
        with self.db.session() as session, session.begin():
            found = session.execute(select(Decision, undone()).where(Decision.id == event_id)).first()
            if found is None:
                raise NotFound(f"no decision {event_id} in the catalog")
            event, was_undone = found
            if event.kind == "undo":
                raise UserError(f"decision {event_id} is itself an undo: decide again instead")
            if was_undone:
                raise UserError(f"decision {event_id} was already undone")
            if event.kind in EDIT_KINDS:
                revert(session, event)  # the values before it come back: no photo changes
            undo = Decision(kind="undo", undoes_id=event.id, reviewer=reviewer, created_at=now())
            session.add(undo)
            session.flush()
            affected = [event.photo_id] if event.kind in PHOTO_KINDS else []
            if event.kind == "merge":
                session.get(Individual, event.individual_id).merged_into_id = None
                target = resolve(session, session.get(Individual, event.other_individual_id))
                affected = session.scalars(select(Photo.id).where(Photo.individual_id == target.id)).all()
            for photo_id in set(affected):
                _reproject(session, session.get(Photo, photo_id))
        return undo


def _species_hint(session: Session, photo: Photo) -> str:
    """A new individual's species: that of the photo's best known candidate, else unknown."""
    run = session.scalar(select(MatchRun).where(MatchRun.photo_id == photo.id).order_by(MatchRun.id.desc()))
    for candidate in run.candidates if run else []:
        found = named(session, candidate["individual"])
        if found is not None:
            return found.species
    return "unknown"


def _new_individual(session: Session, name: str | None, species: str, reviewer: str) -> Individual:
    count = session.scalar(select(Individual.id).order_by(Individual.id.desc()).limit(1)) or 0
    catalog_id = f"WID-{count + 1:05d}"
    while session.scalar(select(Individual.id).where(Individual.catalog_id == catalog_id)) is not None:
        count += 1
        catalog_id = f"WID-{count + 1:05d}"
    return individual(session, catalog_id, species, name, reviewer)


def _by_catalog_id(session: Session, catalog_id: str) -> Individual:
    found = named(session, catalog_id)
    if found is None:
        raise NotFound(f"no individual {catalog_id!r} in the catalog")
    return found


def _reproject(session: Session, photo: Photo) -> None:
    """A photo's state and individual from its latest decision that was not undone."""
    latest = session.scalar(
        select(Decision)
        .where(Decision.photo_id == photo.id, Decision.kind.in_(PHOTO_KINDS), ~undone())
        .order_by(Decision.id.desc())
        .limit(1)
    )
    if latest is None:
        photo.state, photo.individual_id = "pending", None
    elif latest.kind == "unsure":
        photo.state, photo.individual_id = "unsure", None
    else:
        photo.state = "confirmed"
        photo.individual_id = resolve(session, session.get(Individual, latest.individual_id)).id
    photo.version += 1
