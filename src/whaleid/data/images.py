"""Reading photos: the one place in whaleid where an image file is opened.

Every stage (preprocess, train, embed, identify, the web app) reads photos through
:func:`open_image`, so that a photo looks the same everywhere (EXIF orientation applied,
RGB) and so that a bad file fails in one predictable way: :class:`ImageError` with a
short reason that can be shown to a person and stored in a problems table.

Decisions:

- Truncated files are errors. Pillow's ``ImageFile.LOAD_TRUNCATED_IMAGES`` would
  silently pad a cut-off JPEG with grey, and a half-grey whale trains and matches
  badly without anyone noticing. whaleid keeps the flag ``False``; if some other
  library switched it on, :func:`open_image` switches it back and logs a warning.
- A zeroed or cut tail is an error too, though the decoders pass it (they stop once
  they have every pixel and fill what is lost with black or grey): a PNG must pass its
  chunk checksums, a JPEG must reach its end-of-image marker (:func:`_tail_reason`).
- Transparent pixels are composited on **black** (:data:`ALPHA_BACKGROUND`): cut-out
  fins and flukes then look like the background-removed crops made by ``preprocess``.
- 16-bit and 32-bit greyscale photos are scaled to 8 bits (``I;16``: value / 257, so
  the full 16-bit range maps to 0..255) instead of being clipped at 255, which would
  turn most of a 16-bit photo white.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import re
import stat
import warnings
from pathlib import Path

import numpy as np
import pillow_heif
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from whaleid.errors import UserError

__all__ = ["ALPHA_BACKGROUND", "ImageError", "check_image", "decode_bytes", "image_suffix", "open_image"]

log = logging.getLogger(__name__)

#: RGB colour that transparent pixels are composited onto.
ALPHA_BACKGROUND: tuple[int, int, int] = (0, 0, 0)

ImageFile.LOAD_TRUNCATED_IMAGES = False
pillow_heif.register_heif_opener()  # iPhone photos (HEIC) open like any other

#: The file suffix of each format a photo is stored as (by what the bytes are, not what the name says).
SUFFIXES = {"JPEG": ".jpg", "PNG": ".png", "TIFF": ".tif", "HEIF": ".heic", "WEBP": ".webp", "BMP": ".bmp"}

_TAIL_CHECKED = ("PNG", "JPEG", "MPO")
_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
_PNG_END = b"IEND\xaeB`\x82"  # the IEND chunk type and its (constant) checksum
#: A JPEG marker: FF then a code; in entropy-coded data FF is only followed by 00 (a stuffed
#: byte) or a restart code D0-D7, and FF FF is fill before a marker.
_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


class ImageError(UserError):
    """A photo that cannot be read; ``reason`` is short and meant for people.

    Typical reasons: ``"missing file"``, ``"empty file"``, ``"not a file"``,
    ``"not a regular file"``, ``"file name too long"``, ``"not an image"``,
    ``"truncated JPEG"``, ``"truncated PNG (zeroed or cut tail)"``, ``"corrupt PNG (...)"``,
    ``"permission denied"``, ``"image too large (... pixels)"``.
    """

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):  # keep picklable across worker processes
        return (type(self), (self.path, self.reason))


def _guard_truncation_flag() -> None:
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        log.warning(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES was switched on by other code; "
            "whaleid switches it off so that truncated photos are reported, not padded"
        )
        ImageFile.LOAD_TRUNCATED_IMAGES = False


pillow_heif.register_heif_opener()  # iPhone photos (HEIC) open like any other

#: The file suffix of each format a photo is stored as (by what the bytes are, not what the name says).
SUFFIXES = {"JPEG": ".jpg", "PNG": ".png", "TIFF": ".tif", "HEIF": ".heic", "WEBP": ".webp", "BMP": ".bmp"}


def _os_reason(exc: OSError) -> str:
    """A file-system error (not a decoding one) as a short reason."""
    if isinstance(exc, FileNotFoundError):
        return "missing file"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if exc.errno == errno.ENAMETOOLONG:
        return "file name too long"
    return f"cannot access file ({exc.strerror or exc})"


def _file_reason(path: Path) -> str | None:
    """Reason a path cannot be a photo, judged without opening it (None if it may be)."""
    try:
        st = path.stat()
    except OSError as exc:
        return _os_reason(exc)
    except ValueError:  # os.stat refuses a NUL byte in the path
        return "control character in file name"
    if stat.S_ISDIR(st.st_mode):
        return "not a file"
    if not stat.S_ISREG(st.st_mode):  # a pipe or device: opening it could block or read forever
        return "not a regular file"
    if st.st_size == 0:
        return "empty file"
    return None


def _tail_reason(data: bytes, fmt: str | None) -> str | None:
    """Why a decoded PNG or JPEG is still incomplete: a tail zeroed or cut off.

    The decoders stop once they have every pixel, so a file whose last part was zeroed
    (a failed copy or disk) decodes without error, with black or grey rows. A PNG must
    pass its chunk checksums up to IEND; a JPEG must have an end-of-image marker after
    its last start-of-scan (entropy-coded data never holds FF D9, and bytes after the
    marker are allowed).
    """
    if fmt == "PNG":
        try:
            with Image.open(io.BytesIO(data)) as again:
                again.verify()
        except Exception as exc:
            if _PNG_END in data:
                return f"corrupt PNG ({_first_line(exc)})"
            return "truncated PNG (zeroed or cut tail)"
    elif fmt in ("JPEG", "MPO") and not _jpeg_ends(data):
        return f"truncated {fmt} (zeroed or cut tail)"
    return None


def _jpeg_ends(data: bytes) -> bool:
    """Whether the JPEG's chain of markers reaches its end-of-image marker (FF D9).

    Segments are skipped by their length and scans searched for the next marker, so an
    EXIF thumbnail's own EOI, or a trailer after the image (a phone's motion-photo video)
    that may hold any bytes, is never mistaken for the image's end.
    """
    pos = 2  # after SOI
    while match := _MARKER.search(data, pos):
        at, code = match.start(), data[match.start() + 1]
        if code == 0xD9:
            return True
        if code == 0x01:  # TEM, the one marker outside scans without a length
            pos = at + 2
        else:
            pos = at + 2 + int.from_bytes(data[at + 2 : at + 4], "big")
    return False


def _first_line(exc: BaseException) -> str:
    msg = str(exc)
    return msg.splitlines()[0][:80] if msg else type(exc).__name__


def _decode_reason(exc: BaseException, fmt: str | None) -> str:
    kind = fmt or "image"
    msg = str(exc)
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, Image.DecompressionBombError):
        return "image too large (decompression bomb guard)"
    if "truncated" in msg.lower() or isinstance(exc, EOFError):
        return f"truncated {kind}"
    return f"corrupt {kind} ({_first_line(exc)})"


def _load(path: Path, *, draft: bool) -> Image.Image:
    """Open and fully decode ``path``; raise ImageError. The caller must close it."""
    reason = _file_reason(path)
    if reason:
        raise ImageError(path, reason)
    _guard_truncation_flag()
    try:
        im = Image.open(path)
    except UnidentifiedImageError:
        raise ImageError(path, "not an image") from None
    except OSError as exc:
        if exc.errno is None:  # Pillow's own errors carry no errno
            raise ImageError(path, _decode_reason(exc, None)) from None
        raise ImageError(path, _os_reason(exc)) from None
    except Exception as exc:  # a plugin choking on odd bytes may raise anything; one photo never stops a run
        raise ImageError(path, _decode_reason(exc, None)) from None
    fmt = im.format
    try:
        if draft and fmt == "JPEG":
            # Decode at 1/8 scale: every entropy-coded byte is still read, so
            # truncation and corruption are found, at a fraction of the cost.
            im.draft(im.mode, (1, 1))
        im.load()
        reason = _tail_reason(path.read_bytes(), fmt) if fmt in _TAIL_CHECKED else None
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, ...
        im.close()
        raise ImageError(path, _decode_reason(exc, fmt)) from None
    if reason:
        im.close()
        raise ImageError(path, reason)
    return im


def _to_8bit(im: Image.Image) -> Image.Image:
    """High-bit-depth and float greyscale to mode L without clipping the range away."""
    a = np.asarray(im)
    if im.mode.startswith("I;16"):
        a = a.astype(np.float64) / 257.0
    elif im.mode == "F" and a.size and np.nanmin(a) >= 0 and np.nanmax(a) <= 1:
        a = a.astype(np.float64) * 255.0
    else:  # I (32-bit) or F: 0..255 kept, 0..65535 scaled, anything else stretched
        a = a.astype(np.float64)
        lo, hi = (float(np.nanmin(a)), float(np.nanmax(a))) if a.size else (0.0, 0.0)
        if lo >= 0 and hi <= 255:
            pass
        elif lo >= 0 and hi <= 65535:
            a = a / 257.0
        elif hi > lo:
            a = (a - lo) * (255.0 / (hi - lo))
        else:
            a = np.zeros_like(a)
    a = np.nan_to_num(a, nan=0.0)
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), mode="L")


def _to_rgb(im: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    if im.mode == "RGB":
        return im
    if im.mode.startswith("I") or im.mode == "F":
        return _to_8bit(im).convert("RGB")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    elif im.mode in _ALPHA_MODES and im.mode != "RGBA":
        im = im.convert("RGBA")
    if im.mode == "RGBA":
        base = Image.new("RGBA", im.size, (*background, 255))
        return Image.alpha_composite(base, im).convert("RGB")
    return im.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV, RGBX, ...


def decode_bytes(data: bytes, max_pixels: int) -> str:
    """The format of a photo held in memory, after decoding every pixel; :class:`ImageError` when it is
    empty, not an image, truncated, corrupt, or has more than ``max_pixels`` pixels (checked from the
    header, before any pixel is decoded: a decompression bomb never gets to allocate)."""
    source = Path("<upload>")
    if not data:
        raise ImageError(source, "empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageError(source, "not an image") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(source, "image too large (decompression bomb guard)") from None
    except Exception as exc:
        raise ImageError(source, _decode_reason(exc, None)) from None
    with im:
        fmt = im.format
        if im.width * im.height > max_pixels:
            raise ImageError(source, f"image too large ({im.width}x{im.height} pixels; at most {max_pixels:,})")
        try:
            im.load()
        except Exception as exc:
            raise ImageError(source, _decode_reason(exc, fmt)) from None
    reason = _tail_reason(data, fmt) if fmt in _TAIL_CHECKED else None
    if reason:
        raise ImageError(source, reason)
    return fmt or "unknown"


def image_suffix(path: str | os.PathLike[str]) -> str:
    """The suffix that names a stored copy of this photo, from its detected format (``.img`` when unusual)."""
    with Image.open(path) as im:
        return SUFFIXES.get(im.format or "", ".img")


def open_image(path: str | os.PathLike[str], *, background: tuple[int, int, int] = ALPHA_BACKGROUND) -> Image.Image:
    """Read a photo fully, upright and in RGB, or raise :class:`ImageError`.

    Decoding happens here, not lazily later, so a truncated file fails at this call.
    EXIF orientation is applied (a portrait phone photo stays portrait); a broken EXIF
    block is ignored rather than making the photo unreadable. Any mode becomes RGB;
    transparent pixels are composited onto ``background`` (black by default).
    The returned image is independent of the file (which is closed).
    """
    path = Path(path)
    im = _load(path, draft=False)
    try:
        try:
            upright = ImageOps.exif_transpose(im)
        except Exception as exc:  # corrupt EXIF: keep the pixels as stored
            log.debug("%s: ignoring unreadable EXIF orientation (%s)", path, exc)
            upright = im
        try:
            out = _to_rgb(upright, background)
        except Exception as exc:
            raise ImageError(path, f"cannot convert mode {upright.mode} to RGB ({exc})") from None
        return out.copy() if out is im else out
    finally:
        im.close()


def check_image(path: str | os.PathLike[str], *, decode: bool = True) -> str | None:
    """Why ``path`` cannot be read as a photo, or None if it can.

    With ``decode=True`` (the default) the whole file is decoded, because truncation
    and corrupt data only show up then; JPEGs are decoded at 1/8 scale, which reads
    every byte but costs a fraction of a full decode. With ``decode=False`` only the
    file itself is checked (exists, is a file, not empty): fast, but blind to content.
    """
    path = Path(path)
    if not decode:
        return _file_reason(path)
    try:
        im = _load(path, draft=True)
    except ImageError as exc:
        return exc.reason
    im.close()
    return None
