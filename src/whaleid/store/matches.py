"""Why a candidate was proposed: the keypoint matches that the second stage verified between a query photo
and a catalog photo. Computed on demand with the active model's matcher (the stored keypoints, extracted
where missing) and cached per model and pair under ``cache/matches<model>/``, named by the photos' content."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from whaleid.files import atomic_path
from whaleid.search.local import matched_points
from whaleid.store.db import Database
from whaleid.store.errors import NotFound
from whaleid.store.models import Models
from whaleid.store.schema import Photo


class Matches:
    """The verified matches between two photos of one catalog, as its active model's second stage finds them."""

    def __init__(self, directory: Path, db: Database, models: Models):
        self.dir, self.db, self.models = directory, db, models

    def between(self, photo_id: int, other_id: int) -> dict:
        """``matcher`` (None: the model does not re-rank, so nothing was matched), ``count`` and ``pairs``:
        [x, y in the first photo, x, y in the other], in units of each photo's long side as the model sees it."""
        with self.db.reader() as session:
            model = self.models.active(session)
            photos = [session.get(Photo, i) for i in (photo_id, other_id)]
            for i, photo in zip((photo_id, other_id), photos):
                if photo is None:
                    raise NotFound(f"no photo {i}")
        rerank = self.models.record(model).scoring.rerank
        if rerank is None:
            return {"matcher": None, "detector": None, "count": None, "pairs": []}
        names = [Path(p.file).stem for p in photos]
        cached = self.dir / "cache" / f"matches{model.id}" / f"{names[0]}-{names[1]}.npy"
        if cached.is_file():
            pairs = np.load(cached, allow_pickle=False)
        else:
            first, other = self.models.photo_keypoints(model, [p.file for p in photos])
            pairs = matched_points(first, other, rerank.match)
            cached.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(cached) as tmp, open(tmp, "wb") as f:
                np.save(f, pairs, allow_pickle=False)
        return {
            "matcher": rerank.match.matcher,
            "detector": rerank.keypoints.detector,
            "count": len(pairs),
            "pairs": np.round(pairs.astype(np.float64), 5).tolist(),
        }
