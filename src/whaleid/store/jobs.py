"""The web app's background jobs in the database (uploads, reindexes): made, staged, claimed by the one
worker, reported on, finished; uploads left waiting expire."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from whaleid.store.db import Database
from whaleid.store.errors import ConflictError, NotFound
from whaleid.store.intake import EncounterInfo
from whaleid.store.queries import chunks, now
from whaleid.store.schema import Encounter, Job, Photo


def describe(job: Job) -> dict:
    """A job as the API shows it (staged file names stay private)."""
    return {
        "id": job.id,
        "kind": job.kind,
        "state": job.state,
        "encounter": job.payload.get("encounter"),
        "files": len(job.payload.get("files", [])),
        "progress": job.progress,
        "result": job.result,
        "error": job.error,
        "created_by": job.created_by,
        "created_at": job.created_at.isoformat(timespec="seconds"),
    }


def new_upload(db: Database, encounter: EncounterInfo, user: str) -> dict:
    """An encounter and an upload job waiting for its photos."""
    with db.session() as session, session.begin():
        row = Encounter(**vars(encounter), created_at=now())
        session.add(row)
        session.flush()
        return describe(_new(session, "upload", {"encounter": row.id, "files": []}, user, "receiving"))


def new_reindex(db: Database, version: int, user: str) -> dict:
    """A job that embeds every photo with model ``version`` and makes it the active one."""
    with db.session() as session, session.begin():
        return describe(_new(session, "reindex", {"version": version}, user, "queued"))


def new_retrain(db: Database, options: dict, user: str) -> dict:
    """A job that trains, judges and registers the catalog's next model (see :mod:`whaleid.store.retrain`)."""
    with db.session() as session, session.begin():
        return describe(_new(session, "retrain", options, user, "queued"))


def _new(session: Session, kind: str, payload: dict, user: str, state: str) -> Job:
    job = Job(
        kind=kind,
        state=state,
        payload=payload,
        progress={"stage": state, "done": 0, "total": 0},
        created_by=user,
        created_at=now(),
        updated_at=now(),
    )
    session.add(job)
    session.flush()
    return job


def check_receiving(db: Database, job_id: int) -> None:
    """Refuse (404, 409) an upload that does not exist or takes no more photos."""
    with db.reader() as session:
        _checked(session.get(Job, job_id), job_id, "receiving")


def add_staged(db: Database, job_id: int, entry: dict, limit: int) -> bool:
    """A staged photo recorded in its upload; False (nothing recorded) when the upload holds ``limit`` already."""
    with db.session() as session, session.begin():
        job = _locked(session, job_id, "receiving")
        if len(job.payload["files"]) >= limit:
            return False
        files = [*job.payload["files"], entry]
        job.payload = {**job.payload, "files": files}
        job.progress = {"stage": "receiving", "done": len(files), "total": len(files)}
        job.updated_at = now()
    return True


def queue_upload(db: Database, job_id: int) -> None:
    """An upload that has its photos, queued for the worker."""
    with db.session() as session, session.begin():
        job = _locked(session, job_id, "receiving")
        if not job.payload["files"]:
            raise ConflictError(f"upload {job_id} has no photos yet")
        job.state, job.updated_at = "queued", now()
        job.progress = {"stage": "queued", "done": 0, "total": len(job.payload["files"])}


def _locked(session: Session, job_id: int, state: str) -> Job:
    return _checked(session.get(Job, job_id, with_for_update=True), job_id, state)


def _checked(job: Job | None, job_id: int, state: str) -> Job:
    if job is None or job.kind != "upload":
        raise NotFound(f"no upload {job_id}")
    if job.state != state:
        raise ConflictError(f"upload {job_id} is {job.state}, not {state}")
    return job


def job(db: Database, job_id: int) -> dict:
    with db.reader() as session:
        found = session.get(Job, job_id)
        if found is None:
            raise NotFound(f"no job {job_id}")
        return describe(found)


def recent(db: Database, limit: int = 20) -> list[dict]:
    with db.reader() as session:
        return [describe(j) for j in session.scalars(select(Job).order_by(Job.id.desc()).limit(limit))]


def requeue_running(db: Database) -> None:
    """Jobs a killed server left running are queued again."""
    with db.session() as session, session.begin():
        session.execute(update(Job).where(Job.state == "running").values(state="queued", updated_at=now()))


def claim_next(db: Database) -> tuple[int, str, dict] | None:
    """The oldest queued job, now running: its (id, kind, payload); None when none waits."""
    with db.session() as session, session.begin():
        found = session.scalar(
            select(Job).where(Job.state == "queued").order_by(Job.id).limit(1).with_for_update(skip_locked=True)
        )
        if found is None:
            return None
        found.state, found.updated_at = "running", now()
        return found.id, found.kind, dict(found.payload)


def report_progress(db: Database, job_id: int, stage: str, done: int, total: int) -> None:
    with db.session() as session, session.begin():
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(progress={"stage": stage, "done": done, "total": total}, updated_at=now())
        )


def finish(db: Database, job_id: int, state: str, result: dict | None = None, error: str | None = None) -> None:
    with db.session() as session, session.begin():
        found = session.get(Job, job_id)
        total = len(found.payload.get("files", [])) or found.progress.get("total", 0)
        found.state, found.result, found.updated_at, found.error = state, result, now(), error
        found.progress = {
            "stage": state,
            "done": total if state == "done" else found.progress.get("done", 0),
            "total": total,
        }


def photo_ids(db: Database, digests: list[str]) -> list[int]:
    """The ids of the catalog's photos with these contents, in the order given (those it has)."""
    with db.reader() as session:
        ids = dict(
            row
            for chunk in chunks(digests)
            for row in session.execute(select(Photo.sha256, Photo.id).where(Photo.sha256.in_(chunk))).all()
        )
    return [ids[d] for d in digests if d in ids]


def expire_uploads(db: Database, idle: timedelta) -> list[int]:
    """Uploads still waiting for photos (or a start) after ``idle`` untouched become ``expired``: their ids, so
    that the caller removes their staged photos (an abandoned upload would otherwise keep them for ever)."""
    hours = idle.total_seconds() / 3600
    with db.session() as session, session.begin():
        stale = session.scalars(
            select(Job).where(Job.state == "receiving", Job.updated_at < now() - idle).with_for_update()
        ).all()
        for found in stale:
            found.state, found.updated_at = "expired", now()
            found.error = f"expired: nothing arrived for {hours:g} h and it was never started"
            found.progress = {**found.progress, "stage": "expired"}
        return [found.id for found in stale]
