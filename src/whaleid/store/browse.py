"""What the web's pages and API show, read in as few queries as a page needs (the review page stays fast
on a 50,000-photo catalog: every query here is by an indexed key, and a page's photos come in one query)."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from whaleid.store.db import Database
from whaleid.store.edits import history, summary
from whaleid.store.errors import NotFound
from whaleid.store.queries import PHOTO_KINDS, resolve, undone
from whaleid.store.schema import Decision, Encounter, Individual, MatchRun, Model, Photo

CANDIDATE_PHOTOS = 4  # catalog photos shown per candidate individual
CURVE_POINTS = 200


def photo_view(photo: Photo, encounters: dict[int, Encounter] | None = None) -> dict:
    """A photo as pages show it; ``seen`` is when the animal was photographed (EXIF, else the encounter's
    date), None when unknown: never the import date, which says nothing about the animal."""
    encounter = (encounters or {}).get(photo.encounter_id)
    return {
        "id": photo.id,
        "name": photo.original_name,
        "state": photo.state,
        "version": photo.version,
        "taken_at": photo.taken_at,
        "seen": (photo.taken_at or "")[:10] or (encounter.date if encounter else None),
        "added_at": photo.added_at.isoformat(timespec="seconds"),
        "encounter": photo.encounter_id,
        "encounter_date": encounter.date if encounter else None,
        "encounter_place": encounter.place if encounter else None,
    }


def _encounters(session: Session, ids) -> dict[int, Encounter]:
    ids = {i for i in ids if i is not None}
    return {e.id: e for e in session.scalars(select(Encounter).where(Encounter.id.in_(ids)))} if ids else {}


def _resolved(session: Session, catalog_ids: list[str]) -> dict[str, Individual]:
    """Each catalog id's individual now (following merges)."""
    found = session.scalars(select(Individual).where(Individual.catalog_id.in_(catalog_ids)))
    return {i.catalog_id: resolve(session, i) for i in found}


def _catalog_ids(session: Session, individual_ids) -> dict[int, str]:
    ids = set(individual_ids) - {None}
    return dict(session.execute(select(Individual.id, Individual.catalog_id).where(Individual.id.in_(ids))).all())


def review_page(db: Database, photo_id: int) -> dict:
    """A photo, what the model proposed for it (each candidate with a few of its photos), the photos of
    its upload that look like it, its neighbours in the queue and its latest undoable decision."""
    with db.reader() as session:
        photo = session.get(Photo, photo_id)
        if photo is None:
            raise NotFound(f"no photo {photo_id}")
        run = session.scalar(
            select(MatchRun).where(MatchRun.photo_id == photo.id).order_by(MatchRun.id.desc()).limit(1)
        )
        candidates = _candidates(session, photo, run.candidates if run else [])
        matches = run.batch_matches if run else []
        batch = {p.id: p for p in session.scalars(select(Photo).where(Photo.id.in_([b["photo"] for b in matches])))}
        shown = [p for c in candidates for p in c["photos"]] + [*batch.values(), photo]
        encounters = _encounters(session, [p.encounter_id for p in shown])
        for c in candidates:
            c["photos"] = [photo_view(p, encounters) for p in c["photos"]]
        names = _catalog_ids(session, [p.individual_id for p in batch.values()] + [photo.individual_id])
        return {
            "photo": {**photo_view(photo, encounters), "individual": names.get(photo.individual_id)},
            "model": run.model_id if run else None,
            "model_version": session.get(Model, run.model_id).version if run else None,
            "match_run": run.id if run else None,
            "candidates": candidates,
            "batch": [
                {**photo_view(p, encounters), "score": b["score"], "individual": names.get(p.individual_id)}
                for b in matches
                if (p := batch.get(b["photo"])) is not None
            ],
            "previous": session.scalar(
                select(Photo.id).where(Photo.state == "pending", Photo.id < photo.id).order_by(Photo.id.desc()).limit(1)
            ),
            "next": session.scalar(
                select(Photo.id).where(Photo.state == "pending", Photo.id > photo.id).order_by(Photo.id).limit(1)
            ),
            "last_decision": _undoable(session, photo.id),
        }


