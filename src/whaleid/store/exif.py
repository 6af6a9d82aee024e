"""When and where a photo was taken, from its EXIF block (absent or unreadable EXIF gives nothing), and what
counts as a date and a place at all: Darwin Core exports carry them, so a wrong one must not get in."""

from __future__ import annotations

import math
from datetime import date, datetime
from pathlib import Path

from PIL import Image

from whaleid.errors import UserError

DATE_TAKEN = 0x9003  # DateTimeOriginal, in the Exif IFD
EXIF_IFD = 0x8769
GPS_IFD = 0x8825
LIMITS = {"latitude": 90.0, "longitude": 180.0}


def is_iso_date(text: str) -> bool:
    """Whether ``text`` is an ISO 8601 date (2026-07-01) or date-time (2026-07-01T14:30:00, with a zone or not)."""
    for parse in (date.fromisoformat, datetime.fromisoformat):
        try:
            parse(text)
            return True
        except (TypeError, ValueError):
            pass
    return False


def is_coordinate(value, kind: str) -> bool:
    """Whether ``value`` is a finite latitude or longitude (``kind``) within its range."""
    number = isinstance(value, int | float) and not isinstance(value, bool)
    return number and math.isfinite(value) and abs(value) <= LIMITS[kind]


def check_encounter(when: str | None, latitude: float | None, longitude: float | None) -> None:
    """One line for a date that is not ISO 8601 or a latitude or longitude off the globe."""
    if when is not None and not (isinstance(when, str) and is_iso_date(when)):
        raise UserError(f"date {when!r} is not an ISO 8601 date (2026-07-01) or date-time (2026-07-01T14:30)")
    for kind, value in (("latitude", latitude), ("longitude", longitude)):
        if value is not None and not is_coordinate(value, kind):
            limit = LIMITS[kind]
            raise UserError(f"{kind} {value!r} is not a number from {-limit:g} to {limit:g}")


def _degrees(value, ref, kind: str) -> float | None:
    try:
        d, m, s = (float(x) for x in value)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    sign = -1.0 if str(ref).upper() in ("S", "W") else 1.0
    degrees = sign * (d + m / 60 + s / 3600)
    return degrees if is_coordinate(degrees, kind) else None


def photo_exif(path: str | Path) -> tuple[str | None, float | None, float | None]:
    """(date taken as ISO text, latitude, longitude), each None when the photo does not say (or says nonsense)."""
    try:
        with Image.open(path) as image:
            exif = image.getexif()
            taken = exif.get_ifd(EXIF_IFD).get(DATE_TAKEN)
            gps = exif.get_ifd(GPS_IFD)
    except Exception:  # no EXIF, or EXIF a camera wrote badly: the photo is still a photo
        return None, None, None
    when = None
    if isinstance(taken, str) and len(taken) >= 10:
        when = taken[:10].replace(":", "-") + (("T" + taken[11:19]) if len(taken) >= 19 else "")
        when = when if is_iso_date(when) else None
    latitude = _degrees(gps.get(2), gps.get(1), "latitude") if gps else None
    longitude = _degrees(gps.get(4), gps.get(3), "longitude") if gps else None
    return when, latitude, longitude
