"""What several parts of the store ask the same way: the time, confirmed photos, undone decisions, merges."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import ColumnElement, exists, select
from sqlalchemy.orm import Session, aliased

from whaleid.store.schema import Decision, Individual, Photo

PHOTO_KINDS = ("confirm", "new", "unsure")  # the decisions about one photo (merge and undo are the others)
EDIT_KINDS = ("rename", "edit")  # an individual's name, an encounter's details: no photo changes identity
MAX_PARAMETERS = 10_000  # bound parameters per query: SQLite allows 32,766 by default, psycopg 65,535


def now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def chunks(values: list) -> list[list]:
    return [values[i : i + MAX_PARAMETERS] for i in range(0, len(values), MAX_PARAMETERS)]


def undone(decision=Decision) -> ColumnElement[bool]:
    """Whether ``decision`` (the Decision entity or an alias of it) was undone: an undo event names it.
    The one definition of "undone"; every query that skips or shows undone decisions uses it."""
    undo = aliased(Decision)
    return exists().where(undo.undoes_id == decision.id)


def confirmed(session: Session, *columns) -> list:
    """These columns of every confirmed photo and its individual, in the order photos came in."""
    query = select(*columns).join(Individual, Photo.individual_id == Individual.id).where(Photo.state == "confirmed")
    return session.execute(query.order_by(Photo.id)).all()


def resolve(session: Session, individual: Individual) -> Individual:
    """The individual an id now stands for, following merges."""
    seen = set()
    while individual.merged_into_id is not None and individual.id not in seen:
        seen.add(individual.id)
        individual = session.get(Individual, individual.merged_into_id)
    return individual


def named(session: Session, catalog_id: str) -> Individual | None:
    """The individual with this catalog id (not following merges), if any."""
    return session.scalar(select(Individual).where(Individual.catalog_id == catalog_id))


def individual(session: Session, catalog_id: str, species: str, name: str | None, reviewer: str) -> Individual:
    """The individual with this catalog id, made when it does not exist yet."""
    found = named(session, catalog_id)
    if found is None:
        found = Individual(catalog_id=catalog_id, species=species, name=name, created_by=reviewer, created_at=now())
        session.add(found)
        session.flush()
    return found
