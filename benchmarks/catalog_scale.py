"""The living catalog at 50,000 photos: what does `add` cost besides embedding, and how fast are queue and decide?

The catalog (`whaleid.store.catalog.CatalogStore`, SQLite in its folder unless --db) is filled with
50,000 synthetic confirmed photos of 15,000 individuals: rows written straight into the photos,
individuals, embeddings and decisions tables, each with a random unit float32 vector of the model's
output size (512). The photos that are added are real JPEG files (`whaleid.data.synth.make_catalog`,
256 px), so `add` does all of its work: check, hash and copy each file, embed it, rank it against the
gallery and the batch, and write its rows.

The model is `test_efficientnet` (random weights, 512-d neck, 128 px): embedding is not the point
here, so the smallest timm network keeps it short; a real model's embedding time is in the
embedding-throughput benchmark. `store.models.embed` is wrapped with a timer (the library is unchanged), so
an add splits into embedding and everything else; `store.intake._copy_in`, `store.gallery.identifier` and
`store.gallery.propose` are timed the same way to say where the rest goes. Three adds are measured:

1. the first add after the catalog was filled: the gallery's vector cache (``index/``) is built from
   the database inside it, once;
2. a warm add: nothing confirmed since;
3. an add after `--calls` confirmations: the cache is topped up with those vectors (and rewritten).

Then `queue(limit=50)` and `decide(confirm=...)` are each called `--calls` times on the catalog with
its pending photos; the median (and the slowest) is reported.

    .venv/bin/python benchmarks/catalog_scale.py --json catalog_scale.json
    .venv/bin/python benchmarks/catalog_scale.py --photos 5000 --individuals 1500 --add 100   # a quick look
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
from sqlalchemy import insert

from whaleid.data.synth import make_catalog
from whaleid.model.checkpoint import save_checkpoint
from whaleid.model.network import EmbeddingModel, ModelConfig
from whaleid.store.catalog import CatalogStore
from whaleid.store.intake import EncounterInfo
from whaleid.store.schema import Decision, Embedding, Individual, Photo

TARGETS = {"add_rest_s": 2.0, "queue_ms": 50.0, "decide_ms": 50.0}
CHUNK = 5_000  # rows per executemany


class Timed:
    """A stand-in for one of the store's methods that adds up the time spent in it."""

    def __init__(self, function):
        self.function = function
        self.seconds = 0.0

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return self.function(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start


def fill(store: CatalogStore, n_photos: int, n_individuals: int, dim: int, seed: int) -> None:
    """``n_photos`` confirmed photos of ``n_individuals`` animals, with vectors, written as rows in one transaction."""
    rng = np.random.default_rng(seed)
    owner = np.concatenate([np.arange(n_individuals), rng.integers(0, n_individuals, n_photos - n_individuals)])
    stamp = datetime(2024, 1, 1)
    with store.session() as session, session.begin():
        model = store.models.active(session)
        session.execute(
            insert(Individual),
            [
                {
                    "id": i + 1,
                    "catalog_id": f"RW-{i + 1:05d}",
                    "species": "north_atlantic_right_whale",
                    "created_by": "benchmark",
                    "created_at": stamp,
                }
                for i in range(n_individuals)
            ],
        )
        for start in range(0, n_photos, CHUNK):
            ids = range(start + 1, min(start + CHUNK, n_photos) + 1)
            vectors = rng.standard_normal((len(ids), dim), dtype=np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            digests = [hashlib.sha256(f"synthetic:{seed}:{p}".encode()).hexdigest() for p in ids]
            session.execute(
                insert(Photo),
                [
                    {
                        "id": p,
                        "sha256": d,
                        "file": f"{d}.jpg",
                        "original_name": f"synthetic_{p:06d}.jpg",
                        "size": 100_000,
                        "crop_status": "none",
                        "added_at": stamp,
                        "state": "confirmed",
                        "individual_id": int(owner[p - 1]) + 1,
                        "version": 1,
                    }
                    for p, d in zip(ids, digests)
                ],
            )
            session.execute(
                insert(Embedding),
                [{"photo_id": p, "model_id": model.id, "vector": v.tobytes()} for p, v in zip(ids, vectors)],
            )
            session.execute(
                insert(Decision),
                [
                    {
                        "kind": "confirm",
                        "photo_id": p,
                        "individual_id": int(owner[p - 1]) + 1,
                        "reviewer": "benchmark",
                        "created_at": stamp,
                    }
                    for p in ids
                ],
            )


def timed_add(store: CatalogStore, paths: list[Path], label: str) -> dict:
    """One `add`, split into embedding, copying in, gallery load, search + match rows, and the rest (rows, commit)."""
    parts = {"embed": store.models, "_copy_in": store.intake, "identifier": store.gallery, "propose": store.gallery}
    timers = {name: Timed(getattr(part, name)) for name, part in parts.items()}
    for name, timer in timers.items():
        setattr(parts[name], name, timer)  # an instance attribute: the store's own calls go through the timer
    try:
        start = time.perf_counter()
        result = store.intake.add(paths, EncounterInfo(date="2025-06-01", place="benchmark"))
        total = time.perf_counter() - start
    finally:
        for name, part in parts.items():
            delattr(part, name)
    if len(result.added) != len(paths):
        raise SystemExit(f"{label}: {len(result.added)} of {len(paths)} added; rejected {result.rejected[:3]}")
    embed, copy_in, gallery, match = (timers[n].seconds for n in ("embed", "_copy_in", "identifier", "propose"))
    return {
        "photos": len(paths),
        "total_s": total,
        "embed_s": embed,
        "rest_s": total - embed,  # the target: search and writing
        "copy_in_s": copy_in,  # check, hash, duplicate lookup, fsync'd copy, EXIF: per photo
        "gallery_s": gallery,  # inside match: the gallery's vectors and ids, as an Identifier
        "search_and_match_rows_s": match - gallery,
        "rows_commit_s": total - embed - copy_in - match,
    }


def latency(function, calls: int) -> dict:
    times = []
    for i in range(calls):
        start = time.perf_counter()
        function(i)
        times.append((time.perf_counter() - start) * 1000)
    return {"median_ms": statistics.median(times), "max_ms": max(times), "calls": calls}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=50_000, help="confirmed photos already in the catalog")
    parser.add_argument("--individuals", type=int, default=15_000)
    parser.add_argument("--add", type=int, default=500, help="photos per add")
    parser.add_argument("--calls", type=int, default=20, help="queue and decide calls (and confirmations)")
    parser.add_argument("--img-size", type=int, default=128)
    parser.add_argument("--db", help="database URL (default: SQLite in the catalog folder)")
    parser.add_argument("--dir", help="work folder, kept (default: a temporary one, removed)")
    parser.add_argument("--json")
    args = parser.parse_args()
    if not 1 <= args.individuals <= args.photos or not 1 <= args.calls <= 2 * args.add:
        parser.error("need 1 <= --individuals <= --photos and 1 <= --calls <= 2 * --add")
    with tempfile.TemporaryDirectory(prefix="whaleid-catalog-scale-") as tmp:
        report = run(args, Path(args.dir) if args.dir else Path(tmp))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


def run(args, work: Path) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    config = ModelConfig(backbone="test_efficientnet", embedding_dim=512, img_size=args.img_size)
    checkpoint = save_checkpoint(EmbeddingModel(config, pretrained=False).eval(), work / "model" / "model", ["none"])
    store = CatalogStore.create(work / "catalog", checkpoint, db=args.db)

    csv = make_catalog(work / "photos", n_individuals=3 * args.add // 5, photos_per_individual=5, size=256, seed=1)
    photos = sorted((csv.parent / "images").glob("*.jpg"))
    batches = [photos[i * args.add : (i + 1) * args.add] for i in range(3)]

    with store.session() as session:
        model = store.models.active(session)
    vectors, _ = store.models.embed(model, [str(photos[0])])  # loads the model once, outside every timing
    dim = vectors.shape[1]

    start = time.perf_counter()
    fill(store, args.photos, args.individuals, dim, seed=0)
    fill_s = time.perf_counter() - start
    print(f"filled {args.photos:,} confirmed photos of {args.individuals:,} individuals ({dim}-d) in {fill_s:.1f} s")

    adds = {"first (builds the vector cache)": timed_add(store, batches[0], "first add")}
    adds["warm"] = timed_add(store, batches[1], "warm add")

    pending = [item.photo for item in store.review.queue(limit=None)]
    queue = latency(lambda i: store.review.queue(limit=50), args.calls)
    individuals = [f"RW-{i + 1:05d}" for i in range(args.calls)]
    decide = latency(
        lambda i: store.review.decide(pending[i], confirm=individuals[i], reviewer="benchmark"), args.calls
    )
    adds[f"after {args.calls} confirmations (cache top-up)"] = timed_add(store, batches[2], "third add")

    report = {
        "benchmark": "catalog_scale",
        "catalog_photos": args.photos,
        "individuals": args.individuals,
        "dim": dim,
        "model": f"test_efficientnet, random weights, {args.img_size} px, 512-d",
        "database": store.engine.dialect.name,
        "fill_s": fill_s,
        "adds": adds,
        "queue_limit_50": queue,
        "decide_confirm": decide,
        "targets": TARGETS,
        "machine": {
            "platform": platform.platform(),
            "python": sys.version.split()[0],
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
        },
    }
    print()
    print(f"catalog: {args.photos:,} confirmed photos, {args.individuals:,} individuals, {report['database']}")
    print(
        "| add | total s | embed s | rest s | = copy in s | + gallery s | + search, match rows s | + rows, commit s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for label, a in adds.items():
        print(
            f"| {a['photos']} photos, {label} | {a['total_s']:.2f} | {a['embed_s']:.2f} | {a['rest_s']:.2f} "
            f"| {a['copy_in_s']:.2f} | {a['gallery_s']:.2f} | {a['search_and_match_rows_s']:.2f} "
            f"| {a['rows_commit_s']:.2f} |"
        )
    print()
    print("| call | median ms | max ms | target ms |")
    print("|---|---|---|---|")
    print(f"| queue(limit=50) | {queue['median_ms']:.1f} | {queue['max_ms']:.1f} | {TARGETS['queue_ms']:.0f} |")
    print(f"| decide(confirm=...) | {decide['median_ms']:.1f} | {decide['max_ms']:.1f} | {TARGETS['decide_ms']:.0f} |")
    return report


if __name__ == "__main__":
    main()
