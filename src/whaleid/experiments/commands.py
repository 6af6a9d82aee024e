"""The training and experiment commands (train, pseudo-label, run, demo), on the CLI's own footing.

They live here rather than in :mod:`whaleid.app.cli` because they need the experiments
(recipes, pseudo-labels), which the app layer may not import; ``whaleid.__main__`` joins
both groups under the one ``whaleid`` command.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from whaleid.app.command import (
    BackgroundOpt,
    BoxesOpt,
    CacheRootOpt,
    CropOpt,
    ImagesOpt,
    command,
    console,
    embedder_for,
    metrics_table,
    preparation,
    prepared,
    read_catalog,
)
from whaleid.files import output_path

ConfigOpt = typer.Option(None, "--config", help="A recipe YAML (configs/*.yaml); its train section sets the defaults.")
SetOpt = typer.Option(None, "--set", help="Override one setting, e.g. --set train.epochs=3 (repeatable).")
BoxProbsOpt = typer.Option(
    None, "--box-probs", help="Training mix of crops per photo, e.g. 'body=0.6,fin=0.15,full=0.25'."
)


@command()
def train(
    csv: Path,
    out: Path = typer.Option(..., help="Run folder: model.safetensors + model.json, last.pt, metrics.jsonl."),
    images: Optional[Path] = ImagesOpt,
    val: Optional[Path] = typer.Option(None, help="CSV of validation photos (leave-one-out MAP@5 each epoch)."),
    config: Optional[Path] = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
    folds: Optional[int] = typer.Option(None, min=2, help="One model per fold (fold<i>/), for an ensemble."),
    pseudo: Optional[Path] = typer.Option(None, help="Pseudo-label CSV from `whaleid pseudo-label` to add."),
    pseudo_images: Optional[Path] = typer.Option(None, help="Photo folder of --pseudo (default: images/ beside it)."),
    backbone: Optional[str] = typer.Option(None, help="timm model name."),
    pretrained: Optional[bool] = typer.Option(None, "--pretrained/--no-pretrained", help="Start from ImageNet."),
    weights: Optional[Path] = typer.Option(None, help="Start from a local backbone checkpoint instead."),
    epochs: Optional[int] = typer.Option(None, min=1),
    img_size: Optional[int] = typer.Option(None, min=32, help="Input size (at inference; in training too)."),
    batch_size: Optional[int] = typer.Option(None, min=2),
    embedding_dim: Optional[int] = typer.Option(None, min=0, help="0: no neck, the pooled features."),
    lr: Optional[float] = typer.Option(None, help="Learning rate of neck and heads."),
    backbone_lr: Optional[float] = typer.Option(None, help="Learning rate of the top backbone layer."),
    workers: Optional[int] = typer.Option(None, min=0, help="Photo-decoding processes (default: cores - 1, <= 4)."),
    seed: Optional[int] = typer.Option(None),
    max_steps: Optional[int] = typer.Option(None, min=1, help="Cap steps per epoch (smoke runs)."),
    resume: bool = typer.Option(False, help="Continue from out/last.pt."),
    crop: Optional[str] = CropOpt,
    boxes: Optional[list[Path]] = BoxesOpt,
    box_probs: Optional[str] = BoxProbsOpt,
    background: Optional[str] = BackgroundOpt,
    cache_root: Path = CacheRootOpt,
):
    """Fine-tune an embedding model with a sub-center ArcFace head.

    Flags override --set, which overrides --config, which overrides the defaults of
    whaleid.train.TrainConfig; every other training setting is one --set away, e.g.
    --set train.hflip=true, train.grad_accum=2, train.unfreeze_late_epoch=1, train.layer_decay=0.8.
    """
    from whaleid.experiments.pseudo import with_pseudo_label_file
    from whaleid.experiments.recipe import load_recipe, train_models
    from whaleid.preprocess.prepare import PreprocessConfig

    output_path(out, "--out", folder=True)
    recipe = load_recipe(config, set_ or [])
    model = dict(backbone=backbone, img_size=img_size, embedding_dim=embedding_dim)
    run = dict(epochs=epochs, batch_size=batch_size, lr=lr, backbone_lr=backbone_lr, seed=seed, num_workers=workers)
    weights_or_not = str(weights) if weights else pretrained
    recipe.train = recipe.train.with_options(**model, **run, pretrained=weights_or_not, max_steps_per_epoch=max_steps)
    recipe.folds = folds or recipe.folds
    if recipe.folds > 1 and val is not None:
        raise typer.BadParameter("--val does not go with --folds: each fold model validates on its held-out fold")
    recipe.preprocess = PreprocessConfig.from_options(
        crop, background, box_probs, recipe.train.model.img_size, recipe.preprocess
    )
    catalog = read_catalog(csv, images)
    if pseudo is not None:
        catalog = with_pseudo_label_file(catalog, read_catalog(pseudo, pseudo_images), pseudo)
    catalog = prepared(catalog, recipe.preprocess, boxes, cache_root, training=True)
    val_catalog = prepared(read_catalog(val, images), recipe.preprocess, boxes, cache_root) if val else None
    paths, seconds = train_models(catalog, recipe, out, val_catalog, resume=resume)
    if int(os.environ.get("RANK", 0)) == 0:  # under torchrun, one line for the whole run
        console.print(f"model{'s' if len(paths) > 1 else ''}: {', '.join(map(str, paths))} ({seconds / 60:.1f} min)")


@command("pseudo-label")
def pseudo_label(
    model: Path = typer.Argument(..., help="A model (model.json), or a run folder of fold*/ models."),
    train_csv: Path = typer.Argument(..., help="The labelled training catalog (the gallery)."),
    unlabelled: Path = typer.Argument(..., help="CSV of the photos to label (individual_id may be empty)."),
    out: Path = typer.Option(..., help="CSV of confident labels: image, species, individual_id, score."),
    images: Optional[Path] = ImagesOpt,
    unlabelled_images: Optional[Path] = typer.Option(
        None, help="Photo folder of the unlabelled CSV (default: images/ beside it)."
    ),
    confidence: float = typer.Option(
        0.7, min=0.0, max=1.0, help="Keep a photo when its top candidate scores at least this."
    ),
    threshold: Optional[float] = typer.Option(
        None, help="new_individual threshold: photos below it are left out as new."
    ),
    blend: float = typer.Option(0.0, min=0.0, max=1.0, help="Weight of the ArcFace-logit probabilities in the score."),
    tta: bool = typer.Option(False, help="Flip TTA."),
    cache_root: Path = CacheRootOpt,
):
    """Confident predictions on unlabelled photos, as labels for the next training round (`train --pseudo`)."""
    from whaleid.experiments.pseudo import pseudo_labels, save_pseudo_labels
    from whaleid.search.identify import Identifier, IdentifyConfig

    output_path(out, "--out", folder=False)
    embedder = embedder_for(model, None, 0, tta, 32)
    preprocess = preparation(model, 0, None, None)  # as the model recorded
    g = embedder.embed_catalog(prepared(read_catalog(train_csv, images), preprocess, None, cache_root))
    q = embedder.embed_catalog(
        prepared(read_catalog(unlabelled, unlabelled_images, require_labels=False), preprocess, None, cache_root)
    )
    identifier = Identifier.from_embeddings(g, IdentifyConfig(blend=blend))
    labels = pseudo_labels(q.table["image"].tolist(), identifier.rank(q), confidence, identifier.species_of, threshold)
    save_pseudo_labels(labels, out)
    console.print(f"{len(labels)} of {len(q)} photos labelled (confidence >= {confidence}) -> {out}")


@command()
def run(
    recipe_file: Path = typer.Argument(..., help="A recipe YAML (configs/*.yaml)."),
    out: Path = typer.Option(..., help="Run folder: split/, round<i>/ models, report.json, recipe.yaml."),
    set_: Optional[list[str]] = SetOpt,
):
    """A whole recipe: Happywhale-style split, (k-fold) training, scoring, pseudo-label rounds."""
    from whaleid.experiments.recipe import load_recipe, run_recipe

    output_path(out, "--out", folder=True)
    report = run_recipe(load_recipe(recipe_file, set_ or []), out)
    metrics = [k for k, v in report["rounds"][0].items() if not isinstance(v, dict)]
    rows = {k: {f"round {i}": r[k] for i, r in enumerate(report["rounds"])} for k in metrics}  # one column per round
    console.print(metrics_table("test set (held-out photos and individuals)", rows))
    console.print(f"report: {out / 'report.json'}")


@command()
def demo(
    data: Optional[Path] = typer.Option(
        None, help="A real catalog folder (train.csv + images/); default: synthetic fins."
    ),
    out: Path = typer.Option(Path("runs/demo"), help="Where everything goes."),
    config: Optional[Path] = typer.Option(
        None, "--config", help="Demo settings YAML (default: the packaged configs/demo.yaml)."
    ),
    set_: Optional[list[str]] = SetOpt,
    resume: bool = False,
):
    """Zero-shot vs fine-tuned MAP@5 on held-out individuals, end to end on CPU."""
    from whaleid.experiments.demo import demo_catalog, format_report, load_demo_config, run_open_set

    output_path(out, "--out", folder=True)
    settings = load_demo_config(config, set_ or [])
    report = run_open_set(read_catalog(demo_catalog(settings, out, data), None), settings, out, resume=resume)
    console.print(format_report(report), soft_wrap=True, highlight=False)
    for name, path in report["files"].items():
        console.print(f"{name}: {path}")
    console.print(f"report: {out / 'report.md'}")
