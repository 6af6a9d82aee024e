"""The open-set experiment behind `whaleid demo`: zero-shot vs fine-tuned on unseen individuals.

Individuals are split three ways: fit (training), val (choosing the new_individual
threshold) and test (held out entirely, scored with `whaleid.search.openset.leave_one_out`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from importlib.resources import as_file, files
from pathlib import Path

import pandas as pd

from whaleid.data.catalog import Catalog
from whaleid.data.splits import OpenSetSplit
from whaleid.data.synth import make_catalog
from whaleid.files import atomic_path
from whaleid.model.embed import Embedder, photos_per_second
from whaleid.search.metrics import cell, json_float, plot_threshold_sweep, write_submission
from whaleid.search.openset import calibrated_open_set
from whaleid.search.rerank import RerankConfig
from whaleid.settings import from_dict, load_yaml
from whaleid.train import TrainConfig, train

MATCHER_NAMES = {"lightglue": "LightGlue", "ratio": "ratio test", "mutual": "mutual neighbours"}  # the report's rows


@dataclass
class DemoConfig:
    """The demo's whole experiment; its values live in configs/demo.yaml (``--set`` changes one)."""

    individuals: int  # synthetic individuals, when no real catalog is given
    photos: tuple[int, int]  # photos per synthetic individual, fewest and most
    photo_size: int
    variation: float  # how much the photos of one synthetic fin vary (0-1)
    new_fraction: float  # individuals held out entirely (test)
    val_fraction: float  # individuals of the rest that choose the threshold (val)
    seed: int
    train: TrainConfig = field(default_factory=TrainConfig)
    rerank: RerankConfig | None = None  # also score each model with its shortlist re-ranked by local features


def load_demo_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> DemoConfig:
    """configs/demo.yaml (shipped with the package), or another file, with ``key.sub=value`` overrides."""
    with as_file(files("whaleid") / "configs" / "demo.yaml") as default:
        return from_dict(DemoConfig, load_yaml(path or default, overrides), "demo")


def demo_catalog(config: DemoConfig, out_dir: Path, data: Path | None = None) -> Path:
    """The catalog CSV to run on: a real one, or the synthetic fins (built once)."""
    if data is not None:
        return data / "train.csv"
    csv = out_dir / "catalog" / "train.csv"
    if not csv.exists():
        csv = make_catalog(
            out_dir / "catalog",
            config.individuals,
            config.photos,
            config.photo_size,
            config.seed,
            progress=True,
            variation=config.variation,
        )
    return csv


def score_embedder(
    embedder: Embedder, split: OpenSetSplit, rerank: RerankConfig | None = None, progress: bool = True
) -> dict[str, tuple[dict, pd.DataFrame, list[list[str]], list[str]]]:
    """Threshold from the validation individuals, metrics on the held-out ones: by the embeddings
    alone ("") and, with ``rerank``, re-ranked (" + <matcher> re-ranking"). Each: metrics, sweep, predictions, images."""
    val, test = (embedder.embed_catalog(part, progress=progress) for part in (split.val, split.test))
    images = test.table["image"].tolist()
    scored = {"": (*calibrated_open_set(val, test), images)}
    if rerank is not None:
        matcher = f"{rerank.keypoints.detector.upper()} + {MATCHER_NAMES[rerank.match.matcher]}"
        scored[f" + {matcher} re-ranking"] = (*calibrated_open_set(val, test, rerank), images)
    for metrics, *_ in scored.values():
        metrics["embed_photos_per_s"] = photos_per_second(embedder)
    return scored


def eager_speed(config: TrainConfig, split: OpenSetSplit, progress: bool = True) -> float:
    """Photos/s of the zero-shot model on torch eager, the speed that ONNX Runtime's is compared with."""
    eager = Embedder.zero_shot(config.model.backbone, config.model.img_size, batch_size=64, engine="torch")
    eager.embed_catalog(split.test, progress=progress)
    return photos_per_second(eager)


