"""What the pages and the API show, read from the catalog in as few queries as a page needs
(the review page stays fast on a 50,000-photo catalog: every query here is by an indexed key)."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from whaleid.store.catalog import CatalogStore
from whaleid.store.schema import Decision, Encounter, Individual, MatchRun, Model, Photo
from whaleid.web.jobs import Refused

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


def _resolved(store: CatalogStore, session: Session, catalog_ids: list[str]) -> dict[str, Individual]:
    """Each catalog id's individual now (following merges)."""
    found = session.scalars(select(Individual).where(Individual.catalog_id.in_(catalog_ids)))
    return {i.catalog_id: store.resolve(session, i) for i in found}


def review(store: CatalogStore, photo_id: int) -> dict:
    """A photo, what the model proposed for it (each candidate with a few of its photos), the photos of
    its upload that look like it, its neighbours in the queue and its latest undoable decision."""
    with store.reader() as session:
        photo = session.get(Photo, photo_id)
        if photo is None:
            raise Refused(404, f"no photo {photo_id}")
        run = session.scalar(
            select(MatchRun).where(MatchRun.photo_id == photo.id).order_by(MatchRun.id.desc()).limit(1)
        )
        proposed = run.candidates if run else []
        individuals = _resolved(store, session, [c["individual"] for c in proposed])
        candidates = []
        for rank, c in enumerate(proposed, 1):
            individual = individuals.get(c["individual"])
            if individual is None:  # new_individual, or an id no longer in the catalog
                candidates.append({"rank": rank, "individual": c["individual"], "score": c["score"], "photos": []})
                continue
            shown = session.scalars(
                select(Photo)
                .where(Photo.individual_id == individual.id, Photo.state == "confirmed", Photo.id != photo.id)
                .order_by(Photo.id.desc())
                .limit(CANDIDATE_PHOTOS)
            ).all()
            candidates.append(
                {
                    "rank": rank,
                    "individual": individual.catalog_id,
                    "proposed_as": c["individual"],
                    "name": individual.name,
                    "species": individual.species,
                    "score": c["score"],
                    "photo_count": session.scalar(
                        select(func.count()).where(Photo.individual_id == individual.id, Photo.state == "confirmed")
                    ),
                    "photos": shown,
                }
            )
        batch = {
            p.id: p
            for p in session.scalars(
                select(Photo).where(Photo.id.in_([b["photo"] for b in (run.batch_matches if run else [])]))
            )
        }
        shown_photos = [p for c in candidates for p in c["photos"]] + list(batch.values()) + [photo]
        encounters = _encounters(session, [p.encounter_id for p in shown_photos])
        for c in candidates:
            c["photos"] = [photo_view(p, encounters) for p in c["photos"]]
        batch_individuals = {
            i.id: i.catalog_id
            for i in session.scalars(
                select(Individual).where(Individual.id.in_({p.individual_id for p in batch.values()} - {None}))
            )
        }
        return {
            "photo": {**photo_view(photo, encounters), "individual": _catalog_id(session, photo.individual_id)},
            "model": run.model_id if run else None,
            "model_version": session.get(Model, run.model_id).version if run else None,
            "match_run": run.id if run else None,
            "candidates": candidates,
            "batch": [
                {
                    **photo_view(batch[b["photo"]], encounters),
                    "score": b["score"],
                    "individual": batch_individuals.get(batch[b["photo"]].individual_id),
                }
                for b in (run.batch_matches if run else [])
                if b["photo"] in batch
            ],
            "previous": session.scalar(
                select(Photo.id).where(Photo.state == "pending", Photo.id < photo.id).order_by(Photo.id.desc()).limit(1)
            ),
            "next": session.scalar(
                select(Photo.id).where(Photo.state == "pending", Photo.id > photo.id).order_by(Photo.id).limit(1)
            ),
            "last_decision": _undoable(session, photo.id),
        }


def _catalog_id(session: Session, individual_id: int | None) -> str | None:
    return None if individual_id is None else session.get(Individual, individual_id).catalog_id


def _undoable(session: Session, photo_id: int) -> int | None:
    """The photo's latest decision that is not undone (what Z undoes), if any."""
    latest = session.scalar(
        select(Decision)
        .where(Decision.photo_id == photo_id, Decision.kind.in_(("confirm", "new", "unsure")))
        .order_by(Decision.id.desc())
        .limit(1)
    )
    if latest is None or session.scalar(select(Decision.id).where(Decision.undoes_id == latest.id)) is not None:
        return None
    return latest.id


def first_pending(store: CatalogStore, encounter: int | None = None) -> int | None:
    with store.reader() as session:
        query = select(Photo.id).where(Photo.state == "pending")
        if encounter is not None:
            query = query.where(Photo.encounter_id == encounter)
        return session.scalar(query.order_by(Photo.id).limit(1))


