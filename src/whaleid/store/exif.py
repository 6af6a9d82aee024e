"""When and where a photo was taken, from its EXIF block (absent or unreadable EXIF gives nothing)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

DATE_TAKEN = 0x9003  # DateTimeOriginal, in the Exif IFD
EXIF_IFD = 0x8769
GPS_IFD = 0x8825


def _degrees(value, ref) -> float | None:
    try:
        d, m, s = (float(x) for x in value)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    sign = -1.0 if str(ref).upper() in ("S", "W") else 1.0
    return sign * (d + m / 60 + s / 3600)


def photo_exif(path: str | Path) -> tuple[str | None, float | None, float | None]:
    """(date taken as ISO text, latitude, longitude), each None when the photo does not say."""
    try:
        with Image.open(path) as image:
            exif = image.getexif()
            taken = exif.get_ifd(EXIF_IFD).get(DATE_TAKEN)
            gps = exif.get_ifd(GPS_IFD)
    except Exception:  # no EXIF, or EXIF a camera wrote badly: the photo is still a photo
        return None, None, None
    date = None
    if isinstance(taken, str) and len(taken) >= 10:
        date = taken[:10].replace(":", "-") + (("T" + taken[11:19]) if len(taken) >= 19 else "")
    latitude = _degrees(gps.get(2), gps.get(1)) if gps else None
    longitude = _degrees(gps.get(4), gps.get(3)) if gps else None
    return date, latitude, longitude