def _candidates(session: Session, photo: Photo, proposed: list[dict]) -> list[dict]:
    """The proposed individuals as they stand now (merges followed), each with its confirmed photo count and
    its latest few photos other than ``photo``; an id that is no individual (new_individual) stays bare."""
    individuals = _resolved(session, [c["individual"] for c in proposed])
    photos, counts = _latest_photos(session, {i.id for i in individuals.values()}, photo.id)
    candidates = []
    for rank, c in enumerate(proposed, 1):
        found = individuals.get(c["individual"])
        if found is None:  # new_individual, or an id no longer in the catalog
            candidates.append({"rank": rank, "individual": c["individual"], "score": c["score"], "photos": []})
            continue
        candidates.append(
            {
                "rank": rank,
                "individual": found.catalog_id,
                "proposed_as": c["individual"],
                "name": found.name,
                "species": found.species,
                "score": c["score"],
                "photo_count": counts.get(found.id, 0),
                "photos": photos.get(found.id, []),
            }
        )
    return candidates


def _latest_photos(session: Session, individual_ids: set[int], other_than: int) -> tuple[dict, dict]:
    """Of each individual: its latest CANDIDATE_PHOTOS confirmed photos but ``other_than``, and its confirmed
    photo count, in one query (a window per individual)."""
    if not individual_ids:
        return {}, {}
    ranked = (
        select(
            Photo.id,
            func.row_number().over(partition_by=Photo.individual_id, order_by=Photo.id.desc()).label("place"),
            func.count().over(partition_by=Photo.individual_id).label("total"),
        )
        .where(Photo.individual_id.in_(individual_ids), Photo.state == "confirmed")
        .subquery()
    )
    rows = session.execute(
        select(Photo, ranked.c.total)
        .join(ranked, ranked.c.id == Photo.id)
        .where(ranked.c.place <= CANDIDATE_PHOTOS + 1)  # one more, in case ``other_than`` is among them
        .order_by(Photo.id.desc())
    ).all()
    photos: dict[int, list[Photo]] = {}
    counts: dict[int, int] = {}
    for photo, total in rows:
        counts[photo.individual_id] = total
        kept = photos.setdefault(photo.individual_id, [])
        if photo.id != other_than and len(kept) < CANDIDATE_PHOTOS:
            kept.append(photo)
    return photos, counts


def _undoable(session: Session, photo_id: int) -> int | None:
    """The photo's latest decision, when it is not undone (what Z undoes)."""
    latest = session.execute(
        select(Decision.id, undone())
        .where(Decision.photo_id == photo_id, Decision.kind.in_(PHOTO_KINDS))
        .order_by(Decision.id.desc())
        .limit(1)
    ).first()
    return None if latest is None or latest[1] else latest[0]


def first_pending(db: Database, encounter: int | None = None) -> int | None:
    """The first photo awaiting review (of one encounter, when given)."""
    with db.reader() as session:
        query = select(Photo.id).where(Photo.state == "pending")
        if encounter is not None:
            query = query.where(Photo.encounter_id == encounter)
        return session.scalar(query.order_by(Photo.id).limit(1))


def latest_decisions(db: Database, limit: int = 20) -> list[dict]:
    """The latest decisions, newest first, with whether each was undone (a rename or an edit says what it
    changed: ``name: – → Nicky``)."""
    with db.reader() as session:
        rows = session.execute(select(Decision, undone()).order_by(Decision.id.desc()).limit(limit)).all()
        names = _catalog_ids(session, {d.individual_id for d, _ in rows} | {d.other_individual_id for d, _ in rows})
        return [
            {
                "id": d.id,
                "kind": d.kind,
                "photo": d.photo_id,
                "individual": names.get(d.individual_id),
                "into": names.get(d.other_individual_id),
                "encounter": d.encounter_id,
                "changes": summary(d.details),
                "undoes": d.undoes_id,
                "undone": bool(was_undone),
                "reviewer": d.reviewer,
                "at": d.created_at.isoformat(timespec="seconds"),
            }
            for d, was_undone in rows
        ]


def pending_by_encounter(db: Database) -> list[dict]:
    """Photos awaiting review per encounter (those of no encounter last)."""
    with db.reader() as session:
        counts = session.execute(
            select(Photo.encounter_id, func.count()).where(Photo.state == "pending").group_by(Photo.encounter_id)
        ).all()
        encounters = _encounters(session, [e for e, _ in counts])
        return [
            {
                "encounter": e,
                "date": encounters[e].date if e in encounters else None,
                "place": encounters[e].place if e in encounters else None,
                "pending": n,
            }
            for e, n in sorted(counts, key=lambda r: (r[0] is None, r[0] or 0))
        ]


