"""Edits: an individual named, an encounter's details corrected. Each is an append-only event like a decision
(kind ``rename`` or ``edit``) that holds what it changed, before and after, so that it is audited with the
decisions and undone like them: an undo puts the values before back (see :func:`revert`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from whaleid.errors import UserError
from whaleid.store.db import Database
from whaleid.store.errors import ConflictError, NotFound
from whaleid.store.intake import EncounterInfo
from whaleid.store.queries import named, now, resolve, undone
from whaleid.store.schema import Decision, Encounter, Individual

FIELDS = tuple(f.name for f in dataclasses.fields(EncounterInfo))  # date, place, latitude, longitude, observer, notes
MAX_NAME = Individual.__table__.c.name.type.length
HISTORY = 20  # events shown per individual or encounter


class Edits:
    """Names of individuals and details of encounters, changed as events."""

    def __init__(self, db: Database):
        self.db = db

    def rename(self, catalog_id: str, name: str | None, reviewer: str = "reviewer") -> Decision:
        """Name the individual ``catalog_id`` stands for now (merges followed); an empty name clears it."""
        name = (name or "").strip() or None
        if name is not None and len(name) > MAX_NAME:
            raise UserError(f"a name is at most {MAX_NAME} characters, not {len(name)}: give a shorter one")
        with self.db.session() as session, session.begin():
            found = named(session, catalog_id)
            if found is None:
                raise NotFound(f"no individual {catalog_id!r} in the catalog")
            found = resolve(session, found)
            if found.name == name:
                raise UserError(f"nothing to change: {found.catalog_id} is already {_named(name)}")
            event = Decision(
                kind="rename",
                individual_id=found.id,
                details={"name": {"before": found.name, "after": name}},
                reviewer=reviewer,
                created_at=now(),
            )
            found.name = name
            session.add(event)
        return event

    def edit_encounter(self, encounter_id: int, reviewer: str = "reviewer", **fields) -> Decision:
        """Change the given details of an encounter (a field given as None or blank is cleared); the event
        records the fields that changed, and a change that changes nothing is refused."""
        unknown = sorted(set(fields) - set(FIELDS))
        if unknown:
            raise UserError(f"an encounter has no {', '.join(unknown)}: change {', '.join(FIELDS)}")
        wanted = {key: _blank_is_none(fields[key]) for key in FIELDS if key in fields}  # (recorded in this order)
        EncounterInfo(**wanted)  # the checks of every way in: ISO 8601 dates, places on the globe
        for key, value in wanted.items():
            limit = getattr(Encounter.__table__.c[key].type, "length", None)
            if isinstance(value, str) and limit is not None and len(value) > limit:
                raise UserError(f"{key} is at most {limit} characters, not {len(value)}")
        with self.db.session() as session, session.begin():
            encounter = session.get(Encounter, encounter_id)
            if encounter is None:
                raise NotFound(f"no encounter {encounter_id} in the catalog")
            changed = {
                key: {"before": getattr(encounter, key), "after": value}
                for key, value in wanted.items()
                if getattr(encounter, key) != value
            }
            if not changed:
                raise UserError(f"nothing to change: encounter {encounter_id} already has these details")
            for key, change in changed.items():
                setattr(encounter, key, change["after"])
            event = Decision(
                kind="edit", encounter_id=encounter.id, details=changed, reviewer=reviewer, created_at=now()
            )
            session.add(event)
        return event


def revert(session: Session, event: Decision) -> None:
    """Put back the values a rename or an edit replaced; refused when one was changed again since
    (undo the later change first: an undo never silently drops someone's later edit)."""
    if not event.details:  # (only where a catalog went back to schema 0003 and forward again)
        raise UserError(f"decision {event.id} does not say what it changed: change it back instead")
    if event.kind == "rename":
        target = session.get(Individual, event.individual_id)
        what = target.catalog_id
    else:
        target = session.get(Encounter, event.encounter_id)
        what = f"encounter {target.id}"
    again = [key for key, change in event.details.items() if getattr(target, key) != change["after"]]
    if again:
        raise ConflictError(
            f"decision {event.id}: the {' and '.join(again)} of {what} changed again since: "
            "undo that later change first"
        )
    for key, change in event.details.items():
        setattr(target, key, change["before"])


def history(session: Session, *, individuals: Sequence[int] = (), encounter: int | None = None) -> list[dict]:
    """The latest renames of these individuals or edits of this encounter, and the undos of them, newest first."""
    if encounter is not None:
        mine = (Decision.kind == "edit") & (Decision.encounter_id == encounter)
    else:
        mine = (Decision.kind == "rename") & Decision.individual_id.in_(list(individuals))
    edits = session.execute(select(Decision, undone()).where(mine).order_by(Decision.id.desc()).limit(HISTORY)).all()
    by_id = {event.id: event for event, _ in edits}
    undos = session.scalars(select(Decision).where(Decision.undoes_id.in_(list(by_id)))).all() if by_id else []
    rows = [(event.id, event, event.details, bool(was_undone)) for event, was_undone in edits]
    rows += [(undo.id, undo, _inverted(by_id[undo.undoes_id].details), False) for undo in undos]
    return [
        {
            "id": event.id,
            "kind": event.kind,
            "undoes": event.undoes_id,
            "undone": was_undone,
            "reviewer": event.reviewer,
            "at": event.created_at.isoformat(timespec="seconds"),
            "changes": summary(details),
        }
        for _, event, details, was_undone in sorted(rows, key=lambda row: row[0], reverse=True)
    ]


def summary(details: dict | None, width: int = 40) -> str:
    """What an event changed in one line: ``place: test bay → Cape Cod Bay; notes: – → calf seen``."""

    def shown(value) -> str:
        text = "–" if value is None or value == "" else str(value)
        return text if len(text) <= width else text[: width - 1] + "…"

    return "; ".join(f"{key}: {shown(c['before'])} → {shown(c['after'])}" for key, c in (details or {}).items())


def _inverted(details: dict) -> dict:
    return {key: {"before": c["after"], "after": c["before"]} for key, c in details.items()}


def _blank_is_none(value):
    if isinstance(value, str):
        value = value.strip()
        return value or None
    return value


def _named(name: str | None) -> str:
    return f"named {name!r}" if name is not None else "without a name"
