"""Housekeeping of the background jobs table (the web app's uploads)."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from whaleid.store.catalog import CatalogStore, now
from whaleid.store.schema import Job


def expire_uploads(store: CatalogStore, idle: timedelta) -> list[int]:
    """Uploads still waiting for photos (or a start) after ``idle`` untouched become ``expired``: their ids, so
    that the caller removes their staged photos (an abandoned upload would otherwise keep them for ever)."""
    hours = idle.total_seconds() / 3600
    with store.session() as session, session.begin():
        stale = session.scalars(
            select(Job).where(Job.state == "receiving", Job.updated_at < now() - idle).with_for_update()
        ).all()
        for job in stale:
            job.state, job.updated_at = "expired", now()
            job.error = f"expired: nothing arrived for {hours:g} h and it was never started"
            job.progress = {**job.progress, "stage": "expired"}
        return [job.id for job in stale]
