"""Re-ranking variants on an open-set split, through the library's own path (`calibrated_open_set`).

Each test photo queries the other test photos (leave-one-out, held-out individuals); the validation
individuals fit the fusion and the new_individual threshold, as `whaleid demo` and
`whaleid openset --rerank` do. A variant is a comma list of: a detector (aliked, sift, orb),
``kN`` (at most N keypoints), ``sN`` (upscale photos to a short side of N px), ``clahe`` / ``noclahe``,
``mask`` (keypoints inside the saliency mask only), ``mutual`` / ``ratio`` (OpenCV matching instead of
LightGlue), ``esX`` (LightGlue's early stop; es-1: never), ``cX`` (LightGlue's least confidence),
``affine`` (MAGSAC affine instead of the RANSAC similarity). Reported: top-1 and top-5 over queries
whose individual has another photo, MAP@5 with the validation threshold, and how often the right
individual is in the shortlist at all.

Each pair is matched once per variant: the K=20 shortlist is the start of the K=50 one, and every local
weight reuses the counts. ``--combine A B`` also fuses two variants' counts with the cosine (each
calibrated on val, the two local ones averaged), and ``--aggregate`` scores each individual by more than
its best photo; both are scored here, outside the library, on the same matches.

    .venv/bin/python benchmarks/rerank_probe.py --split runs/right-whales/split \\
        --model runs/right-whales/model --shortlist 20 50 --variants aliked sift --combine aliked sift
    .venv/bin/python benchmarks/rerank_probe.py --split runs/demo/split --images runs/demo/catalog/images \\
        --model runs/demo/model --shortlist 20       # the demo's synthetic fins, after `make demo`
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
import warnings
from pathlib import Path

import numpy as np

import whaleid.search.identify as identify
from whaleid.data.catalog import read_catalog
from whaleid.model.embed import Embedder, with_keypoints
from whaleid.model.embeddings import Embeddings
from whaleid.model.keypoints import KeypointConfig
from whaleid.search.fusion import Calibration
from whaleid.search.identify import Identifier, IdentifyConfig
from whaleid.search.local import MatchConfig
from whaleid.search.openset import calibrated_open_set, score_rankings
from whaleid.search.ranking import Ranking, top_individuals, truths
from whaleid.search.rerank import RerankConfig, pair_inliers
from whaleid.search.threshold import calibrate_threshold

RIGHT_WHALES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "right-whale-heads" / "images"
ROW = ("top1_known", "top5_known", "map5")
MEMO: dict = {}  # (keypoints of the queries, of the gallery, match settings) -> {(row, photo): verified matches}


def _remembered(queries, gallery, pairs, config):
    """pair_inliers, matching only the pairs this variant has not matched before."""
    memo = MEMO.setdefault((id(queries), id(gallery), config.match), {})
    todo = np.array([[j if (i, j) not in memo else -1 for j in row] for i, row in enumerate(pairs.tolist())])
    if (todo >= 0).any():
        counts = pair_inliers(queries, gallery, todo.reshape(pairs.shape), config)
        for i, j in zip(*np.nonzero(todo >= 0)):
            memo[(int(i), int(todo[i, j]))] = counts[i, j]
    return np.array([[memo.get((i, j), 0.0) if j >= 0 else 0.0 for j in row] for i, row in enumerate(pairs.tolist())])


def variant(text: str) -> tuple[KeypointConfig, MatchConfig]:
    words = text.split(",")
    number = {}
    for word in words:
        for prefix in ("es", "k", "s", "c"):
            if word.startswith(prefix) and word[len(prefix) :].lstrip("-").replace(".", "").isdigit():
                number[prefix] = float(word[len(prefix) :])
                break
    keypoints = KeypointConfig(
        detector=next((w for w in words if w in ("aliked", "sift", "orb")), "aliked"),
        max_keypoints=int(number.get("k", 0)),
        min_side=int(number.get("s", 0)),
        clahe=True if "clahe" in words else False if "noclahe" in words else None,
        mask="mask" in words,
    )
    match = MatchConfig(
        matcher="mutual" if "mutual" in words else "ratio" if "ratio" in words else "auto",
        geometry="affine" if "affine" in words else "similarity",
        min_confidence=number.get("c", 0.1),
        early_stop=number.get("es", 0.95),
    )
    return keypoints, match


def evidence(embeddings: Embeddings, rerank: RerankConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Leave-one-out shortlists of a set: cosines, rows, verified matches (from the memo)."""
    among = Identifier.from_embeddings(embeddings, IdentifyConfig(rerank=rerank))
    found = among.second.evidence(among.first, among.index, embeddings.vectors, embeddings.keypoints, own=True)
    return found.scores, found.indices, found.counts


