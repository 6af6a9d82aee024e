"""The catalog's tables. Decisions are append-only events; a photo's current identity is derived from them
(and cached on the photo row in the same transaction, so the queue and the gallery are one query away)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    password_hash: Mapped[str | None] = mapped_column(String(300))
    role: Mapped[str] = mapped_column(String(20), default="reviewer")  # reviewer | admin | viewer
    created_at: Mapped[datetime] = mapped_column(DateTime)
    must_change: Mapped[bool] = mapped_column(Boolean, default=False)  # a printed one-time password


class LoginSession(Base):
    """A logged-in browser: the cookie holds the token, the table only its hash (a leaked table logs nobody in)."""

    __tablename__ = "login_sessions"
    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    csrf: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime)
    expires_at: Mapped[datetime] = mapped_column(DateTime)


class Job(Base):
    """Background work (an upload to process, a reindex): kept here so that a restarted server resumes it."""

    __tablename__ = "jobs"
    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(20))  # upload | reindex | retrain
    state: Mapped[str] = mapped_column(String(20), index=True)  # receiving | queued | running | done | failed
    payload: Mapped[dict] = mapped_column(JSON)  # upload: encounter id and staged files; reindex: model version
    progress: Mapped[dict] = mapped_column(JSON)  # {"stage": str, "done": int, "total": int}
    result: Mapped[dict | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime)
    updated_at: Mapped[datetime] = mapped_column(DateTime)


class Individual(Base):
    __tablename__ = "individuals"
    id: Mapped[int] = mapped_column(primary_key=True)
    catalog_id: Mapped[str] = mapped_column(String(200), unique=True)
    species: Mapped[str] = mapped_column(String(200))
    name: Mapped[str | None] = mapped_column(String(200))
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime)
    merged_into_id: Mapped[int | None] = mapped_column(ForeignKey("individuals.id"))


class Encounter(Base):
    __tablename__ = "encounters"
    id: Mapped[int] = mapped_column(primary_key=True)
    date: Mapped[str | None] = mapped_column(String(40))  # ISO date as given
    place: Mapped[str | None] = mapped_column(String(300))
    latitude: Mapped[float | None] = mapped_column(Float)
    longitude: Mapped[float | None] = mapped_column(Float)
    observer: Mapped[str | None] = mapped_column(String(200))
    notes: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime)


class Photo(Base):
    __tablename__ = "photos"
    id: Mapped[int] = mapped_column(primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    file: Mapped[str] = mapped_column(String(300))  # relative to the catalog folder
    original_name: Mapped[str] = mapped_column(String(1000))
    size: Mapped[int] = mapped_column(Integer)
    taken_at: Mapped[str | None] = mapped_column(String(40))  # EXIF DateTimeOriginal
    latitude: Mapped[float | None] = mapped_column(Float)  # EXIF GPS
    longitude: Mapped[float | None] = mapped_column(Float)
    encounter_id: Mapped[int | None] = mapped_column(ForeignKey("encounters.id"), index=True)
    crop_box: Mapped[str | None] = mapped_column(String(100))
    crop_status: Mapped[str] = mapped_column(String(40))
    added_at: Mapped[datetime] = mapped_column(DateTime)
    # Derived from the decisions (cached here): pending | confirmed | unsure, and the individual when confirmed.
    state: Mapped[str] = mapped_column(String(20), index=True)
    individual_id: Mapped[int | None] = mapped_column(ForeignKey("individuals.id"), index=True)
    version: Mapped[int] = mapped_column(Integer, default=0)  # bumped by every decision: concurrent deciders conflict


class Rejected(Base):
    """A photo that could not be read: recorded with its reason, never a catalog photo."""

    __tablename__ = "rejected_photos"
    id: Mapped[int] = mapped_column(primary_key=True)
    original_name: Mapped[str] = mapped_column(String(1000))
    reason: Mapped[str] = mapped_column(String(300))
    added_at: Mapped[datetime] = mapped_column(DateTime)


class Model(Base):
    __tablename__ = "models"
    id: Mapped[int] = mapped_column(primary_key=True)
    version: Mapped[int] = mapped_column(Integer, unique=True)
    file_hash: Mapped[str] = mapped_column(String(200))
    source: Mapped[dict] = mapped_column(JSON)  # checkpoint path(s) relative to the catalog folder, or zero-shot
    # with source, file_hash and the columns below: the gallery record (whaleid.search.record.GalleryRecord)
    threshold: Mapped[dict | None] = mapped_column(JSON)  # {"value": float | {species: float}}
    preprocess: Mapped[dict | None] = mapped_column(JSON)
    img_size: Mapped[int | None] = mapped_column(Integer)  # null: as the model file says
    tta_flip: Mapped[bool] = mapped_column(Boolean, default=False)
    scoring: Mapped[dict | None] = mapped_column(JSON)  # IdentifyConfig: the ranking stages (re-ranking inside)
    fusion: Mapped[dict | None] = mapped_column(JSON)  # the fitted fusion of cosine and matches, when re-ranking
    created_at: Mapped[datetime] = mapped_column(DateTime)


class Embedding(Base):
    __tablename__ = "embeddings"
    photo_id: Mapped[int] = mapped_column(ForeignKey("photos.id"), primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"), primary_key=True)
    vector: Mapped[bytes] = mapped_column(LargeBinary)  # float32, unit length


class MatchRun(Base):
    """What the model proposed for a photo, kept exactly as shown to the reviewer."""

    __tablename__ = "match_runs"
    id: Mapped[int] = mapped_column(primary_key=True)
    photo_id: Mapped[int] = mapped_column(ForeignKey("photos.id"), index=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    candidates: Mapped[list] = mapped_column(JSON)  # [{"individual": catalog id, "score": float}], best first
    batch_matches: Mapped[list] = mapped_column(JSON)  # [{"photo": photo id, "score": float}]: same-batch photos
    filters: Mapped[dict] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime)


class Decision(Base):
    """An append-only event: confirm | new | unsure (a photo), merge (two individuals), undo (an earlier event),
    rename (an individual's name) or edit (an encounter's details); the last two say what they changed."""

    __tablename__ = "decisions"
    __table_args__ = (UniqueConstraint("undoes_id"),)  # an event is undone at most once
    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(20))
    photo_id: Mapped[int | None] = mapped_column(ForeignKey("photos.id"), index=True)
    individual_id: Mapped[int | None] = mapped_column(ForeignKey("individuals.id"))
    other_individual_id: Mapped[int | None] = mapped_column(ForeignKey("individuals.id"))  # merge: merged into this
    undoes_id: Mapped[int | None] = mapped_column(ForeignKey("decisions.id"))
    reviewer: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime)
    match_run_id: Mapped[int | None] = mapped_column(ForeignKey("match_runs.id"))
    encounter_id: Mapped[int | None] = mapped_column(ForeignKey("encounters.id"), index=True)  # edit: this one
    details: Mapped[dict | None] = mapped_column(JSON)  # rename, edit: {field: {"before": old, "after": new}}


class Setting(Base):
    """Catalog-wide values (the active model)."""

    __tablename__ = "settings"
    key: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[dict] = mapped_column(JSON)
