"""Scores for rankings: MAP@5 (the Happywhale metric), top-k, per-species tables,
the new_individual threshold sweep and its plot, and Kaggle submission files.

MAP@5 follows the Kaggle definition with one true label per image: the average
precision of an image is ``1/rank`` of the first correct prediction within the first
five, else 0. Kaggle's rule "once a correct label has been scored, further predictions
of it are skipped" means duplicates after the first hit never change the score, and
duplicates of a wrong label before it just occupy ranks, so ``[A, A, A]`` scores 1 for
truth A and ``[B, B, A]`` scores 1/3.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from whaleid.errors import UserError
from whaleid.files import atomic_path
from whaleid.search.ranking import CUTOFF, NEW_INDIVIDUAL, Ranking

__all__ = [
    "average_precision_at_5",
    "map_at_5",
    "top_k_accuracy",
    "per_species",
    "threshold_sweep",
    "plot_threshold_sweep",
    "write_submission",
    "Report",
    "evaluate",
    "truths_for",
    "cell",
]


# --------------------------------------------------------------------------- metrics


def _check_pairs(predictions: Sequence[Sequence[str]], truths: Sequence[str]) -> None:
    if len(predictions) != len(truths):
        raise UserError(
            f"{len(predictions)} prediction lists but {len(truths)} truths: give one truth per predicted photo"
        )
    if len(truths) == 0:
        raise UserError("cannot score an empty set of predictions")
    for i, p in enumerate(predictions[:1]):
        if isinstance(p, str):  # a bare string would be scored letter by letter
            raise TypeError(f"predictions[{i}] is a string; expected a list of ids")


def average_precision_at_5(predictions: Sequence[str], truth: str) -> float:
    """Kaggle AP@5 for one image with one true id: 1/rank of the first hit, else 0."""
    if isinstance(predictions, str):
        raise TypeError("predictions must be a list of ids, not a string")
    for rank, pred in enumerate(list(predictions)[:CUTOFF], start=1):
        if pred == truth:
            return 1.0 / rank
    return 0.0


def map_at_5(predictions: Sequence[Sequence[str]], truths: Sequence[str]) -> float:
    """Mean of ``average_precision_at_5`` over images (the competition score)."""
    _check_pairs(predictions, truths)
    return float(np.mean([average_precision_at_5(p, t) for p, t in zip(predictions, truths)]))


def top_k_accuracy(predictions: Sequence[Sequence[str]], truths: Sequence[str], k: int) -> float:
    """Fraction of images whose truth appears in the first k predictions."""
    _check_pairs(predictions, truths)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return float(np.mean([t in list(p)[:k] for p, t in zip(predictions, truths)]))


def _new_stats(predictions: Sequence[Sequence[str]], truths: Sequence[str]) -> dict[str, float]:
    """new_individual as a binary detector, judged on the *first* prediction only."""
    pred_new = np.array([len(p) > 0 and p[0] == NEW_INDIVIDUAL for p in predictions])
    true_new = np.array([t == NEW_INDIVIDUAL for t in truths])
    return _detector_stats(pred_new, true_new)


def _detector_stats(pred_new: np.ndarray, true_new: np.ndarray) -> dict[str, Any]:
    """Precision/recall/rate along the last axis (so a (thresholds, queries) grid works)."""
    hits = (pred_new & true_new).sum(axis=-1)
    n_pred = pred_new.sum(axis=-1)
    n_true = true_new.sum(axis=-1)
    precision = np.where(n_pred > 0, hits / np.maximum(n_pred, 1), np.nan)
    recall = np.where(n_true > 0, hits / np.maximum(n_true, 1), np.nan)
    return {"new_precision": precision, "new_recall": recall, "new_rate": n_pred / pred_new.shape[-1]}


def per_species(predictions: Sequence[Sequence[str]], truths: Sequence[str], species: Sequence[str]) -> pd.DataFrame:
    """One row per species (most images first) plus an 'all' row: n, map5, top1, top5.

    Species differ wildly in difficulty (distinctive humpback flukes vs. plain
    dolphin fins), so a single MAP hides where a model fails.
    """
    _check_pairs(predictions, truths)
    if len(species) != len(truths):
        raise UserError(f"{len(species)} species labels but {len(truths)} truths: give one species per photo")
    ap = np.array([average_precision_at_5(p, t) for p, t in zip(predictions, truths)])
    top1 = np.array([len(p) > 0 and p[0] == t for p, t in zip(predictions, truths)])
    top5 = np.array([t in list(p)[:CUTOFF] for p, t in zip(predictions, truths)])
    frame = pd.DataFrame(
        {"species": [str(s) for s in species], "map5": ap, "top1": top1.astype(float), "top5": top5.astype(float)}
    )
    table = frame.groupby("species", sort=False).agg(
        n=("map5", "size"), map5=("map5", "mean"), top1=("top1", "mean"), top5=("top5", "mean")
    )
    table = table.reset_index().sort_values(["n", "species"], ascending=[False, True])
    overall = pd.DataFrame(
        [{"species": "all", "n": len(frame), "map5": ap.mean(), "top1": top1.mean(), "top5": top5.mean()}]
    )
    return pd.concat([table, overall], ignore_index=True)


# --------------------------------------------------------------------------- threshold sweep


def default_thresholds(rankings: Sequence[Ranking], num: int = 101) -> np.ndarray:
    """An even grid from the lowest candidate score to just above the highest.

    Below the lowest score nothing changes any more; just above the highest, every
    query gets new_individual first, so the grid spans every distinct behaviour.
    """
    scores = np.array([s for r in rankings for s in r.scores], dtype=float)
    scores = scores[np.isfinite(scores)]
    if scores.size == 0:
        return np.array([0.0])
    lo, hi = float(scores.min()), float(np.nextafter(scores.max(), np.inf))
    return np.linspace(lo, hi, num) if hi > lo else np.array([lo, hi])


def _candidates(
    rankings: Sequence[Ranking], truths: Sequence[str], top: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Each query's candidate scores padded with -inf (queries x width), how many it has, where its truth
    is among them (past the cutoff when absent) and whether the first one is the truth.

    Candidates are those left after dropping any pre-existing new_individual, as
    insert_new_individual does. Only the first ``top`` can change the outcome: an insertion
    point beyond them puts new_individual outside the cutoff either way.
    """
    nq = len(rankings)
    cands = [[(i, s) for i, s in zip(r.ids, r.scores) if i != NEW_INDIVIDUAL][:top] for r in rankings]
    width = max(1, max(len(c) for c in cands))
    scores = np.full((nq, width), -np.inf)
    truth_pos = np.full(nq, width + top + 1)  # "absent": never inside the cutoff
    first_is_truth = np.zeros(nq, bool)
    for q, (c, t) in enumerate(zip(cands, truths)):
        if c:
            scores[q, : len(c)] = [s for _, s in c]
            ids = [i for i, _ in c]
            if t in ids:
                truth_pos[q] = ids.index(t)
            first_is_truth[q] = ids[0] == t
    return scores, np.array([len(c) for c in cands]), truth_pos, first_is_truth


