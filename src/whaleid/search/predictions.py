"""Predictions as an artifact: what the Identifier answered for each photo, written and read back as one CSV.

Columns: ``image``, ``predictions`` (the answer, new_individual included), ``candidates``
and ``scores`` (the known individuals before the threshold, for a later threshold sweep).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from whaleid.errors import UserError
from whaleid.files import atomic_path, read_table
from whaleid.search.metrics import Report, evaluate, threshold_sweep, truths_for, write_submission
from whaleid.search.ranking import Ranking, truths

__all__ = ["Predictions"]


@dataclass
class Predictions:
    images: list[str]
    answers: list[Ranking]  # new_individual inserted by the threshold
    candidates: list[Ranking] | None = None  # known individuals only, with their scores
    threshold: float | dict[str, float] | None = None

    def __len__(self) -> int:
        return len(self.images)

    @property
    def ids(self) -> list[list[str]]:
        return [a.ids for a in self.answers]

    def table(self) -> pd.DataFrame:
        columns = {"image": self.images, "predictions": [" ".join(a.ids) for a in self.answers]}
        if self.candidates is not None:
            columns["candidates"] = [" ".join(r.ids) for r in self.candidates]
            columns["scores"] = [" ".join(f"{s:.4f}" for s in r.scores) for r in self.candidates]
        return pd.DataFrame(columns)

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        with atomic_path(path) as tmp:
            self.table().to_csv(tmp, index=False)
        return path

    def write_submission(self, path: str | os.PathLike) -> Path:
        """The Kaggle submission: five ids per photo."""
        return write_submission(self.images, self.ids, path)

    def evaluate(
        self, truth: pd.DataFrame, source: str = "the truth CSV", gallery_ids: Sequence[str] | None = None
    ) -> tuple[Report, pd.DataFrame | None]:
        """Metrics against a truth table (image, individual_id[, species]); a query whose individual is not
        among ``gallery_ids`` should have been answered new_individual. With candidates, also the threshold sweep."""
        ids, species = truths_for(self.images, truth, source)
        if gallery_ids is not None:
            ids = truths(ids, gallery_ids)
        sweep = None if self.candidates is None else threshold_sweep(self.candidates, ids)
        return evaluate(self.ids, ids, species), sweep

    @classmethod
    def load(cls, path: str | os.PathLike) -> Predictions:
        """A CSV that :meth:`save` (``whaleid identify``) wrote; candidates come back when it has them."""
        table = read_table(path, ["image", "predictions"]).fillna("")
        answers = [Ranking(p.split(), [float("nan")] * len(p.split())) for p in table["predictions"]]
        candidates = None
        if "candidates" in table and "scores" in table:
            candidates = [
                _ranking(c, s, path, row) for row, (c, s) in enumerate(zip(table["candidates"], table["scores"]))
            ]
        return cls(table["image"].tolist(), answers, candidates)


def _ranking(ids: str, scores: str, path: str | os.PathLike, row: int) -> Ranking:
    try:
        return Ranking(ids.split(), [float(s) for s in scores.split()])
    except ValueError:
        raise UserError(
            f"{path}: line {row + 2} has candidates and scores that do not pair up: "
            "use a CSV that `whaleid identify` wrote"
        ) from None
