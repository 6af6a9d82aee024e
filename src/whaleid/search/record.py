"""How a gallery is made and scored, as one frozen, typed value.

Built once from an Identifier (the model and photo preparation its vectors record, the stages
that rank, the fitted fusion and threshold), saved in its folder and stored in a catalog's
model row; new photos are embedded only through :meth:`GalleryRecord.embedder`, so a query is
always made as the gallery was.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from whaleid.model import DEFAULT_IMG_SIZE
from whaleid.model.embed import Embedder, Ensemble
from whaleid.model.keypoints import KeypointConfig
from whaleid.preprocess.prepare import PreprocessConfig
from whaleid.search.config import IdentifyConfig
from whaleid.search.fusion import Fusion
from whaleid.search.ranking import check_threshold
from whaleid.settings import from_dict, to_dict

__all__ = ["GalleryRecord"]


@dataclass(frozen=True)
class GalleryRecord:
    """Model source and weights, image size, photo preparation, flip TTA, ranking stages, fusion and threshold."""

    source: dict = field(
        default_factory=dict
    )  # {"checkpoint": path} | {"checkpoints": [...], "ensemble"} | {"zero_shot"}
    weights: str | list | None = None  # the weights' hash(es), or "zero-shot NAME": what makes vectors comparable
    img_size: int = DEFAULT_IMG_SIZE
    preprocess: PreprocessConfig | None = None
    tta_flip: bool = False
    scoring: IdentifyConfig = field(default_factory=IdentifyConfig)  # the stages; re-ranking's keypoints inside
    fusion: Fusion | None = None
    threshold: float | dict[str, float] | None = None

    def __post_init__(self) -> None:
        check_threshold(self.threshold)

    @property
    def keypoints(self) -> KeypointConfig | None:
        """The local features the second stage needs of every photo, gallery and queries alike."""
        return None if self.scoring.rerank is None else self.scoring.rerank.keypoints

    @classmethod
    def of(
        cls, meta: dict, scoring: IdentifyConfig, fusion: Fusion | None = None, threshold: float | dict | None = None
    ) -> GalleryRecord:
        """The record of a gallery whose embeddings say ``meta``, ranked by ``scoring``."""
        return cls(
            source=dict(meta.get("source") or {}),
            weights=meta.get("weights"),
            img_size=int((meta.get("model") or {}).get("img_size", DEFAULT_IMG_SIZE)),
            preprocess=PreprocessConfig.from_dict(meta.get("preprocess")),
            tta_flip=bool(meta.get("tta_flip", False)),
            scoring=scoring,
            fusion=fusion,
            threshold=threshold,
        )

    def embedder(self, with_keypoints: bool = True, **options: Any) -> Embedder | Ensemble:
        """The model(s) that made the gallery, embedding new photos as it did (size, preparation, TTA, and the
        keypoints the second stage needs unless the caller stores them itself: ``with_keypoints=False``)."""
        recorded = {
            "tta_flip": self.tta_flip,
            "preprocess": None if self.preprocess is None else self.preprocess.to_dict(),
            "keypoints": self.keypoints if with_keypoints else None,
        }
        return Embedder.from_source(self.source, self.img_size, **{**options, **recorded})

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "weights": self.weights,
            "img_size": self.img_size,
            "preprocess": None if self.preprocess is None else self.preprocess.to_dict(),
            "tta_flip": self.tta_flip,
            "scoring": to_dict(self.scoring),
            "fusion": None if self.fusion is None else self.fusion.to_dict(),
            "threshold": self.threshold,
        }

    @classmethod
    def from_dict(cls, data: dict) -> GalleryRecord:
        return cls(
            source=dict(data.get("source") or {}),
            weights=data.get("weights"),
            img_size=int(data.get("img_size") or DEFAULT_IMG_SIZE),
            preprocess=PreprocessConfig.from_dict(data.get("preprocess")),
            tta_flip=bool(data.get("tta_flip", False)),
            scoring=from_dict(IdentifyConfig, data.get("scoring") or {}, "identifier config"),
            fusion=Fusion.from_dict(data["fusion"]) if data.get("fusion") else None,
            threshold=data.get("threshold"),
        )