def fused_rankings(
    cosines: np.ndarray, rows: np.ndarray, counts: list[np.ndarray], calibrations, weight: float, ids, best: float
) -> list[Ranking]:
    """The library's fusion with several local scores averaged; ``best`` > 0 adds that share of each
    individual's second-best photo to its best."""
    local = np.mean([c(n) for c, n in zip(calibrations[1:], counts, strict=True)], axis=0)
    fused = np.where(rows >= 0, (1 - weight) * calibrations[0](cosines) + weight * local, -np.inf)
    tiebreak = sum(counts) + cosines
    if best:
        labels = np.asarray(ids, dtype=object)[np.maximum(rows, 0)]
        for i in range(len(rows)):
            order = np.argsort(-fused[i], kind="stable")
            seen: dict = {}
            for j in order:
                if rows[i, j] >= 0:
                    seen.setdefault(labels[i, j], []).append(j)
            for photos in seen.values():
                if len(photos) > 1:
                    fused[i, photos[0]] += best * fused[i, photos[1]]
    return top_individuals(fused, rows, ids, tiebreak=tiebreak)


def combined(val: dict, test: dict, names: list[str], k: int, weight: float, best: float = 0.0) -> dict:
    """Metrics of the cosine fused with the counts of ``names`` at shortlist K, fitted on val."""

    def cut(part, name):
        counts = part["counts"][name].copy()
        counts[:, k + 1 :] = 0  # K photos besides the emptied own slot
        return counts

    width = k + 1
    rows = val["rows"][:, :width]
    matched = rows >= 0
    same = (np.asarray(val["ids"], dtype=object)[rows[matched]]) == np.repeat(
        np.asarray(val["ids"], dtype=object), matched.sum(axis=1)
    )
    calibrations = [Calibration.fit(val["cosines"][:, :width][matched], same)] + [
        Calibration.fit(cut(val, n)[:, :width][matched], same) for n in names
    ]
    ranked = {
        part_name: fused_rankings(
            part["cosines"], part["rows"], [cut(part, n) for n in names], calibrations, weight, part["ids"], best
        )
        for part_name, part in (("val", val), ("test", test))
    }
    threshold = calibrate_threshold(ranked["val"], truths(val["ids"]), "sweep")
    metrics = score_rankings(ranked["test"], truths(test["ids"]), threshold)
    known = [t in set(r) for r, t in zip(_shortlisted(test, k), truths(test["ids"])) if t != "new_individual"]
    return {**metrics, "recall_k": float(np.mean(known))}


