"""Embedding throughput: `whaleid embed` (ONNX Runtime, and --engine torch) against a bare timm loop.

All sides decode the same JPEGs, resize to the same size and run the same backbone with
the same batch size, interleaved so drift in machine load hits them alike. The ratios say
what whaleid's pipeline costs (engine torch) and what ONNX Runtime gains (engine onnx).

    .venv/bin/python benchmarks/embed_throughput.py --csv ../shared/data/right-whale-heads/train.csv --n 512

``--settings`` times the exported model alone under ONNX Runtime's thread settings
(``--n 0 --settings``). ``--agree`` also embeds an open-set split with a trained model on both engines and reports
the per-photo cosine between them and whether every query's top-5 is the same:

    .venv/bin/python benchmarks/embed_throughput.py --n 0 --agree runs/right-whales/model \
        --split runs/right-whales/split --images ../shared/data/right-whale-heads/images
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import timm
import torch

from whaleid.data.catalog import read_catalog
from whaleid.data.images import open_image
from whaleid.data.synth import make_catalog
from whaleid.model.augment import eval_transform
from whaleid.model.embed import Embedder
from whaleid.model.network import EmbeddingModel, ModelConfig
from whaleid.search.index import ExactIndex
from whaleid.search.ranking import top_individuals


def bare_timm(backbone: str, paths: list[str], size: int, batch: int) -> float:
    """Photos/s of the plain loop a notebook would write: decode, transform, forward."""
    model = timm.create_model(backbone, pretrained=False, num_classes=0).eval()
    transform = eval_transform(size, (0.5,) * 3, (0.5,) * 3)
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(paths), batch):
            model(torch.stack([transform(open_image(p)) for p in paths[i : i + batch]]))
    return len(paths) / (time.perf_counter() - start)


def whaleid_embed(embedder: Embedder, paths: list[str]) -> float:
    start = time.perf_counter()
    embedder.embed_paths(paths, progress=False)
    return len(paths) / (time.perf_counter() - start)


def speed(args: argparse.Namespace) -> dict:
    csv = args.csv or make_catalog(".cache/bench-synth", n_individuals=64, photos_per_individual=(4, 4), size=512)
    paths = read_catalog(csv, check_images=False).table["path"].tolist()[: args.n]
    torch.manual_seed(0)
    model = EmbeddingModel(ModelConfig(backbone=args.backbone, img_size=args.size), pretrained=False)
    engines = {
        engine: Embedder(model, batch_size=args.batch, num_workers=args.workers, engine=engine)
        for engine in ("torch", "onnx")
    }
    start = time.perf_counter()
    engines["onnx"].onnx  # noqa: B018 - the export (or the cached file), timed apart from throughput
    export_s = time.perf_counter() - start
    bare_timm(args.backbone, paths[: args.batch], args.size, args.batch)  # warm-up: allocator, page cache
    runs = {"bare timm": [], "whaleid embed --engine torch": [], "whaleid embed (onnx)": []}
    for _ in range(args.repeats):
        runs["bare timm"].append(bare_timm(args.backbone, paths, args.size, args.batch))
        runs["whaleid embed --engine torch"].append(whaleid_embed(engines["torch"], paths))
        runs["whaleid embed (onnx)"].append(whaleid_embed(engines["onnx"], paths))
    result = {name: float(np.median(v)) for name, v in runs.items()}
    print(
        f"{len(paths)} photos, {args.backbone} @ {args.size}px, batch {args.batch}, "
        f"{torch.get_num_threads()} threads; ONNX export or cache load {export_s:.1f} s"
    )
    for name in runs:
        ratio = result[name] / result["bare timm"]
        print(
            f"  {name:30s} {result[name]:7.1f} photos/s  {ratio:5.2f}x bare  (runs: {', '.join(f'{v:.1f}' for v in runs[name])})"
        )
    return {"photos": len(paths), "export_s": export_s, **result}


def session_settings(backbone: str, size: int, batch: int) -> dict[str, float]:
    """Photos/s of the exported model alone (random batches) under ONNX Runtime thread settings."""
    import onnxruntime as ort

    torch.manual_seed(0)
    embedder = Embedder(EmbeddingModel(ModelConfig(backbone=backbone, img_size=size), pretrained=False), engine="onnx")
    path, images = embedder.onnx.path, np.random.default_rng(0).normal(size=(batch, 3, size, size)).astype(np.float32)
    out = {}
    for threads in (1, 2):
        for spinning in ("1", "0"):
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.add_session_config_entry("session.intra_op.allow_spinning", spinning)
            session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
            session.run(None, {"images": images})
            start = time.perf_counter()
            for _ in range(4):
                session.run(None, {"images": images})
            name = f"{threads} thread(s), spinning {'on' if spinning == '1' else 'off'}"
            out[name] = 4 * batch / (time.perf_counter() - start)
            print(f"  {name:28s} {out[name]:6.1f} photos/s (model alone)")
    return out


def agreement(model: Path, split: Path, images: Path | None, batch: int) -> dict:
    """Per-photo cosine between the engines, and queries whose top-5 individuals differ."""
    embedded = {}
    for engine in ("torch", "onnx"):
        embedder = Embedder.from_checkpoint(model, batch_size=batch, engine=engine)
        embedded[engine] = {
            part: embedder.embed_catalog(read_catalog(split / f"{part}.csv", images), progress=False)
            for part in ("fit", "test")
        }
    cosines = np.concatenate(
        [(embedded["torch"][p].vectors * embedded["onnx"][p].vectors).sum(1) for p in ("fit", "test")]
    )
    tops = {}
    for engine, parts in embedded.items():
        gallery, queries = parts["fit"], parts["test"]
        scores, indices = ExactIndex(gallery.vectors).search(queries.vectors, 50)
        tops[engine] = [r.ids for r in top_individuals(scores, indices, gallery.table["individual_id"].tolist())]
    differ = sum(a != b for a, b in zip(tops["torch"], tops["onnx"]))
    print(
        f"agreement on {split}: {len(cosines)} photos, cosine min {cosines.min():.7f} (median {np.median(cosines):.7f}); "
        f"top-5 differs for {differ} of {len(tops['torch'])} queries"
    )
    return {
        "photos": len(cosines),
        "min_cosine": float(cosines.min()),
        "top5_differs": differ,
        "queries": len(tops["torch"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", help="catalog CSV (default: a synthetic catalog)")
    parser.add_argument("--n", type=int, default=256, help="photos (0: skip the speed runs)")
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: cores - 1)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--agree", type=Path, help="a trained model.json: compare the engines on --split")
    parser.add_argument("--split", type=Path, help="folder with fit.csv (gallery) and test.csv (queries)")
    parser.add_argument("--settings", action="store_true", help="also time ONNX Runtime thread settings")
    parser.add_argument("--images", type=Path, help="photo folder of the split's CSVs")
    parser.add_argument("--json")
    args = parser.parse_args()
    result = {"args": {k: str(v) for k, v in vars(args).items()}}
    if args.n:
        result["speed"] = speed(args)
    if args.settings:
        result["settings"] = session_settings(args.backbone, args.size, args.batch)
    if args.agree:
        result["agreement"] = agreement(args.agree, args.split, args.images, args.batch)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
