"""End to end: a survey's photos from files to top-5 individuals against a big gallery, in photos/s.

A survey of ``--photos`` camera photos (the Happywhale sample's 100 photos, each written
``--photos / 100`` times under new names, optionally upscaled with ``--width``) is cropped
(saliency crop cache at the model's input size), embedded (zero-shot EfficientNet-Lite0,
224 px) and searched against a ``--gallery``-photo gallery (random unit vectors of
individuals with 1-6 photos each; search cost does not depend on what the vectors mean),
each stage timed. Only the library's public calls are used, so the same script times an
older checkout too, for the before/after in docs/benchmarks.md:

    .venv/bin/python benchmarks/survey.py --json runs/bench/survey-after.json
    git worktree add /tmp/before <commit> && PYTHONPATH=/tmp/before/src \\
        .venv/bin/python benchmarks/survey.py --json runs/bench/survey-before.json
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

import whaleid
from whaleid.data.catalog import read_catalog
from whaleid.data.images import open_image
from whaleid.model.embed import Embedder
from whaleid.preprocess.prepare import PreprocessConfig, prepare
from whaleid.search.index import ExactIndex
from whaleid.search.ranking import top_individuals

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def survey(folder: Path, photos: int, width: int | None) -> Path:
    """``photos`` JPEGs made from the Happywhale sample, and their CSV."""
    sample = read_catalog(DATA / "happywhale-sample" / "train.csv", check_images=False, progress=False)
    (folder / "images").mkdir(parents=True)
    rows = []
    for i in range(photos):
        source = sample.paths[i % len(sample)]
        name = f"survey_{i:05d}.jpg"
        if width is None:
            shutil.copyfile(source, folder / "images" / name)
        else:
            im = open_image(source)
            im.resize((width, round(im.height * width / im.width))).save(folder / "images" / name, quality=92)
        rows.append({"image": name, "species": "unknown", "individual_id": ""})
    pd.DataFrame(rows).to_csv(folder / "survey.csv", index=False)
    return folder / "survey.csv"


def gallery(n: int, dim: int, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = np.cumsum(rng.random(n) < 1 / 3.5).astype(str)  # about 3.5 photos per individual
    return vectors, [f"whale_{i}" for i in ids]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=1000)
    parser.add_argument("--gallery", type=int, default=50_000)
    parser.add_argument("--width", type=int, help="upscale the photos to this width (default: as they are)")
    parser.add_argument("--json")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="whaleid-survey-"))
    try:
        csv = survey(work / "survey", args.photos, args.width)
        catalog = read_catalog(csv, require_labels=False, progress=False)
        embedder = Embedder.zero_shot("tf_efficientnet_lite0", 224)
        config = PreprocessConfig.from_options("saliency", None, None, 224, None)
        seconds = {}
        if hasattr(embedder, "onnx"):  # once per model: the ONNX export, or loading the cached one
            start = time.perf_counter()
            embedder.onnx  # noqa: B018
            seconds["export"] = time.perf_counter() - start
        start = time.perf_counter()
        ready = prepare(catalog, config, work / "cache", progress=False)
        seconds["crop"] = time.perf_counter() - start
        start = time.perf_counter()
        queries = embedder.embed_catalog(ready, progress=False)
        seconds["embed"] = time.perf_counter() - start
        vectors, ids = gallery(args.gallery, queries.dim)
        start = time.perf_counter()
        scores, indices = ExactIndex(vectors).search(queries.vectors, 50)
        top5 = top_individuals(scores, indices, ids)
        seconds["search"] = time.perf_counter() - start
        assert len(top5) == args.photos
    finally:
        shutil.rmtree(work)
    total = sum(seconds.values())
    result = {
        "whaleid": whaleid.__version__,
        "source": str(Path(whaleid.__file__).parent),
        "photos": args.photos,
        "gallery": args.gallery,
        "width": args.width,
        "seconds": seconds,
        "photos_per_s": args.photos / total,
    }
    print(f"{args.photos} photos vs a {args.gallery}-photo gallery ({result['source']}):")
    for stage, s in seconds.items():
        rate = "" if stage == "export" else f"  {args.photos / s:7.1f} photos/s"
        print(f"  {stage:7s} {s:7.1f} s{rate}")
    print(f"  total   {total:7.1f} s  {result['photos_per_s']:7.1f} photos/s")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