def _shortlisted(part: dict, k: int) -> list[list[str]]:
    ids = np.asarray(part["ids"], dtype=object)
    return [[ids[j] for j in row[: k + 1] if j >= 0] for row in part["rows"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", type=Path, required=True)
    parser.add_argument("--images", type=Path, default=RIGHT_WHALES)
    parser.add_argument("--model", type=Path, help="a checkpoint (default: zero-shot lite0 at --img-size)")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--shortlist", type=int, nargs="+", default=[20])
    parser.add_argument("--weights", type=float, nargs="+", default=[0.5])
    parser.add_argument("--variants", nargs="+", default=["aliked"])
    parser.add_argument("--combine", nargs="+", default=[], help="variants whose counts are also fused together")
    parser.add_argument("--aggregate", type=float, nargs="*", default=[], help="shares of the second-best photo")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--cache", type=Path, help="keep each variant's matches here, to score more settings later")
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
        row = {"variant": name, **{k: round(float(metrics[k]), 3) for k in (*ROW, "recall_k") if k in metrics}}
        report["rows"].append({**row, **extra})
        print(json.dumps({**row, **extra}), flush=True)

    add("global cosine only", calibrated_open_set(val, test)[0])
    kept: dict[str, dict] = {"val": {"ids": val.table["individual_id"].tolist(), "counts": {}}, "test": {}}
    kept["test"] = {"ids": test.table["individual_id"].tolist(), "counts": {}}
    for text in args.variants:
        keypoints, match = variant(text)
        start = time.perf_counter()
        with_kps = [
            with_keypoints(Embeddings(e.vectors, e.table, meta=dict(e.meta)), _paths(e, c), keypoints, progress=False)
            for e, c in parts.values()
        ]
        per_photo = (time.perf_counter() - start) / sum(len(e) for e in with_kps)
        widest = RerankConfig(shortlist=max(args.shortlist), keypoints=keypoints, match=match)
        start = time.perf_counter()
        for name, embeddings in zip(("val", "test"), with_kps, strict=True):
            cosines, rows, counts = _cached(args, name, text, embeddings, widest)
            kept[name].update(cosines=cosines, rows=rows)
            kept[name]["counts"][text] = counts
        pairs = sum(len(e) for e in with_kps) * max(args.shortlist)
        pair_ms = round(1000 * (time.perf_counter() - start) / pairs, 1)
        for k in args.shortlist:
            for weight in args.weights:
                rerank = RerankConfig(shortlist=k, local_weight=weight, keypoints=keypoints, match=match)
                metrics = calibrated_open_set(*with_kps, rerank)[0]
                recall = combined(kept["val"], kept["test"], [text], k, weight)["recall_k"]
                add(
                    f"{text}, K={k}, w={weight}",
                    {**metrics, "recall_k": recall},
                    extract_ms=round(1000 * per_photo, 1),
                    pair_ms=pair_ms,
                )
            for share in args.aggregate:
                add(
                    f"{text}, K={k}, w={args.weights[0]}, + {share} x second photo",
                    combined(kept["val"], kept["test"], [text], k, args.weights[0], share),
                )
    if len(args.combine) > 1:
        for k in args.shortlist:
            for weight in args.weights:
                add(
                    f"{' + '.join(args.combine)}, K={k}, w={weight}",
                    combined(kept["val"], kept["test"], args.combine, k, weight),
                )
            for share in args.aggregate:
                add(
                    f"{' + '.join(args.combine)}, K={k}, w={args.weights[0]}, + {share} x second photo",
                    combined(kept["val"], kept["test"], args.combine, k, args.weights[0], share),
                )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))


def _cached(args, name: str, text: str, embeddings: Embeddings, rerank: RerankConfig):
    """evidence(), read from ``args.cache`` when this split, model, shortlist and variant were matched before
    (and remembered for the library's own calls)."""
    key = f"{args.split}|{args.model}|{args.img_size}|{rerank.shortlist}|{name}|{text}"
    path = args.cache / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz" if args.cache else None
    if path is None or not path.is_file():
        cosines, rows, counts = evidence(embeddings, rerank)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            np.savez(path, cosines=cosines, rows=rows, counts=counts)
        return cosines, rows, counts
    with np.load(path) as saved:
        cosines, rows, counts = saved["cosines"], saved["rows"], saved["counts"]
    memo = MEMO.setdefault((id(embeddings.keypoints), id(embeddings.keypoints), rerank.match), {})
    for i, j in zip(*np.nonzero(rows[:, : rerank.shortlist + 1] >= 0)):
        memo[(int(i), int(rows[i, j]))] = counts[i, j]
    return cosines, rows, counts


def _paths(embeddings: Embeddings, catalog) -> list[str]:
    return catalog.table.set_index("image").loc[embeddings.table["image"], "path"].tolist()


if __name__ == "__main__":
    main()
