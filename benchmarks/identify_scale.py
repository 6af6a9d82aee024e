"""How long does identification take at Happywhale scale, per index kind?

Synthetic, seeded stand-in for the competition: a 51,033-photo gallery of ~15.6k
individuals with a long-tailed photo count (most individuals have one or two photos,
a few have hundreds), and 27,956 queries of which a share come from individuals
absent from the gallery. Vectors are unit-norm, clustered around one centre per
individual, so neighbours and MAP@5 mean something.

For each index kind it times build, k=100 search, and the dedupe + new_individual
step (``top_individuals`` + ``insert_new_individual``), samples peak RSS growth, and
checks quality: recall@100 against the exact index and MAP@5 with a threshold
calibrated on the same queries (optimistic, a sanity check rather than a score).

    .venv/bin/python benchmarks/identify_scale.py                       # full size
    .venv/bin/python benchmarks/identify_scale.py --gallery 5000 --queries 2000 --json out.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import sys
import threading
import time
from pathlib import Path

import numpy as np

from whaleid.search.index import build_index
from whaleid.search.metrics import map_at_5
from whaleid.search.ranking import NEW_INDIVIDUAL, insert_new_individual, top_individuals
from whaleid.search.threshold import calibrate_threshold

HAPPYWHALE = {"gallery": 51_033, "queries": 27_956, "individuals": 15_587, "dim": 512}
KINDS = ("exact", "faiss-flat", "faiss-hnsw", "faiss-ivf")


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class PeakRSS:
    """Peak resident memory above the level at entry, sampled by a background thread.

    Sampling (every 10 ms) can miss very short spikes; hence "memory-ish". Covers
    numpy and faiss (C++) allocations alike, unlike tracemalloc.
    """

    def __init__(self, interval: float = 0.01):
        self.interval = interval
        self.peak = self.base = 0
        self._stop = threading.Event()

    def __enter__(self) -> PeakRSS:
        gc.collect()
        self.base = self.peak = _rss_bytes() or 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, _rss_bytes() or 0)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes() or 0)

    @property
    def mib(self) -> float:
        return (self.peak - self.base) / 2**20


def unit(x: np.ndarray) -> np.ndarray:
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def synthesise(
    n_gallery: int, n_queries: int, dim: int, new_frac: float, noise: float, seed: int
) -> tuple[np.ndarray, list[str], np.ndarray, list[str]]:
    """Gallery/query vectors with Happywhale's shape: long-tailed photos per individual."""
    rng = np.random.default_rng(seed)
    n_ind = max(1, round(n_gallery * HAPPYWHALE["individuals"] / HAPPYWHALE["gallery"]))
    n_new = round(n_queries * new_frac)
    n_unseen = max(1, n_new)  # individuals that only appear among the queries
    centres = unit(rng.standard_normal((n_ind + n_unseen, dim), dtype=np.float32))
    # every individual gets one photo, the rest follow a Zipf-like popularity
    weights = 1.0 / np.arange(1, n_ind + 1) ** 1.1
    extra = rng.choice(n_ind, size=n_gallery - n_ind, p=weights / weights.sum())
    owner = rng.permutation(np.concatenate([np.arange(n_ind), extra]))
    scale = noise / np.sqrt(dim)

    def photos(who: np.ndarray) -> np.ndarray:
        out = np.empty((len(who), dim), np.float32)
        for s in range(0, len(who), 8192):  # chunks keep the noise transient small
            w = who[s : s + 8192]
            out[s : s + len(w)] = centres[w] + scale * rng.standard_normal((len(w), dim), dtype=np.float32)
        return unit(out)

    gallery = photos(owner)
    known = owner[rng.integers(0, n_gallery, size=n_queries - n_new)]
    unseen = n_ind + rng.integers(0, n_unseen, size=n_new)
    q_owner = rng.permutation(np.concatenate([known, unseen]))
    queries = photos(q_owner)
    name = lambda i: f"ind{i:06d}"  # noqa: E731
    gallery_ids = [name(i) for i in owner]
    truths = [name(i) if i < n_ind else NEW_INDIVIDUAL for i in q_owner]
    return gallery, gallery_ids, queries, truths


