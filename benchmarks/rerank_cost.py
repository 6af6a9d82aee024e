"""What re-ranking costs with the default settings: one query end to end, and a survey, against a big gallery.

Right-whale head crops (224 px): the first ``--gallery`` photos are the gallery (vectors and keypoints made
beforehand, as a catalog holds them), then ``--queries`` photos are identified one at a time, each from its
file (embedding, keypoint extraction, cosine search, matching of the shortlist, fusion), and a
``--survey`` of further photos is identified in one call. Vectors come from a zero-shot lite0 at 224 px:
the cost does not depend on what the model learned. A fixed monotone fusion stands in for a fitted one.

    .venv/bin/python benchmarks/rerank_cost.py --json runs/rerank/cost.json
    .venv/bin/python benchmarks/rerank_cost.py --detector sift --json runs/rerank/cost-sift.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from whaleid.model.embed import Embedder, embed_files
from whaleid.model.embeddings import Embeddings
from whaleid.model.keypoints import KeypointConfig, extract_files
from whaleid.search.fusion import Calibration, Fusion
from whaleid.search.identify import Identifier, IdentifyConfig
from whaleid.search.rerank import RerankConfig

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "right-whale-heads"
FUSION = Fusion(
    Calibration(np.array([0.0, 1.0]), np.array([0.0, 1.0])), Calibration(np.array([0.0, 40.0]), np.array([0.0, 1.0]))
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--gallery", type=int, default=2000)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--survey", type=int, default=500)
    parser.add_argument("--shortlist", type=int, default=RerankConfig().shortlist)
    parser.add_argument("--detector", default="aliked")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    table = pd.read_csv(args.data / "train.csv").head(args.gallery + args.queries + args.survey)
    paths = [str(args.data / "images" / name) for name in table["image"]]
    ids = table["individual_id"].astype(str).tolist()
    keypoints = KeypointConfig(detector=args.detector)
    embedder = Embedder.zero_shot("tf_efficientnet_lite0", 224, batch_size=64)

    def embeddings(rows: range) -> tuple[Embeddings, float, float]:
        """Vectors and keypoints of these photos, and the seconds each took."""
        files = [paths[i] for i in rows]
        start = time.perf_counter()
        found, _ = embed_files(embedder, files, progress=False)
        embed_s = time.perf_counter() - start
        start = time.perf_counter()
        kps = extract_files(files, keypoints)
        extract_s = time.perf_counter() - start
        table = pd.DataFrame({"image": files, "individual_id": [ids[i] for i in rows]})
        return Embeddings(found.vectors, table, meta=found.meta, keypoints=kps), embed_s, extract_s

    gallery, embed_s, extract_s = embeddings(range(args.gallery))
    identifier = Identifier.from_embeddings(
        gallery, IdentifyConfig(rerank=RerankConfig(shortlist=args.shortlist, keypoints=keypoints)), fusion=FUSION
    )
    report = {
        "cores": os.cpu_count(),
        "detector": args.detector,
        "keypoints": keypoints.max_keypoints,
        "shortlist": args.shortlist,
        "gallery": args.gallery,
        "extract_photos_per_s": round(args.gallery / extract_s, 1),
        "embed_photos_per_s": round(args.gallery / embed_s, 1),
        "keypoint_bytes_per_photo": round(
            (gallery.keypoints.xy.nbytes + gallery.keypoints.descriptors.nbytes) / len(gallery)
        ),
    }
    one = []
    for i in range(args.gallery, args.gallery + args.queries):
        start = time.perf_counter()
        query, _, _ = embeddings(range(i, i + 1))
        identifier.rank(query)
        one.append(time.perf_counter() - start)
    report["query_s_median"] = round(float(np.median(one)), 3)
    report["query_s_p90"] = round(float(np.percentile(one, 90)), 3)
    start = time.perf_counter()
    survey, _, _ = embeddings(range(args.gallery + args.queries, args.gallery + args.queries + args.survey))
    identifier.rank(survey)
    report["survey_photos"] = len(survey)
    report["survey_min"] = round((time.perf_counter() - start) / 60, 2)
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
