"""Embedding throughput: `whaleid embed` against a bare timm forward pass on the same photos.

Both sides decode the same JPEGs, resize to the same size and run the same backbone
with the same batch size; the ratio says what whaleid's pipeline (dataset, worker,
GeM + neck, normalisation, bookkeeping) costs.

    .venv/bin/python benchmarks/embed_throughput.py --csv ../shared/data/right-whale-heads/train.csv --n 512
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import timm
import torch

from whaleid.data.catalog import read_catalog
from whaleid.data.images import open_image
from whaleid.data.synth import make_catalog
from whaleid.model.augment import eval_transform
from whaleid.model.embed import Embedder
from whaleid.model.network import EmbeddingModel, ModelConfig


def bare_timm(backbone: str, paths: list[str], size: int, batch: int) -> float:
    """Photos/s of the plain loop a notebook would write: decode, transform, forward."""
    model = timm.create_model(backbone, pretrained=False, num_classes=0).eval()
    transform = eval_transform(size, (0.5,) * 3, (0.5,) * 3)
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(paths), batch):
            model(torch.stack([transform(open_image(p)) for p in paths[i : i + batch]]))
    return len(paths) / (time.perf_counter() - start)


def whaleid_embed(backbone: str, paths: list[str], size: int, batch: int, workers: int | None) -> float:
    embedder = Embedder(
        EmbeddingModel(ModelConfig(backbone=backbone, img_size=size), pretrained=False),
        batch_size=batch,
        num_workers=workers,
    )
    start = time.perf_counter()
    embedder.embed_paths(paths, progress=False)
    return len(paths) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", help="catalog CSV (default: a synthetic catalog)")
    parser.add_argument("--n", type=int, default=256, help="photos")
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: cores - 1)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json")
    args = parser.parse_args()

    csv = args.csv or make_catalog(".cache/bench-synth", n_individuals=64, photos_per_individual=(4, 4), size=512)
    paths = read_catalog(csv, check_images=False).table["path"].tolist()[: args.n]
    torch.manual_seed(0)
    bare_timm(args.backbone, paths[: args.batch], args.size, args.batch)  # warm-up: allocator, page cache
    runs = {"bare timm": [], "whaleid embed": []}
    for _ in range(args.repeats):  # interleaved, so drift in machine load hits both sides alike
        runs["bare timm"].append(bare_timm(args.backbone, paths, args.size, args.batch))
        runs["whaleid embed"].append(whaleid_embed(args.backbone, paths, args.size, args.batch, args.workers))
    result = {name: float(np.median(v)) for name, v in runs.items()}
    result["ratio"] = result["whaleid embed"] / result["bare timm"]
    print(
        f"{len(paths)} photos, {args.backbone} @ {args.size}px, batch {args.batch}, {torch.get_num_threads()} torch threads"
    )
    for name in runs:
        print(f"  {name:14s} {result[name]:7.1f} photos/s  (runs: {', '.join(f'{v:.1f}' for v in runs[name])})")
    print(f"  ratio          {result['ratio']:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), **result}, f, indent=2)


if __name__ == "__main__":
    main()
