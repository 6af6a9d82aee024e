"""Crop throughput on CPU: saliency masks + boxes, and a whole cache build, in photos/s.

The saliency model always sees a 224x224 letterbox; what grows with photo size is
decoding, letterboxing, mapping the mask back to full resolution and cutting the crop.
So the same photos are measured as they are (Happywhale sample, up to 1024 px; dorsal
fins, up to 2311 px) and upscaled to camera size (4000 px wide).

    .venv/bin/python benchmarks/crop_throughput.py
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from whaleid.data.catalog import Catalog, read_catalog
from whaleid.data.images import open_image
from whaleid.preprocess.cache import CacheSettings
from whaleid.preprocess.cache_writer import build_cache
from whaleid.preprocess.crops import CropSettings, locate

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def upscaled(catalog: Catalog, width: int, out: Path) -> Catalog:
    """The same photos at camera resolution, written as JPEGs like a camera's."""
    (out / "images").mkdir(parents=True, exist_ok=True)
    for name, path in zip(catalog.table["image"], catalog.paths):
        im = open_image(path)
        im.resize((width, round(im.height * width / im.width)), Image.Resampling.BICUBIC).save(
            out / "images" / name, quality=92
        )
    catalog.table[["image", "species", "individual_id"]].to_csv(out / "train.csv", index=False)
    return read_catalog(out / "train.csv", check_images=False, progress=False)


def masks_and_boxes(catalog: Catalog, batch: int, workers: int) -> float:
    start = time.perf_counter()
    for _ in locate(catalog.paths, CropSettings(), batch, workers, progress=False):
        pass
    return len(catalog) / (time.perf_counter() - start)


def cache_build(catalog: Catalog, settings: CacheSettings, workers: int) -> float:
    root = Path(tempfile.mkdtemp(prefix="whaleid-bench-cache-"))
    try:
        start = time.perf_counter()
        build_cache(catalog, root, settings, workers=workers, progress=False)
        return len(catalog) / (time.perf_counter() - start)
    finally:
        shutil.rmtree(root)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--n", type=int, default=48, help="photos per set")
    parser.add_argument("--camera-width", type=int, default=4000)
    parser.add_argument("--workers", type=int, default=2, help="decode/write threads")
    parser.add_argument("--json")
    args = parser.parse_args()

    sample = read_catalog(args.data / "happywhale-sample" / "train.csv", check_images=False, progress=False)
    sample = sample.subset(np.arange(min(args.n, len(sample))))
    fins = read_catalog(args.data / "dorsal-fins" / "train.csv", check_images=False, progress=False)
    scratch = Path(tempfile.mkdtemp(prefix="whaleid-bench-photos-"))
    sets = {
        "happywhale-sample": sample,
        "dorsal-fins": fins,
        f"sample at {args.camera_width} px": upscaled(sample, args.camera_width, scratch),
    }
    masks_and_boxes(fins, 8, args.workers)  # load the ONNX session once, outside the timings

    rows = []
    for name, catalog in sets.items():
        megapixels = np.mean([np.prod(Image.open(p).size) for p in catalog.paths]) / 1e6
        row = {"photos": name, "n": len(catalog), "mean MP": round(float(megapixels), 2)}
        row["masks+boxes, batch 1"] = masks_and_boxes(catalog, 1, args.workers)
        row["masks+boxes, batch 8"] = masks_and_boxes(catalog, 8, args.workers)
        row["cache 256 px"] = cache_build(catalog, CacheSettings(sizes=(256,)), args.workers)
        row["cache 256 px + blur background"] = cache_build(
            catalog, CacheSettings(sizes=(256,), background="blur"), args.workers
        )
        rows.append(row)
    shutil.rmtree(scratch)
    table = pd.DataFrame(rows)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.1f}"))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
