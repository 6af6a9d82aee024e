"""Cheap post-processing of the global scores, on an open-set split: query expansion and k-reciprocal neighbours.

Each test photo queries the other test photos (leave-one-out), as in docs/results/right-whales.md.
Variants: the cosine as is; alpha query expansion (the query averaged with its ``n`` nearest photos,
weighted by cosine^alpha, then searched again; Radenovic et al.); and k-reciprocal re-ranking (the
cosine plus ``lambda`` x the Jaccard overlap of the two photos' k-reciprocal neighbour sets; Zhong et
al., without their local query expansion). Reported: top-1 / top-5 over queries with another photo
of their individual, and how often that individual is among the first K photos (the shortlist the
local matcher sees).

    .venv/bin/python benchmarks/global_rerank.py --split runs/rw224/split --model runs/rw224/model
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from whaleid.data.catalog import read_catalog
from whaleid.model.embed import Embedder
from whaleid.search.ranking import top_individuals

RIGHT_WHALES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "right-whale-heads" / "images"


def expanded(vectors: np.ndarray, n: int, alpha: float) -> np.ndarray:
    """Alpha query expansion among the photos themselves (each photo's own slot left out)."""
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -np.inf)
    nearest = np.argsort(-sims, axis=1)[:, :n]
    weights = np.clip(np.take_along_axis(sims, nearest, axis=1), 0, None) ** alpha
    new = vectors + (weights[..., None] * vectors[nearest]).sum(axis=1)
    return new / np.linalg.norm(new, axis=1, keepdims=True)


def reciprocal(sims: np.ndarray, k: int, weight: float) -> np.ndarray:
    """The cosine plus ``weight`` x the Jaccard overlap of k-reciprocal neighbour sets."""
    order = np.argsort(-sims, axis=1)[:, : k + 1]
    near = np.zeros(sims.shape, bool)
    np.put_along_axis(near, order, True, axis=1)
    mutual = (near & near.T).astype(np.float32)
    shared = mutual @ mutual.T
    sizes = mutual.sum(axis=1)
    jaccard = shared / np.maximum(sizes[:, None] + sizes[None, :] - shared, 1)
    return sims + weight * jaccard


def scored(sims: np.ndarray, ids: list[str], shortlists: tuple[int, ...]) -> dict:
    sims = sims.copy()
    np.fill_diagonal(sims, -np.inf)
    order = np.argsort(-sims, axis=1, kind="stable")
    rankings = top_individuals(np.take_along_axis(sims, order, axis=1), order, ids)
    labels = np.asarray(ids, dtype=object)
    known = [i for i, t in enumerate(ids) if (labels == t).sum() > 1]
    row = {
        "top1_known": np.mean([rankings[i].ids[0] == ids[i] for i in known]),
        "top5_known": np.mean([ids[i] in rankings[i].ids for i in known]),
    }
    for k in shortlists:
        row[f"recall_{k}"] = np.mean([ids[i] in set(labels[order[i, :k]]) for i in known])
    return {name: round(float(value), 3) for name, value in row.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", type=Path, required=True)
    parser.add_argument("--images", type=Path, default=RIGHT_WHALES)
    parser.add_argument("--model", type=Path, help="a checkpoint (default: zero-shot lite0 at 224 px)")
    parser.add_argument("--tta", action="store_true", help="flip TTA on every photo")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    embedder = (
        Embedder.from_checkpoint(args.model, batch_size=64, tta_flip=args.tta)
        if args.model
        else Embedder.zero_shot("tf_efficientnet_lite0", 224, batch_size=64, tta_flip=args.tta)
    )
    catalog = read_catalog(args.split / "test.csv", args.images, progress=False)
    test = embedder.embed_catalog(catalog, progress=False)
    vectors, ids = test.vectors, test.table["individual_id"].tolist()
    sims = vectors @ vectors.T
    rows = [{"variant": "cosine", **scored(sims, ids, (20, 50))}]
    for n, alpha in ((1, 0.0), (2, 3.0), (5, 3.0)):
        new = expanded(vectors, n, alpha)
        rows.append({"variant": f"alpha-QE n={n} alpha={alpha}", **scored(new @ new.T, ids, (20, 50))})
    for k, weight in ((5, 0.3), (10, 0.3), (20, 0.3), (10, 1.0)):
        rows.append(
            {"variant": f"k-reciprocal k={k} lambda={weight}", **scored(reciprocal(sims, k, weight), ids, (20, 50))}
        )
    for row in rows:
        print(json.dumps(row), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"features": str(args.model or "zero-shot"), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
