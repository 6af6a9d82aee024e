"""What re-ranking costs: keypoint extraction per photo, and matching per query at K = 20 and 50.

Right-whale photos (224 px head crops, upscaled to 448 for keypoints), zero-shot lite0 vectors: the
first ``--gallery`` photos are the gallery, the next ``--queries`` photos the queries. Matching time
is `Identifier.rank` with re-ranking minus the same without, per query, on every core (threads).

    .venv/bin/python benchmarks/rerank_cost.py --json runs/rerank/cost.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from whaleid.model.embed import Embedder, Embeddings, embed_files
from whaleid.model.keypoints import KeypointConfig, extract_files
from whaleid.search.fusion import Calibration, Fusion
from whaleid.search.identify import Identifier, IdentifyConfig
from whaleid.search.rerank import RerankConfig

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "right-whale-heads"
# a fixed monotone fusion: timing does not depend on what the calibration learned
FUSION = Fusion(
    Calibration(np.array([0.0, 1.0]), np.array([0.0, 1.0])), Calibration(np.array([0.0, 40.0]), np.array([0.0, 1.0]))
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--gallery", type=int, default=500)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--k", type=int, nargs="+", default=[20, 50])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    table = pd.read_csv(args.data / "train.csv").head(args.gallery + args.queries)
    paths = [str(args.data / "images" / name) for name in table["image"]]
    config = KeypointConfig()
    start = time.perf_counter()
    keypoints = extract_files(paths, config)
    extract_s = time.perf_counter() - start
    embeddings, _ = embed_files(Embedder.zero_shot("tf_efficientnet_lite0", 224), paths)
    ids = table["individual_id"].astype(str).tolist()

    def part(rows: slice) -> Embeddings:
        rows = np.arange(len(paths))[rows]
        return Embeddings(
            embeddings.vectors[rows],
            pd.DataFrame({"image": [paths[i] for i in rows], "individual_id": [ids[i] for i in rows]}),
            meta=embeddings.meta,
            keypoints=keypoints.take(rows),
        )

    gallery, queries = part(slice(0, args.gallery)), part(slice(args.gallery, None))
    report = {
        "cores": os.cpu_count(),
        "extract_photos_per_s": round(len(paths) / extract_s, 1),
        "keypoints_per_photo": round(len(keypoints.xy) / len(keypoints), 1),
        "keypoint_bytes_per_photo": round((keypoints.xy.nbytes + keypoints.descriptors.nbytes) / len(keypoints)),
        "gallery": len(gallery),
        "queries": len(queries),
    }
    plain = Identifier.from_embeddings(gallery)
    start = time.perf_counter()
    plain.rank(queries)
    plain_s = time.perf_counter() - start
    for k in args.k:
        reranking = Identifier.from_embeddings(gallery, IdentifyConfig(rerank=RerankConfig(shortlist=k)), fusion=FUSION)
        start = time.perf_counter()
        reranking.rank(queries)
        report[f"match_ms_per_query_K{k}"] = round(1000 * (time.perf_counter() - start - plain_s) / len(queries), 1)
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
