"""Re-ranking variants on an open-set split, through the library's own path (`calibrated_open_set`).

Each test photo queries the other test photos (leave-one-out, held-out individuals); the validation
individuals fit the fusion and the new_individual threshold, as `whaleid demo` and
`whaleid openset --rerank` do. A variant is a comma list of: a detector (sift, orb),
``mask`` (keypoints inside the saliency mask only), ``mutual`` (mutual nearest neighbours instead of
the ratio test), ``affine`` (MAGSAC affine instead of the RANSAC similarity). Reported: top-1 and
top-5 over queries whose individual has another photo, and MAP@5 with the validation threshold.

    .venv/bin/python benchmarks/rerank_probe.py --split runs/right-whales/split \
        --model runs/right-whales/model --k 20 50 --variants sift sift,mask sift,mutual orb
    .venv/bin/python benchmarks/rerank_probe.py --split runs/demo/split --images runs/demo/catalog/images \
        --model runs/demo/model --k 20       # the demo's synthetic fins, after `make demo`
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import whaleid.search.identify as identify
from whaleid.data.catalog import read_catalog
from whaleid.model.embed import Embedder, Embeddings, with_keypoints
from whaleid.model.keypoints import KeypointConfig
from whaleid.search.local import MatchConfig
from whaleid.search.openset import calibrated_open_set
from whaleid.search.rerank import RerankConfig, pair_inliers

RIGHT_WHALES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "right-whale-heads" / "images"
ROW = ("top1_known", "top5_known", "map5")
MATCHED: dict = {}  # inlier counts of one variant's shortlists, reused by every local weight (it only fuses)


def _remembered(queries, gallery, pairs, config):
    key = (id(queries), id(gallery), pairs.shape, pairs.tobytes(), config.match)
    if key not in MATCHED:
        MATCHED[key] = pair_inliers(queries, gallery, pairs, config)
    return MATCHED[key]


def variant(text: str) -> tuple[KeypointConfig, MatchConfig]:
    words = text.split(",")
    detector = next((w for w in words if w in ("sift", "orb")), "sift")
    return KeypointConfig(detector=detector, mask="mask" in words), MatchConfig(
        matcher="mutual" if "mutual" in words else "ratio", geometry="affine" if "affine" in words else "similarity"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", type=Path, required=True)
    parser.add_argument("--images", type=Path, default=RIGHT_WHALES)
    parser.add_argument("--model", type=Path, help="a checkpoint (default: zero-shot lite0 at --img-size)")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--k", type=int, nargs="+", default=[20])
    parser.add_argument("--weights", type=float, nargs="+", default=[0.5])
    parser.add_argument("--variants", nargs="+", default=["sift"])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="no validation truth is new_individual")
    identify.pair_inliers = _remembered
    embedder = (
        Embedder.from_checkpoint(args.model, batch_size=64)
        if args.model
        else Embedder.zero_shot("tf_efficientnet_lite0", args.img_size, batch_size=64)
    )
    parts = {}
    for name in ("val", "test"):
        catalog = read_catalog(args.split / f"{name}.csv", args.images, progress=False)
        parts[name] = (embedder.embed_catalog(catalog, progress=False), catalog)
    val, test = parts["val"][0], parts["test"][0]
    report = {"features": str(args.model or f"zero-shot lite0 {args.img_size} px"), "rows": []}

    def add(name: str, metrics: dict, **extra) -> None:
        row = {"variant": name, **{k: round(float(metrics[k]), 3) for k in ROW}, **extra}
        report["rows"].append(row)
        print(json.dumps(row), flush=True)

    add("global cosine only", calibrated_open_set(val, test)[0])
    for text in args.variants:
        keypoints, match = variant(text)
        start = time.perf_counter()
        with_kps = [
            with_keypoints(Embeddings(e.vectors, e.table, meta=dict(e.meta)), _paths(e, c), keypoints)
            for e, c in parts.values()
        ]
        per_photo = (time.perf_counter() - start) / sum(len(e) for e in with_kps)
        MATCHED.clear()
        for k in args.k:
            for weight in args.weights:
                rerank = RerankConfig(shortlist=k, local_weight=weight, keypoints=keypoints, match=match)
                start = time.perf_counter()
                metrics = calibrated_open_set(*with_kps, rerank)[0]
                add(
                    f"{text}, K={k}, local weight {weight}",
                    metrics,
                    seconds=round(time.perf_counter() - start, 1),  # the first weight of a K matches, the rest reuse
                    extract_ms=round(1000 * per_photo, 1),
                )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))


def _paths(embeddings: Embeddings, catalog) -> list[str]:
    return catalog.table.set_index("image").loc[embeddings.table["image"], "path"].tolist()


if __name__ == "__main__":
    main()