def run_kind(
    kind: str, gallery, gallery_ids, queries, truths, k: int, threads: int | None, exact_idx: np.ndarray | None
) -> tuple[dict, np.ndarray]:
    row: dict = {"kind": kind}
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        index = build_index(gallery, kind, threads=threads)
        t1 = time.perf_counter()
        scores, idx = index.search(queries, k)
        t2 = time.perf_counter()
        rankings = top_individuals(scores, idx, gallery_ids, top=5)
        t3 = time.perf_counter()
    # threshold from the same queries: only to check that the ranking is sensible
    threshold = calibrate_threshold(rankings, truths)
    t4 = time.perf_counter()
    answers = [insert_new_individual(r, threshold).ids for r in rankings]
    t5 = time.perf_counter()
    row.update(build_s=t1 - t0, search_s=t2 - t1, top5_s=(t3 - t2) + (t5 - t4), peak_mib=mem.mib)
    row["total_s"] = row["build_s"] + row["search_s"] + row["top5_s"]
    row["queries_per_s"] = len(queries) / (row["search_s"] + row["top5_s"])
    row["recall_at_k"] = (
        1.0 if exact_idx is None else float(np.mean([len(np.intersect1d(a, b)) / k for a, b in zip(idx, exact_idx)]))
    )
    row["threshold"] = threshold
    row["map5"] = map_at_5(answers, truths)
    row["params"] = getattr(index, "params", {})
    return row, idx


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--gallery", type=int, default=HAPPYWHALE["gallery"])
    p.add_argument("--queries", type=int, default=HAPPYWHALE["queries"])
    p.add_argument("--dim", type=int, default=HAPPYWHALE["dim"])
    p.add_argument(
        "--threads", type=int, default=None, help="BLAS/OpenMP threads (default: library default, usually all cores)"
    )
    p.add_argument("--k", type=int, default=100, help="neighbours searched per query")
    p.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated index kinds (default: {','.join(KINDS)})")
    p.add_argument("--new-frac", type=float, default=0.2, help="share of queries from individuals not in the gallery")
    p.add_argument("--noise", type=float, default=2.2, help="per-photo noise norm around its individual's centre")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="also write results here")
    return p


def _print_table(rows: list[dict]) -> None:
    header = (
        f"{'kind':<11} {'build s':>8} {'search s':>9} {'top5 s':>7} {'total s':>8} "
        f"{'q/s':>8} {'peak MiB':>9} {'recall@k':>9} {'MAP@5':>6}"
    )
    print("\n" + header + "\n" + "-" * len(header))
    for r in rows:
        print(
            f"{r['kind']:<11} {r['build_s']:>8.2f} {r['search_s']:>9.2f} {r['top5_s']:>7.2f} "
            f"{r['total_s']:>8.2f} {r['queries_per_s']:>8.0f} {r['peak_mib']:>9.0f} "
            f"{r['recall_at_k']:>9.4f} {r['map5']:>6.3f}"
        )


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    kinds = [x.strip() for x in args.kinds.split(",") if x.strip()]
    if kinds and "exact" in kinds:
        kinds.remove("exact")
        kinds.insert(0, "exact")  # the reference for recall comes first

    t = time.perf_counter()
    gallery, gallery_ids, queries, truths = synthesise(
        args.gallery, args.queries, args.dim, args.new_frac, args.noise, args.seed
    )
    gen_s = time.perf_counter() - t
    print(
        f"gallery {gallery.shape[0]:,} x {gallery.shape[1]} ({len(set(gallery_ids)):,} "
        f"individuals), queries {len(queries):,} ({truths.count(NEW_INDIVIDUAL):,} new), "
        f"k={args.k}, threads={args.threads or 'default'}; synthesised in {gen_s:.1f}s",
        flush=True,
    )

    rows, exact_idx = [], None
    for kind in kinds:
        row, idx = run_kind(kind, gallery, gallery_ids, queries, truths, args.k, args.threads, exact_idx)
        if kind == "exact":
            exact_idx = idx
        rows.append(row)
        print(f"  {kind}: done in {row['total_s']:.1f}s", flush=True)

    _print_table(rows)
    max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    max_rss_mib = max_rss / 2**20 if sys.platform == "darwin" else max_rss / 2**10
    print(
        f"process max RSS {max_rss_mib:.0f} MiB; peak MiB = sampled RSS growth during "
        "build+search+top5 (missing short spikes)"
    )

    if args.json:
        import faiss

        out = {
            "config": vars(args) | {"json": str(args.json)},
            "n_individuals": len(set(gallery_ids)),
            "n_new_queries": truths.count(NEW_INDIVIDUAL),
            "synthesise_s": gen_s,
            "max_rss_mib": max_rss_mib,
            "results": rows,
            "machine": {
                "cpus": os.cpu_count(),
                "platform": platform.platform(),
                "python": platform.python_version(),
                "numpy": np.__version__,
                "faiss": faiss.__version__,
            },
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.json.with_name(args.json.name + ".tmp")
        tmp.write_text(json.dumps(out, indent=2) + "\n")
        os.replace(tmp, args.json)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
