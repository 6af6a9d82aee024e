"""Photos as the browser gets them: JPEG renditions at a few sizes, made once and cached by content hash
(originals may be HEIC or TIFF, which browsers do not show, and are often far larger than a screen)."""

from __future__ import annotations

from pathlib import Path

from whaleid.data.images import ImageError, open_image
from whaleid.files import atomic_path
from whaleid.store.browse import photo_file
from whaleid.store.catalog import CatalogStore
from whaleid.web.jobs import PixelBudget, Refused, header_pixels

SIZES = {"thumb": 320, "medium": 1024, "full": 2400, "crop": 1024}


def rendition(store: CatalogStore, budget: PixelBudget, photo_id: int, size: str) -> Path:
    """The cached JPEG of a photo at ``size`` (``crop``: what the model sees), made on first request
    within the server's pixel budget (the original is decoded, whatever the size asked)."""
    file, sha = photo_file(store, photo_id)
    target = store.dir / "cache" / "web" / f"{sha}-{size}.jpg"
    if target.is_file():
        return target
    original = store.dir / "photos" / file
    with budget.hold(header_pixels(original)):
        source = store.models.model_input(file) if size == "crop" else original
        try:
            image = open_image(source)
        except ImageError as error:
            raise Refused(404, f"photo {photo_id} cannot be shown: {error.reason}") from None
        image.thumbnail((SIZES[size], SIZES[size]))
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as tmp:
            image.save(tmp, format="JPEG", quality=85)
    return target
