"""Re-ranking a global shortlist by local-feature inliers: a probe on the right-whale open-set split.

For each test photo (leave-one-out among the held-out individuals, as in docs/results/right-whales.md),
the K nearest photos by cosine are matched by SIFT inliers (`whaleid.search.local`); the cosine and the
inlier count are calibrated into probabilities on the validation individuals' pairs
(`whaleid.search.fusion`) and averaged; individuals are ranked by their best fused photo.
Reported: top-1 and top-5 over the queries whose individual has another photo, before and after.

    .venv/bin/python benchmarks/rerank_probe.py --split runs/rw-check/split --json runs/rerank/zero-shot.json
    .venv/bin/python benchmarks/rerank_probe.py --split runs/demo/split --images runs/demo/catalog/images \
        --model runs/demo/model --img-size 128 --k 20      # the demo's synthetic fins, after `make demo`
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from whaleid.model.embed import Embedder, embed_files
from whaleid.search.fusion import Calibration, Fusion
from whaleid.search.local import LocalConfig, extract, inliers

RIGHT_WHALES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "right-whale-heads" / "images"


def shortlists(vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -np.inf)
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(sims, order, axis=1)


def local_scores(features, order: np.ndarray, config: LocalConfig) -> np.ndarray:
    def row(i):
        return [inliers(features[i], features[j], config) for j in order[i]]

    with ThreadPoolExecutor(2) as pool:
        return np.array(list(pool.map(row, range(len(order)))), np.float64)


def ranks(ids: np.ndarray, order: np.ndarray, scores: np.ndarray) -> list[int | None]:
    """The rank (1-based) of each query's own individual among individuals ordered by best score."""
    out = []
    for i in range(len(order)):
        best: dict[str, float] = {}
        for j, s in zip(order[i], scores[i]):
            best[ids[j]] = max(best.get(ids[j], -np.inf), s)
        ranked = sorted(best, key=best.get, reverse=True)
        out.append(ranked.index(ids[i]) + 1 if ids[i] in ranked else None)
    return out


def summary(found: list[int | None], has_match: np.ndarray) -> dict:
    r = [found[i] for i in np.flatnonzero(has_match)]
    return {
        "top1": float(np.mean([x == 1 for x in r])),
        "top5": float(np.mean([x is not None and x <= 5 for x in r])),
        "map5_known": float(np.mean([1 / x if x is not None and x <= 5 else 0 for x in r])),
    }


def prepare(csv: Path, images: Path, embedder, config: LocalConfig):
    table = pd.read_csv(csv)
    paths = [str(images / name) for name in table["image"]]
    embeddings, ok = embed_files(embedder, paths)
    table = table[ok].reset_index(drop=True)
    start = time.perf_counter()
    features = [extract(cv2.cvtColor(cv2.imread(str(images / n)), cv2.COLOR_BGR2RGB), config) for n in table["image"]]
    extract_s = time.perf_counter() - start
    ids = table["individual_id"].to_numpy()
    counts = table["individual_id"].map(table["individual_id"].value_counts()).to_numpy()
    return embeddings.vectors, features, ids, counts > 1, extract_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", type=Path, required=True)
    parser.add_argument("--images", type=Path, default=RIGHT_WHALES)
    parser.add_argument("--model", type=Path, help="a checkpoint (default: zero-shot lite0 at --img-size)")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--k", type=int, nargs="+", default=[20])
    parser.add_argument("--geometry", default="similarity", choices=["similarity", "affine"])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    config = LocalConfig(geometry=args.geometry)
    embedder = (
        Embedder.from_checkpoint(args.model)
        if args.model
        else Embedder.zero_shot("tf_efficientnet_lite0", args.img_size)
    )
    val = prepare(args.split / "val.csv", args.images, embedder, config)
    test = prepare(args.split / "test.csv", args.images, embedder, config)
    report = {"config": vars(config) if hasattr(config, "__dict__") else str(config), "results": {}}
    for k in args.k:
        v_order, v_cos = shortlists(val[0], k)
        v_inl = local_scores(val[1], v_order, config)
        same = val[2][v_order] == val[2][:, None]
        fusion = Fusion(Calibration.fit(v_cos.ravel(), same.ravel()), Calibration.fit(v_inl.ravel(), same.ravel()))
        t_order, t_cos = shortlists(test[0], k)
        start = time.perf_counter()
        t_inl = local_scores(test[1], t_order, config)
        match_s = time.perf_counter() - start
        results = {"global": summary(ranks(test[2], t_order, t_cos), test[3])}
        for weight in (0.25, 0.5, 0.75, 1.0):
            fusion.local = weight
            results[f"fused local={weight}"] = summary(ranks(test[2], t_order, fusion(t_cos, t_inl)), test[3])
        results["match_ms_per_query"] = 1000 * match_s / len(t_order)
        report["results"][f"K={k}"] = results
        print(k, json.dumps(results, indent=1))
    report["extract_photos_per_s"] = (len(val[1]) + len(test[1])) / (val[4] + test[4])
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