def threshold_sweep(
    rankings: Sequence[Ranking],
    truths: Sequence[str],
    thresholds: np.ndarray | Sequence[float] | None = None,
    top: int = CUTOFF,
) -> pd.DataFrame:
    """Score ``insert_new_individual`` at each threshold, vectorised over queries.

    Columns: threshold, map5, top1, new_precision, new_recall, new_rate, where the
    new_* columns treat "new_individual predicted first" as the detector. Results equal
    calling ``insert_new_individual`` then ``map_at_5`` per threshold (tested), but
    cost O(queries x thresholds) array work instead of Python loops.
    """
    if len(rankings) != len(truths):
        raise UserError(f"{len(rankings)} rankings but {len(truths)} truths: give one truth per query")
    if len(truths) == 0:
        raise UserError("cannot sweep an empty validation set")
    thr = default_thresholds(rankings) if thresholds is None else np.asarray(thresholds, float)
    if thr.ndim != 1 or thr.size == 0 or not np.isfinite(thr).all():
        raise UserError("thresholds must be a non-empty 1-D array of finite numbers")
    scores, lengths, truth_pos, first_is_truth = _candidates(rankings, truths, top)
    width = scores.shape[1]
    true_new = np.array([t == NEW_INDIVIDUAL for t in truths])

    below = scores[None, :, :] < thr[:, None, None]  # (T, nq, width)
    below |= np.arange(width)[None, None, :] >= lengths[None, :, None]  # padding counts as end
    # insertion position: first candidate below threshold (or the end of the list)
    pos = np.where(below.any(axis=2), below.argmax(axis=2), lengths[None, :])  # (T, nq)
    new_rank = pos + 1  # 1-based rank of new_individual
    truth_rank = np.where(truth_pos[None, :] < pos, truth_pos[None, :] + 1, truth_pos[None, :] + 2)
    rank = np.where(true_new[None, :], new_rank, truth_rank)
    ap = np.where(rank <= top, 1.0 / rank, 0.0)
    pred_new = pos == 0
    top1 = np.where(pred_new, true_new[None, :], ~pred_new & first_is_truth[None, :] & ~true_new)
    stats = _detector_stats(pred_new, true_new[None, :])
    return pd.DataFrame(
        {
            "threshold": thr,
            "map5": ap.mean(axis=1),
            "top1": top1.mean(axis=1),
            "new_precision": stats["new_precision"],
            "new_recall": np.broadcast_to(stats["new_recall"], thr.shape).astype(float),
            "new_rate": stats["new_rate"],
        }
    )