def decisions(store: CatalogStore, limit: int = 20) -> list[dict]:
    """The latest decisions, newest first, with whether each was undone."""
    with store.reader() as session:
        rows = session.scalars(select(Decision).order_by(Decision.id.desc()).limit(limit)).all()
        undone = set(session.scalars(select(Decision.undoes_id).where(Decision.undoes_id.in_([d.id for d in rows]))))
        names = {
            i.id: i.catalog_id
            for i in session.scalars(
                select(Individual).where(
                    Individual.id.in_({d.individual_id for d in rows} | {d.other_individual_id for d in rows})
                )
            )
        }
        return [
            {
                "id": d.id,
                "kind": d.kind,
                "photo": d.photo_id,
                "individual": names.get(d.individual_id),
                "into": names.get(d.other_individual_id),
                "undoes": d.undoes_id,
                "undone": d.id in undone,
                "reviewer": d.reviewer,
                "at": d.created_at.isoformat(timespec="seconds"),
            }
            for d in rows
        ]


def pending_by_encounter(store: CatalogStore) -> list[dict]:
    with store.reader() as session:
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


def discovery_curve(store: CatalogStore) -> list[tuple[int, int]]:
    """(photos identified, individuals seen) after each identifying decision that stands, thinned to a few
    hundred points: the curve flattens as a population becomes fully catalogued."""
    with store.reader() as session:
        undone = select(Decision.undoes_id).where(Decision.undoes_id.is_not(None))
        individuals = session.scalars(
            select(Decision.individual_id)
            .where(Decision.kind.in_(("confirm", "new")), Decision.id.not_in(undone))
            .order_by(Decision.id)
        ).all()
    points, seen = [(0, 0)], set()
    for i, individual in enumerate(individuals, 1):
        seen.add(individual)
        points.append((i, len(seen)))
    step = max(1, len(points) // CURVE_POINTS)
    return points[::step] + ([points[-1]] if (len(points) - 1) % step else [])


def individual(store: CatalogStore, catalog_id: str) -> dict:
    with store.reader() as session:
        found = _resolved(store, session, [catalog_id]).get(catalog_id)
        if found is None:
            raise Refused(404, f"no individual {catalog_id!r}")
        photos = session.scalars(
            select(Photo)
            .where(Photo.individual_id == found.id, Photo.state == "confirmed")
            .order_by(Photo.taken_at, Photo.id)
        ).all()
        encounters = _encounters(session, [p.encounter_id for p in photos])
        aliases = session.scalars(select(Individual.catalog_id).where(Individual.merged_into_id == found.id)).all()
        return {
            "individual": found.catalog_id,
            "name": found.name,
            "species": found.species,
            "created_by": found.created_by,
            "created_at": found.created_at.isoformat(timespec="seconds"),
            "aliases": list(aliases),
            "photos": [photo_view(p, encounters) for p in photos],
            "encounters": [
                {"id": e.id, "date": e.date, "place": e.place}
                for e in sorted(encounters.values(), key=lambda e: (e.date or "", e.id))
            ],
        }


def individuals(store: CatalogStore, limit: int = 200, offset: int = 0) -> list[dict]:
    with store.reader() as session:
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


def encounter(store: CatalogStore, encounter_id: int) -> dict:
    with store.reader() as session:
        found = session.get(Encounter, encounter_id)
        if found is None:
            raise Refused(404, f"no encounter {encounter_id}")
        photos = session.scalars(select(Photo).where(Photo.encounter_id == found.id).order_by(Photo.id)).all()
        names = {
            i.id: i.catalog_id
            for i in session.scalars(
                select(Individual).where(Individual.id.in_({p.individual_id for p in photos} - {None}))
            )
        }
        return {
            "id": found.id,
            "date": found.date,
            "place": found.place,
            "latitude": found.latitude,
            "longitude": found.longitude,
            "observer": found.observer,
            "notes": found.notes,
            "photos": [{**photo_view(p), "individual": names.get(p.individual_id)} for p in photos],
        }


def encounters(store: CatalogStore, limit: int = 200) -> list[dict]:
    with store.reader() as session:
        counts = dict(session.execute(select(Photo.encounter_id, func.count()).group_by(Photo.encounter_id)).all())
        rows = session.scalars(select(Encounter).order_by(Encounter.id.desc()).limit(limit)).all()
        return [
            {"id": e.id, "date": e.date, "place": e.place, "observer": e.observer, "photos": counts.get(e.id, 0)}
            for e in rows
        ]


def photo_file(store: CatalogStore, photo_id: int) -> tuple[str, str]:
    """A photo's stored file (relative to the catalog) and content hash."""
    with store.reader() as session:
        photo = session.get(Photo, photo_id)
        if photo is None:
            raise Refused(404, f"no photo {photo_id}")
        return photo.file, photo.sha256
