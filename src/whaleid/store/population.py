"""Capture histories: what mark-recapture analyses start from, built from the catalog's decisions only.

One row per individual, one column per sampling occasion (a day, a month, a season or an
encounter, as the user chooses), 1 where the individual was seen on that occasion. A sighting is
a confirmed photo; it is dated by its encounter's date, else by the photo's own (EXIF). Photos
still waiting for a decision are not in it, and are counted, so a reader knows what is missing.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from whaleid.errors import UserError
from whaleid.store.schema import Encounter, Individual, Photo

OCCASIONS = ("day", "month", "season", "encounter")


@dataclass(frozen=True)
class CaptureHistories:
    """The 0/1 matrix (individuals x occasions, both in order) and what it leaves out."""

    matrix: pd.DataFrame  # index: individual ids; columns: occasion labels, in time order
    occasion: str
    undated: int  # confirmed photos that could not be placed on an occasion (no date, or no encounter)
    waiting: int  # photos not decided yet (pending or unsure): not in the histories

    def left_out(self) -> str:
        """The confirmed photos that are in no column, in words."""
        why = "no encounter" if self.occasion == "encounter" else "no date"
        return f"{self.undated} confirmed photos left out ({why})"

    def table(self) -> pd.DataFrame:
        """The matrix as a CSV-ready table: an ``individual`` column, then one column per occasion."""
        return self.matrix.rename_axis("individual").reset_index()

    def inp(self) -> str:
        """MARK's input format: a comment naming the occasions, then per individual its history string, a count
        of 1 and a semicolon (the individual's id as a comment in front)."""
        occasions = " ".join(map(str, self.matrix.columns))
        lines = [
            f"/* whaleid capture histories by {self.occasion}: {len(self.matrix)} individuals, "
            f"{self.matrix.shape[1]} occasions ({occasions}); confirmed photos only, {self.waiting} photos "
            f"still waiting for review, {self.left_out()} */"
        ]
        for individual, row in self.matrix.iterrows():
            history = "".join(str(int(v)) for v in row.to_numpy())
            lines.append(f"/* {_comment_safe(str(individual))} */ {history} 1;")
        return "\n".join(lines) + "\n"


def capture_histories(session: Session, occasion: str = "month", season_start: int = 1) -> CaptureHistories:
    """Capture histories by ``occasion``. A season is a year that starts in month ``season_start`` (7: July to
    June, labelled by the year it starts in)."""
    if occasion not in OCCASIONS:
        raise UserError(f"unknown occasion {occasion!r}; valid: {', '.join(OCCASIONS)}")
    if not 1 <= season_start <= 12:
        raise UserError(f"the season's first month must be 1-12, got {season_start}")
    rows = session.execute(
        select(Individual.catalog_id, Photo.encounter_id, Encounter.date, Photo.taken_at)
        .join(Individual, Photo.individual_id == Individual.id)
        .outerjoin(Encounter, Photo.encounter_id == Encounter.id)
        .where(Photo.state == "confirmed")
        .order_by(Photo.id)
    ).all()
    sightings = pd.DataFrame(rows, columns=["individual", "encounter", "encounter_date", "taken_at"])
    sightings["when"] = sightings["encounter_date"].fillna(sightings["taken_at"]).str[:10]
    keys = _occasions(sightings, occasion, season_start)
    placed = sightings.assign(occasion=keys).dropna(subset=["occasion"])
    matrix = pd.crosstab(placed["individual"], placed["occasion"]).clip(upper=1)
    matrix = matrix.reindex(columns=_in_time_order(placed, occasion), fill_value=0)
    matrix.columns = matrix.columns.map(str)
    matrix.columns.name = None
    waiting = session.scalar(select(func.count()).where(Photo.state.in_(("pending", "unsure"))))
    return CaptureHistories(matrix.sort_index(), occasion, int(keys.isna().sum()), int(waiting or 0))


def _occasions(sightings: pd.DataFrame, occasion: str, season_start: int) -> pd.Series:
    """Each sighting's occasion label (None where it has none): 2026-07-01, 2026-07, 2026, or encounter-3."""
    if occasion == "encounter":
        return sightings["encounter"].map(lambda e: None if pd.isna(e) else f"encounter-{int(e)}")
    dates = pd.to_datetime(sightings["when"], format="%Y-%m-%d", errors="coerce")
    if occasion == "day":
        labels = dates.dt.strftime("%Y-%m-%d")
    elif occasion == "month":
        labels = dates.dt.strftime("%Y-%m")
    else:
        labels = (dates.dt.year - (dates.dt.month < season_start)).map(lambda y: None if pd.isna(y) else str(int(y)))
    return labels.where(dates.notna(), None)


def _in_time_order(placed: pd.DataFrame, occasion: str) -> list[str]:
    """Occasions in time order: labels of dates sort as text; encounters by their first date, then number."""
    if occasion != "encounter":
        return sorted(placed["occasion"].unique())
    first = placed.groupby("occasion").agg(when=("when", "min"), number=("encounter", "min"))
    return first.sort_values(["when", "number"], na_position="last").index.tolist()


def _comment_safe(text: str) -> str:
    """An id as text that cannot end MARK's comment early."""
    return text.replace("*/", "* /")