# --------------------------------------------------------------------------- files


def plot_threshold_sweep(sweep: pd.DataFrame, path: str | os.PathLike, chosen: float | None = None) -> Path:
    """PNG of MAP@5/top-1 and new_individual precision/recall/rate against threshold.

    The threshold is a trade-off people should see, not just a number: the plot shows
    how flat the MAP optimum is and what share of photos would be called new.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    missing = {"threshold", "map5", "top1", "new_precision", "new_recall", "new_rate"} - set(sweep)
    if missing:
        raise ValueError(f"sweep is missing column(s) {sorted(missing)}")
    fig = Figure(figsize=(10, 4), layout="constrained")
    left, right = fig.subplots(1, 2, sharex=True)
    x = sweep["threshold"]
    left.plot(x, sweep["map5"], label="MAP@5", color="C0", lw=2)
    left.plot(x, sweep["top1"], label="top-1", color="C1", ls="--")
    left.set(xlabel="new_individual threshold (cosine)", ylabel="score", ylim=(0, 1.02), title="Identification")
    right.plot(x, sweep["new_precision"], label="precision", color="C2")
    right.plot(x, sweep["new_recall"], label="recall", color="C3")
    right.plot(x, sweep["new_rate"], label="share predicted new", color="0.5", ls=":")
    right.set(xlabel="new_individual threshold (cosine)", ylim=(0, 1.02), title="new_individual as first guess")
    if chosen is not None:
        best = sweep.iloc[int(np.argmin(np.abs(x.to_numpy() - chosen)))]
        for ax in (left, right):
            ax.axvline(chosen, color="k", lw=1, alpha=0.6)
        left.annotate(
            f"chosen {chosen:.3f}\nMAP@5 {best['map5']:.3f}",
            (chosen, best["map5"]),
            xytext=(6, -28),
            textcoords="offset points",
            fontsize=8,
        )
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return path


def write_submission(images: Sequence[str], predictions: Sequence[Sequence[str]], path: str | os.PathLike) -> Path:
    """Kaggle CSV ``image,predictions`` with exactly five space-separated ids per image.

    Rankings hold distinct ids and may have fewer than five (few individuals among the
    neighbours); short lists are padded by repeating their last id, which cannot change
    AP@5 because repeats after the first hit are skipped and repeats of a miss are
    misses. An empty list becomes "new_individual" (nothing known matched).
    """
    if len(images) != len(predictions):
        raise ValueError(f"{len(images)} images but {len(predictions)} prediction lists")
    lines = ["image,predictions"]
    for image, preds in zip(images, predictions):
        if isinstance(preds, str):
            raise TypeError(f"predictions for {image!r} is a string; expected a list of ids")
        preds = [str(p) for p in list(preds)[:CUTOFF]] or [NEW_INDIVIDUAL]
        preds += [preds[-1]] * (CUTOFF - len(preds))
        for token in (str(image), *preds):
            if not token or any(c in token for c in ', \t\r\n"'):
                raise ValueError(
                    f"{token!r} cannot be written to a submission CSV (empty, or contains a comma, quote or whitespace)"
                )
        lines.append(f"{image},{' '.join(preds)}")
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# --------------------------------------------------------------------------- report


def json_float(x: Any) -> float | None:
    """NaN (an undefined metric) as JSON null rather than the non-standard NaN token."""
    x = float(x)
    return None if math.isnan(x) else x


def cell(x: Any, digits: int = 3) -> str:
    """A metric for a printed table: an undefined one (NaN or None, e.g. precision with nothing predicted new)
    is a dash, not "nan"."""
    return "\u2013" if x is None or math.isnan(x) else f"{x:.{digits}f}"


def truths_for(
    images: Sequence[str], truth: pd.DataFrame, source: str = "the truth CSV"
) -> tuple[list[str], list[str] | None]:
    """Each predicted photo's individual (and species, when the table has them) from a truth table.

    A photo listed twice, in either, would be scored twice or against two answers, so both must
    hold one row per photo.
    """
    missing = {"image", "individual_id"} - set(truth.columns)
    if missing:
        raise UserError(f"{source} lacks column(s) {sorted(missing)}: it needs image and individual_id")
    for name, column in ((source, truth["image"]), ("the predictions", pd.Series(list(images), dtype=object))):
        twice = column[column.duplicated()].unique()
        if len(twice):
            raise UserError(
                f"in {name}, {len(twice)} photo(s) appear more than once, e.g. {list(twice[:3])}: "
                "keep one row per photo"
            )
    table = truth.set_index("image")
    absent = [i for i in images if i not in table.index]
    if absent:
        raise UserError(f"{len(absent)} predicted photo(s) have no row in {source}, e.g. {absent[:3]}")
    rows = table.loc[list(images)]
    species = rows["species"].tolist() if "species" in rows else None
    return rows["individual_id"].tolist(), species


@dataclass
class Report:
    """Headline numbers for one evaluation; ``to_dict`` is JSON-ready (NaN -> null)."""

    n: int
    map5: float
    top1: float
    top5: float
    new_precision: float
    new_recall: float
    new_rate: float
    per_species: pd.DataFrame | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "per_species"}
        out = {k: (v if k == "n" else json_float(v)) for k, v in out.items()}
        if self.per_species is not None:
            out["per_species"] = [
                {k: (v if k in ("species", "n") else json_float(v)) for k, v in row.items()}
                for row in self.per_species.to_dict(orient="records")
            ]
        return out

    def save(self, directory: str | os.PathLike, sweep: pd.DataFrame | None = None) -> Path:
        """report.json, per_species.csv (with species) and threshold_sweep.csv/.png (with a sweep)."""
        directory = Path(directory)
        with atomic_path(directory / "report.json") as tmp:
            tmp.write_text(json.dumps(self.to_dict(), indent=2))
        if self.per_species is not None:
            with atomic_path(directory / "per_species.csv") as tmp:
                self.per_species.to_csv(tmp, index=False)
        if sweep is not None:
            with atomic_path(directory / "threshold_sweep.csv") as tmp:
                sweep.to_csv(tmp, index=False)
            plot_threshold_sweep(sweep, directory / "threshold_sweep.png")
        return directory


def evaluate(
    predictions: Sequence[Sequence[str]], truths: Sequence[str], species: Sequence[str] | None = None
) -> Report:
    """All headline metrics at once; the per-species table only when species are given."""
    _check_pairs(predictions, truths)
    new = _new_stats(predictions, truths)
    return Report(
        n=len(truths),
        map5=map_at_5(predictions, truths),
        top1=top_k_accuracy(predictions, truths, 1),
        top5=top_k_accuracy(predictions, truths, CUTOFF),
        new_precision=float(new["new_precision"]),
        new_recall=float(new["new_recall"]),
        new_rate=float(new["new_rate"]),
        per_species=None if species is None else per_species(predictions, truths, species),
    )
