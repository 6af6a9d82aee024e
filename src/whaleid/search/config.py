"""How queries are scored and when new_individual is answered: the settings of an Identifier's stages."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from whaleid.errors import UserError
from whaleid.search.rerank import RerankConfig

POLICIES = ("sweep", "rate", "per-species")
INDEX_KINDS = ("exact", "faiss", "faiss-flat", "faiss-hnsw", "faiss-ivf")


@dataclass
class IdentifyConfig:
    """How queries are scored and when new_individual is answered."""

    # Weight of the ArcFace-logit probabilities blended with every individual's max cosine; None: plain kNN
    # over the `neighbours` nearest photos. Recipes may say "auto" to choose it on validation photos.
    blend: float | str | None = None
    threshold: str = "sweep"  # sweep (best validation MAP@5) | rate (a share of new queries) | per-species
    new_rate: float | None = None  # for "rate": the share of queries expected to be new
    neighbours: int = 100
    index: str = "exact"
    min_species_queries: int = 20  # per-species: fewer validation queries fall back to the overall threshold
    rerank: RerankConfig | None = None  # second stage: the shortlist re-scored by local-feature matches

    def __post_init__(self) -> None:
        if self.threshold not in POLICIES:
            raise UserError(f"unknown threshold policy {self.threshold!r}; valid: {', '.join(POLICIES)}")
        if self.index not in INDEX_KINDS:
            raise UserError(f"unknown index kind {self.index!r}; valid: {', '.join(INDEX_KINDS)}")
        for name, value, low in (
            ("neighbours", self.neighbours, 1),
            ("min_species_queries", self.min_species_queries, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise UserError(f"{name} must be an integer >= {low}, got {value!r}")
        if self.blend != "auto" and self.blend is not None and not _share(self.blend):
            raise UserError(f"blend must be a number in [0, 1], 'auto' or null, got {self.blend!r}")
        if self.new_rate is not None and not _share(self.new_rate):
            raise UserError(
                f"new_rate must be the share of queries expected to be new, in [0, 1], got {self.new_rate!r}"
            )
        if self.blend is not None and self.index != "exact":
            raise UserError("the blend scores every individual over the whole gallery: use the exact index with it")
        if self.rerank is not None and self.blend not in (None, 0, 0.0):
            raise UserError("re-ranking fuses the plain cosine with local matches: set blend to 0 or null with rerank")


def _share(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1
