"""What leaves the catalog: the Happywhale CSV (train the next model on it), the decision log, Darwin Core
occurrences, and the catalog's numbers."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pandas as pd
from sqlalchemy import func, select
from sqlalchemy.orm import Session, aliased

from whaleid.errors import UserError
from whaleid.files import atomic_path, inside, spreadsheet_safe
from whaleid.store.db import Database, database_file
from whaleid.store.population import CaptureHistories, capture_histories
from whaleid.store.queries import confirmed, undone
from whaleid.store.schema import Decision, Encounter, Individual, Photo, Rejected

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

# the headers of exports that whaleid wrote before a column was added: replaced like its own
EARLIER_HEADERS = {"decisions": "event,kind,photo_sha256,individual,merged_into,undoes,reviewer,time"}


class Exports:
    """The exports and numbers of one catalog folder."""

    def __init__(self, directory: Path, db: Database):
        self.dir, self.db = directory, db

    def table(self, kind: str) -> pd.DataFrame:
        """``happywhale`` (the grown catalog, to train the next model on), ``decisions`` (the event log) or
        ``dwc`` (Darwin Core occurrences), with no text cell a spreadsheet would run as a formula."""
        exporters = {"happywhale": export_happywhale, "decisions": export_decisions, "dwc": export_dwc}
        if kind not in exporters:
            raise UserError(f"unknown export format {kind!r}; valid: {', '.join(exporters)}")
        with self.db.reader() as session:
            return spreadsheet_safe(exporters[kind](session))  # ids, names and notes people typed

    def export(self, kind: str, path: str | os.PathLike, *, force: bool = False) -> int:
        """One of the :meth:`table` exports written as CSV; returns the rows written.

        Never inside the catalog folder nor over its database; a file that is there already is replaced
        only when it is an earlier export of this kind (its header says so), or with ``force``.
        """
        table = self.table(kind)
        header = ",".join(table.columns)

        ours = {header, EARLIER_HEADERS.get(kind)}.__contains__  # this export's, or an earlier whaleid's
        self._write(Path(path), ours, kind, force, lambda tmp: table.to_csv(tmp, index=False))
        return len(table)

    def capture_histories(self, occasion: str = "month", season_start: int = 1) -> CaptureHistories:
        with self.db.reader() as session:
            return capture_histories(session, occasion, season_start)

    def export_histories(
        self, path: str | os.PathLike, occasion: str = "month", season_start: int = 1, *, force: bool = False
    ) -> CaptureHistories:
        """Capture histories written as a CSV matrix, or in MARK's ``.inp`` format when ``path`` ends so; the
        same rules as :meth:`export` for where and over what."""
        path, histories = Path(path), self.capture_histories(occasion, season_start)
        if path.suffix.lower() == ".inp":
            text = histories.inp()
            ours = text.split(":")[0]  # "/* whaleid capture histories by month"
            self._write(
                path, lambda first: first.startswith(ours), "MARK", force, lambda tmp: tmp.write_text(text, "utf-8")
            )
        else:
            table = spreadsheet_safe(histories.table())
            self._write(path, _history_header, "capture-history", force, lambda tmp: table.to_csv(tmp, index=False))
        return histories

    def _write(self, path: Path, ours: Callable[[str], bool], kind: str, force: bool, write) -> None:
        """``write(tmp)`` then ``tmp`` moved to ``path``: outside the catalog, and over a file only when ``ours``
        says its first line is an earlier export of this kind."""
        database = database_file(self.db.engine)
        files = [database.with_name(database.name + s) for s in ("", "-wal", "-shm")] if database else []
        if inside(path, self.dir) or any(inside(path, f) for f in files):
            raise UserError(f"{path} is in the catalog {self.dir}: write exports outside the catalog folder")
        if path.is_dir():
            raise UserError(f"{path} is a folder: give --out a file name")
        if path.exists() and not force and not ours(_first_line(path)):
            raise UserError(f"{path} exists and is not a {kind} export: choose another --out, or add --force")
        try:
            with atomic_path(path) as tmp:
                write(tmp)
        except PermissionError as error:
            raise UserError(f"cannot write {path} ({error.strerror}): choose a folder you can write to") from None

    def stats(self) -> dict:
        """Photos by state, individuals, rejected photos, decisions per reviewer, new individuals per encounter."""
        with self.db.reader() as session:
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


def _history_header(first: str) -> bool:
    """Whether a CSV's first line is a capture-history header (its occasions change from one export to the next)."""
    return first == "individual" or first.startswith("individual,")


def _first_line(path: Path) -> str:
    """The first line of a file, as an export's header would be ("" when it is not text)."""
    with open(path, "rb") as f:
        head = f.readline(4096)
    return head.decode("utf-8", "replace").rstrip("\r\n")


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
            Decision.encounter_id,
            Decision.details,
        )
        .outerjoin(Photo, Decision.photo_id == Photo.id)
        .outerjoin(first, Decision.individual_id == first.id)
        .outerjoin(second, Decision.other_individual_id == second.id)
        .order_by(Decision.id)
    ).all()
    columns = ["event", "kind", "photo_sha256", "individual", "merged_into", "undoes", "reviewer", "time"]
    table = pd.DataFrame(rows, columns=[*columns, "encounter", "changes"])
    # a rename's or an encounter edit's values before and after, as JSON: the audit trail whole
    table["changes"] = [json.dumps(d, ensure_ascii=False, sort_keys=True) if d else "" for d in table["changes"]]
    table["encounter"] = table["encounter"].astype("Int64")
    return table


def export_dwc(session: Session) -> pd.DataFrame:
    """Darwin Core occurrences: one per confirmed photo, identified by the reviewer of its standing decision."""
    standing = (
        select(Decision.photo_id, func.max(Decision.id).label("event"))
        .where(Decision.kind.in_(("confirm", "new")), ~undone())
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
    return pd.DataFrame([_occurrence(r) for r in rows], columns=DWC_COLUMNS)


def _occurrence(r) -> dict:
    """One Darwin Core occurrence: the photo's own date and place where it has them, else its encounter's."""
    return {
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