def run_open_set(
    catalog: Catalog, demo: DemoConfig, out_dir: str | Path, resume: bool = False, progress: bool = True
) -> dict:
    """Zero-shot vs fine-tuned on held-out individuals; writes report.json/.md, a threshold plot and a submission."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = demo.train
    split = OpenSetSplit.make(catalog, demo.new_fraction, demo.val_fraction, demo.seed)
    split.save(out_dir / "split")
    report: dict = {"split": split.sizes(), "train_config": asdict(config), "results": {}}

    keypoints = None if demo.rerank is None else demo.rerank.keypoints  # extracted once, beside the vectors
    zero_shot = Embedder.zero_shot(config.model.backbone, config.model.img_size, batch_size=64, keypoints=keypoints)
    for suffix, (metrics, *_) in score_embedder(zero_shot, split, demo.rerank, progress).items():
        report["results"][f"zero-shot{suffix}"] = metrics
    report["embedding"] = {"engine": zero_shot.runs_on, "torch_photos_per_s": eager_speed(config, split, progress)}

    trained = train(split.fit, config, out_dir / "model", val_catalog=split.val, resume=resume, progress=progress)
    fine_tuned = Embedder.from_checkpoint(trained.checkpoint, batch_size=64, keypoints=keypoints)
    scored = score_embedder(fine_tuned, split, demo.rerank, progress)
    for suffix, (metrics, *_) in scored.items():
        metrics["train_seconds"] = trained.seconds
        report["results"][f"fine-tuned{suffix}"] = metrics
    _, sweep, predictions, images = list(scored.values())[-1]  # the files show the last stage: re-ranked when it runs

    with atomic_path(out_dir / "threshold_sweep.csv") as tmp:
        sweep.to_csv(tmp, index=False)
    report["files"] = {
        "model": str(trained.checkpoint),
        "threshold_plot": str(
            plot_threshold_sweep(sweep, out_dir / "threshold_sweep.png", chosen=metrics["threshold"])
        ),
        "submission": str(write_submission(images, predictions, out_dir / "submission.csv")),
    }
    results = {name: {k: json_float(v) for k, v in m.items()} for name, m in report["results"].items()}
    with atomic_path(out_dir / "report.json") as tmp:
        tmp.write_text(json.dumps({**report, "results": results}, indent=2, default=str))
    with atomic_path(out_dir / "report.md") as tmp:
        tmp.write_text(format_report(report))
    return report


def format_report(report: dict) -> str:
    """Markdown table of the open-set results (the figures in docs/results come from here).

    Columns are padded so that it also reads as a table on a terminal; an undefined metric
    (new precision when no photo was called new) shows as a dash.
    """
    header = [
        "features",
        "MAP@5 (held-out, val threshold)",
        "top-1 known",
        "top-5 known",
        "new precision",
        "new recall",
        "threshold",
        "CPU training",
        "embedding",
    ]
    rows = [header]
    engine = report.get("embedding", {}).get("engine", "")
    for name, m in report["results"].items():
        seconds = m.get("train_seconds")
        speed = m.get("embed_photos_per_s")
        rows.append(
            [
                name,
                *(cell(m[k]) for k in ("map5", "top1_known", "top5_known", "new_precision", "new_recall", "threshold")),
                "\u2013" if seconds is None else f"{seconds / 60:.1f} min",
                "\u2013" if speed is None else f"{speed:.0f} photos/s {engine}",
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]

    def line(cells: list[str]) -> str:  # names left, numbers right
        padded = (c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(":" + "-" * (w + 1) if i == 0 else "-" * (w + 1) + ":" for i, w in enumerate(widths)) + "|"
    table = "\n".join([line(header), rule, *map(line, rows[1:])]) + "\n"
    eager, zero_shot = report.get("embedding", {}).get("torch_photos_per_s"), report["results"].get("zero-shot", {})
    if eager and zero_shot.get("embed_photos_per_s"):
        ratio = zero_shot["embed_photos_per_s"] / eager
        table += (
            f"\nembedding: {zero_shot['embed_photos_per_s']:.0f} photos/s on {engine}, "
            f"{eager:.0f} photos/s on torch eager ({ratio:.1f}x), zero-shot model\n"
        )
    return table