def discovery_curve(db: Database) -> list[tuple[int, int]]:
    """(photos identified, individuals seen) after each identifying decision that stands, thinned to a few
    hundred points: the curve flattens as a population becomes fully catalogued."""
    with db.reader() as session:
        individuals = session.scalars(
            select(Decision.individual_id).where(Decision.kind.in_(("confirm", "new")), ~undone()).order_by(Decision.id)
        ).all()
    points, seen = [(0, 0)], set()
    for i, individual in enumerate(individuals, 1):
        seen.add(individual)
        points.append((i, len(seen)))
    step = max(1, len(points) // CURVE_POINTS)
    return points[::step] + ([points[-1]] if (len(points) - 1) % step else [])


def individual_page(db: Database, catalog_id: str) -> dict:
    """An individual as it stands now (an alias shows the one it was merged into), its photos, encounters
    and the history of its name (its aliases' too)."""
    with db.reader() as session:
        found = _resolved(session, [catalog_id]).get(catalog_id)
        if found is None:
            raise NotFound(f"no individual {catalog_id!r}")
        photos = session.scalars(
            select(Photo)
            .where(Photo.individual_id == found.id, Photo.state == "confirmed")
            .order_by(Photo.taken_at, Photo.id)
        ).all()
        encounters = _encounters(session, [p.encounter_id for p in photos])
        aliases = session.execute(
            select(Individual.id, Individual.catalog_id).where(Individual.merged_into_id == found.id)
        ).all()
        return {
            "individual": found.catalog_id,
            "name": found.name,
            "species": found.species,
            "created_by": found.created_by,
            "created_at": found.created_at.isoformat(timespec="seconds"),
            "aliases": [catalog_id for _, catalog_id in aliases],
            "photos": [photo_view(p, encounters) for p in photos],
            "encounters": [
                {"id": e.id, "date": e.date, "place": e.place}
                for e in sorted(encounters.values(), key=lambda e: (e.date or "", e.id))
            ],
            "history": history(session, individuals=[found.id, *(i for i, _ in aliases)]),
        }


def individuals(db: Database, limit: int = 200, offset: int = 0) -> list[dict]:
    """Individuals (not those merged into others), oldest first, with their confirmed photo counts."""
    with db.reader() as session:
        counts = (
            select(Photo.individual_id, func.count().label("n"))
            .where(Photo.state == "confirmed")
            .group_by(Photo.individual_id)
            .subquery()
        )
        rows = session.execute(
            select(Individual, counts.c.n)
            .outerjoin(counts, counts.c.individual_id == Individual.id)
            .where(Individual.merged_into_id.is_(None))
            .order_by(Individual.id)
            .limit(limit)
            .offset(offset)
        ).all()
        return [{"individual": i.catalog_id, "name": i.name, "species": i.species, "photos": n or 0} for i, n in rows]


def encounter_page(db: Database, encounter_id: int) -> dict:
    """An encounter, the history of its edits and all its photos, each with the individual it was identified
    as and when it was seen (EXIF, else the encounter's date)."""
    with db.reader() as session:
        found = session.get(Encounter, encounter_id)
        if found is None:
            raise NotFound(f"no encounter {encounter_id}")
        photos = session.scalars(select(Photo).where(Photo.encounter_id == found.id).order_by(Photo.id)).all()
        names = _catalog_ids(session, [p.individual_id for p in photos])
        return {
            "id": found.id,
            "date": found.date,
            "place": found.place,
            "latitude": found.latitude,
            "longitude": found.longitude,
            "observer": found.observer,
            "notes": found.notes,
            "photos": [{**photo_view(p, {found.id: found}), "individual": names.get(p.individual_id)} for p in photos],
            "history": history(session, encounter=found.id),
        }


def encounters(db: Database, limit: int = 200) -> list[dict]:
    """The latest encounters, newest first, with their photo counts."""
    with db.reader() as session:
        counts = dict(session.execute(select(Photo.encounter_id, func.count()).group_by(Photo.encounter_id)).all())
        rows = session.scalars(select(Encounter).order_by(Encounter.id.desc()).limit(limit)).all()
        return [
            {"id": e.id, "date": e.date, "place": e.place, "observer": e.observer, "photos": counts.get(e.id, 0)}
            for e in rows
        ]


def photo_file(db: Database, photo_id: int) -> tuple[str, str]:
    """A photo's stored file (relative to the catalog) and content hash."""
    with db.reader() as session:
        photo = session.get(Photo, photo_id)
        if photo is None:
            raise NotFound(f"no photo {photo_id}")
        return photo.file, photo.sha256


def catalog_id(db: Database, individual_id: int | None) -> str | None:
    """The catalog id of an individual row (a decision names its individual by row)."""
    if individual_id is None:
        return None
    with db.reader() as session:
        return session.get(Individual, individual_id).catalog_id
