"""Command line: each command parses arguments, calls one library function and prints."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from pathlib import Path
from typing import Callable, Optional

import pandas as pd
import typer
from rich.console import Console
from rich.table import Table

from whaleid.errors import UserError
from whaleid.files import atomic_path, is_disk_full

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False)
console = Console()
errors = Console(stderr=True)
DEBUG_ENV = "WHALEID_DEBUG"


_debug = {"on": False}  # set per invocation by the --debug option


def _debug_from_env() -> bool:
    return os.environ.get(DEBUG_ENV, "").lower() not in ("", "0", "false", "no")


def _fail(message: str, code: int) -> typer.Exit:
    errors.print(f"[red]error:[/red] {message}", markup=True, highlight=False, soft_wrap=True)
    return typer.Exit(code)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _user_errors(command: Callable) -> Callable:
    """Every command ends in one clear line and a non-zero exit, never a traceback (unless --debug)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except (typer.Exit, typer.Abort, typer.exceptions.TyperException):  # Typer reports these itself
            raise
        except KeyboardInterrupt:
            raise _fail("interrupted; finished work is kept, re-run to continue", 130) from None
        except Exception as error:
            if _debug["on"]:
                raise
            if isinstance(error, UserError):
                raise _fail(_one_line(error), 2) from None
            if is_disk_full(error):  # a write outside atomic_path; the errno may sit deep in the chain
                raise _fail(f"disk full ({_one_line(error)}): free some space and re-run", 2) from None
            if isinstance(error, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
                raise _fail(_one_line(error), 2) from None
            raise _fail(
                f"unexpected {type(error).__name__}: {_one_line(error)} "
                f"(re-run with --debug or {DEBUG_ENV}=1 for the traceback, and please report it)", 1
            ) from None

    return wrapper


def command(*args, **kwargs) -> Callable[[Callable], Callable]:
    """``app.command`` with :func:`_user_errors` around the function."""
    return lambda function: app.command(*args, **kwargs)(_user_errors(function))


@app.callback()
def _options(debug: bool = typer.Option(False, "--debug", help=f"Show tracebacks (or set {DEBUG_ENV}=1).")) -> None:
    """Photo-identification of individual whales and dolphins."""
    _debug["on"] = debug or _debug_from_env()

ImagesOpt = typer.Option(None, "--images", help="Photo folder (default: images/ beside the CSV).")


def _catalog(csv: Path, images: Optional[Path], require_labels: bool = True, check: bool = True):
    from whaleid.data.catalog import read_catalog

    catalog = read_catalog(csv, images, require_labels=require_labels, check_images=check, progress=True)
    if len(catalog.problems):
        console.print(f"[yellow]skipped {len(catalog.problems)} unreadable photo(s):[/yellow]")
        for row in catalog.problems.head(10).itertuples():
            console.print(f"  {row.image}: {row.reason}")
    return catalog


def _save_csv(table: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)


def _save_json(value: dict, path: Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(value, indent=2))


def _metrics_table(title: str, rows: dict[str, dict]) -> Table:
    from whaleid.search.metrics import cell

    table = Table(title=title)
    columns = list(next(iter(rows.values())).keys())
    table.add_column("")
    for c in columns:
        table.add_column(c, justify="right")
    for name, values in rows.items():
        table.add_row(name, *[cell(v, 4) if v is None or isinstance(v, float) else str(v) for v in values.values()])
    return table


CropOpt = typer.Option(None, "--crop", help="Crop photos first: none, saliency (the animal's salient region) or boxes (--boxes). Default: as the model was trained, else none.")
BoxesOpt = typer.Option(None, "--boxes", help="Box file(s): pixel-box CSV (image, box 'x0 y0 x1 y1' or x0..y1, optional source) or YOLO (folder of .txt or CSV with cx,cy,w,h).")
BoxProbsOpt = typer.Option(None, "--box-probs", help="Training mix of crops per photo, e.g. 'body=0.6,fin=0.15,full=0.25'.")
BackgroundOpt = typer.Option(None, "--background", help="Remove the background (black, blur or mean) using the saliency mask.")
CacheRootOpt = typer.Option(Path(".cache/whaleid"), "--cache-root", help="Where cropped/resized photos are cached.")


def _parse_probs(text: Optional[str]) -> Optional[dict[str, float]]:
    if not text:
        return None
    try:
        return {k.strip(): float(v) for k, v in (part.split("=") for part in text.split(","))}
    except ValueError as error:
        raise typer.BadParameter(f"--box-probs must look like 'body=0.6,fin=0.15,full=0.25', got {text!r}") from error


def _preprocess(crop: Optional[str], background: Optional[str], box_probs: Optional[str], img_size: int, recorded: Optional[dict]) -> Optional[dict]:
    """What to do to photos before the model: the options given, else what the model recorded, else nothing."""
    from whaleid.preprocess.cache import CacheSettings

    if crop is None and background is None:
        return recorded
    if (crop or "none") == "none" and background is None:
        return None
    settings = CacheSettings(sizes=(img_size,), crop=crop or "none", background=background)
    return {"cache": settings.to_dict(), "probabilities": _parse_probs(box_probs)}


def _box_table(catalog, boxes: Optional[list[Path]]) -> pd.DataFrame:
    """The user's box files as one table for this catalog's photos (needed by `--crop boxes`)."""
    from whaleid.preprocess.boxes import read_boxes

    if not boxes:
        raise typer.BadParameter("--crop boxes needs --boxes FILE")
    photos = dict(zip(catalog.table["image"], catalog.paths))
    return pd.concat([read_boxes(b, photos) for b in boxes], ignore_index=True)


def _prepared(catalog, preprocess: Optional[dict], boxes: Optional[list[Path]], cache_root: Path, training: bool = False):
    """The catalog with paths into the crop cache (built or reused) when preprocessing is asked for."""
    if preprocess is None:
        return catalog
    from whaleid.preprocess.cache import CacheSettings, cached_catalog

    settings = CacheSettings.from_dict(preprocess["cache"])
    table = _box_table(catalog, boxes) if settings.crop == "boxes" else None
    probabilities = preprocess.get("probabilities")
    source = max(probabilities, key=probabilities.get) if probabilities else None
    prepared = cached_catalog(
        catalog, settings, cache_root, table, source=source, probabilities=probabilities if training else None
    )
    console.print(f"photos from the crop cache ({settings.crop}, background {settings.background}): {len(prepared)} ready")
    return prepared


@command()
def summary(csv: Path, images: Optional[Path] = ImagesOpt, check: bool = typer.Option(True, help="Decode every photo.")):
    """Photos, individuals, species and photos-per-individual of a catalog."""
    from whaleid.data.catalog import format_summary
    from whaleid.data.catalog import summary as summarise

    console.print(format_summary(summarise(_catalog(csv, images, check=check))))


@command()
def split(
    csv: Path,
    out: Path = typer.Option(..., help="Folder for the split CSVs."),
    images: Optional[Path] = ImagesOpt,
    new_fraction: float = typer.Option(0.3, help="Share of individuals held out entirely (open set)."),
    folds: int = typer.Option(0, min=0, help="Also write folds.csv with a stratified k-fold column (0: no; else 2 or more)."),
    min_photos: int = typer.Option(1, min=1, help="Keep only individuals with at least this many photos."),
    seed: int = 0,
):
    """Open-set split (known.csv / new.csv) and optional k-fold assignment."""
    from whaleid.data.catalog import kfold, open_set_split
    from whaleid.data.catalog import min_photos as keep_min

    if folds == 1:
        raise typer.BadParameter("--folds must be 0 (no folds) or at least 2", param_hint="--folds")
    catalog = keep_min(_catalog(csv, images), min_photos)
    known, new = open_set_split(catalog, new_fraction, seed=seed)
    known.to_csv(out / "known.csv")
    new.to_csv(out / "new.csv")
    console.print(f"known: {len(known)} photos / {known.n_individuals} individuals -> {out / 'known.csv'}")
    console.print(f"new:   {len(new)} photos / {new.n_individuals} individuals -> {out / 'new.csv'}")
    if folds:
        table = catalog.table[["image", "species", "individual_id"]].assign(fold=kfold(catalog, folds, seed))
        _save_csv(table, out / "folds.csv")
        console.print(f"{folds} folds -> {out / 'folds.csv'}")


ConfigOpt = typer.Option(None, "--config", help="A recipe YAML (configs/*.yaml); its train section sets the defaults.")
SetOpt = typer.Option(None, "--set", help="Override one recipe key, e.g. --set train.epochs=3 (repeatable).")


@command()
def train(
    csv: Path,
    out: Path = typer.Option(..., help="Run folder: model.pt, last.pt, metrics.jsonl (fold<i>/ with --folds)."),
    images: Optional[Path] = ImagesOpt,
    val: Optional[Path] = typer.Option(None, help="CSV of validation photos (leave-one-out MAP@5 each epoch)."),
    config: Optional[Path] = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
    folds: Optional[int] = typer.Option(None, min=2, help="Train one model per fold (each validated on its fold), for an ensemble."),
    pseudo: Optional[Path] = typer.Option(None, help="Pseudo-label CSV from `whaleid pseudo-label` to train on as well."),
    pseudo_images: Optional[Path] = typer.Option(None, help="Photo folder of --pseudo (default: images/ beside it)."),
    backbone: Optional[str] = typer.Option(None, help="timm model name [tf_efficientnet_lite0]."),
    pretrained: Optional[bool] = typer.Option(None, "--pretrained/--no-pretrained", help="Start from ImageNet weights [yes; offline for tf_efficientnet_lite0/1/2]."),
    weights: Optional[Path] = typer.Option(None, help="Start from a local backbone checkpoint instead."),
    epochs: Optional[int] = typer.Option(None, min=1, help="[10]"),
    img_size: Optional[int] = typer.Option(None, min=32, help="Input size at inference (and training, without a schedule) [224]."),
    batch_size: Optional[int] = typer.Option(None, min=2, help="[32]"),
    embedding_dim: Optional[int] = typer.Option(None, min=0, help="[512] (0: no neck, the pooled features)."),
    subcenters: Optional[int] = typer.Option(None, min=1, help="ArcFace sub-centers per individual [3]."),
    lr: Optional[float] = typer.Option(None, help="Learning rate of neck and heads [1e-3]."),
    backbone_lr: Optional[float] = typer.Option(None, help="Learning rate of the top backbone layer [2e-4]."),
    layer_decay: Optional[float] = typer.Option(None, help="Learning-rate factor per backbone layer downwards [1.0]."),
    unfreeze_late_epoch: Optional[int] = typer.Option(None, min=0, help="Epoch from which the later half of the backbone learns [0]."),
    unfreeze_all_epoch: Optional[int] = typer.Option(None, min=0, help="Epoch from which the whole backbone learns [0]."),
    grad_accum: Optional[int] = typer.Option(None, min=1, help="[1]"),
    grad_checkpointing: Optional[bool] = typer.Option(None, "--grad-checkpointing/--no-grad-checkpointing", help="Trade compute for memory [no]."),
    hflip: Optional[bool] = typer.Option(None, "--hflip/--no-hflip", help="Horizontal flip augmentation [no: markings are asymmetric]."),
    species_head: Optional[bool] = typer.Option(None, "--species-head/--no-species-head", help="[no]"),
    label_smoothing: Optional[float] = typer.Option(None, min=0.0, max=0.99, help="[0]"),
    mixed_precision: Optional[str] = typer.Option(None, help="auto, no, bf16 or fp16 [auto]."),
    workers: Optional[int] = typer.Option(None, min=0, help="Photo-decoding processes [cores - 1, at most 4]."),
    seed: Optional[int] = typer.Option(None, help="[0]"),
    max_steps: Optional[int] = typer.Option(None, min=1, help="Cap steps per epoch (smoke runs)."),
    resume: bool = typer.Option(False, help="Continue from out/last.pt."),
    crop: Optional[str] = CropOpt,
    boxes: Optional[list[Path]] = BoxesOpt,
    box_probs: Optional[str] = BoxProbsOpt,
    background: Optional[str] = BackgroundOpt,
    cache_root: Path = CacheRootOpt,
):
    """Fine-tune an embedding model with a sub-center ArcFace head (flags override --config)."""
    from whaleid.experiments.pseudo import with_pseudo_labels
    from whaleid.train import train as run_training
    from whaleid.train import train_folds

    recipe = _recipe(config, set_)
    flags = dict(
        backbone=backbone, pretrained=pretrained, epochs=epochs, img_size=img_size, batch_size=batch_size,
        embedding_dim=embedding_dim, subcenters=subcenters, lr=lr, backbone_lr=backbone_lr, layer_decay=layer_decay,
        unfreeze_late_epoch=unfreeze_late_epoch, unfreeze_all_epoch=unfreeze_all_epoch, grad_accum=grad_accum,
        grad_checkpointing=grad_checkpointing, hflip=hflip, species_head=species_head, label_smoothing=label_smoothing,
        mixed_precision=mixed_precision, num_workers=workers, seed=seed, max_steps_per_epoch=max_steps,
        pretrained_weights=weights,
    )
    recipe.train = dataclasses.replace(recipe.train, **_train_flags(flags))
    if folds is not None:
        recipe.folds = folds
    if recipe.folds > 1 and val is not None:
        raise typer.BadParameter("--val does not go with --folds: each fold model validates on its held-out fold")
    preprocess = _preprocess(crop, background, box_probs, recipe.train.img_size, recipe.preprocess)
    recipe.preprocess = preprocess
    catalog = _catalog(csv, images)
    if pseudo is not None:
        labels = pd.read_csv(pseudo, dtype=str, keep_default_na=False)
        catalog = with_pseudo_labels(catalog, _catalog(pseudo, pseudo_images), labels)
    catalog = _prepared(catalog, preprocess, boxes, cache_root, training=True)
    extra = {"recipe": recipe.to_dict()}
    start = time.time()
    if recipe.folds > 1:
        results = train_folds(catalog, recipe.train, out, recipe.folds, resume=resume, preprocess=preprocess, extra=extra)
        console.print(f"{len(results)} fold models in {out}/fold*/model.pt ({(time.time() - start) / 60:.1f} min)")
        return
    val_catalog = _prepared(_catalog(val, images), preprocess, boxes, cache_root) if val else None
    result = run_training(catalog, recipe.train, out, val_catalog=val_catalog, resume=resume, preprocess=preprocess, extra=extra)
    if int(os.environ.get("RANK", 0)) == 0:  # under torchrun, one line for the whole run
        console.print(f"model: {result.checkpoint} ({result.seconds / 60:.1f} min)")


def _recipe(config: Optional[Path], overrides: Optional[list[str]]):
    from whaleid.experiments.recipe import load_recipe

    try:
        return load_recipe(config, overrides or [])
    except (ValueError, TypeError) as error:
        raise typer.BadParameter(str(error)) from error


def _train_flags(flags: dict) -> dict:
    """The training flags given on the command line (the rest come from the recipe)."""
    weights = flags.pop("pretrained_weights")
    if weights is not None:
        flags["pretrained"] = str(weights)
    return {k: v for k, v in flags.items() if v is not None}


def _embedder(model: Optional[Path], zero_shot: Optional[str], img_size: int, tta: bool, batch_size: int, ensemble: str = "concat"):
    from whaleid.model.embed import Embedder
    from whaleid.train import checkpoints

    if (model is None) == (zero_shot is None):
        raise typer.BadParameter("give exactly one of --model or --zero-shot")
    if model is not None:
        return Embedder.from_checkpoint(checkpoints(model), ensemble=ensemble, tta_flip=tta, batch_size=batch_size)
    return Embedder.zero_shot(zero_shot, img_size, tta_flip=tta, batch_size=batch_size)


@command()
def embed(
    csv: Path,
    out: Path = typer.Option(..., help="Folder for vectors.npy, photos.csv, failures.csv, embeddings.json."),
    images: Optional[Path] = ImagesOpt,
    model: Optional[Path] = typer.Option(None, help="A whaleid model.pt, or a run folder of fold*/model.pt (an ensemble)."),
    zero_shot: Optional[str] = typer.Option(None, help="Or a pretrained timm backbone, no fine-tuning."),
    img_size: int = typer.Option(224, min=32, help="Input size for --zero-shot (a model.pt knows its own)."),
    tta: bool = typer.Option(False, help="Average with the horizontally flipped photo."),
    ensemble: str = typer.Option("concat", help="How fold models combine: concat or mean of their unit vectors."),
    batch_size: int = typer.Option(32, min=1),
    crop: Optional[str] = CropOpt,
    boxes: Optional[list[Path]] = BoxesOpt,
    background: Optional[str] = BackgroundOpt,
    cache_root: Path = CacheRootOpt,
):
    """Embed every photo of a catalog (labels optional)."""
    embedder = _embedder(model, zero_shot, img_size, tta, batch_size, ensemble)
    embedder.preprocess = _preprocess(crop, background, None, embedder.config.img_size, embedder.preprocess)
    catalog = _prepared(_catalog(csv, images, require_labels=False), embedder.preprocess, boxes, cache_root)
    embeddings = embedder.embed_catalog(catalog)
    embeddings.save(out)
    console.print(f"{len(embeddings)} vectors of {embeddings.vectors.shape[1]} dims -> {out}")


@command()
def identify(
    gallery: Path = typer.Argument(..., help="Embeddings folder of the labelled catalog (from `whaleid embed`)."),
    queries: Path = typer.Argument(..., help="Embeddings folder of the photos to identify, or a CSV of them (embedded with the gallery's model)."),
    images: Optional[Path] = typer.Option(None, "--images", help="Photo folder of a query CSV (default: images/ beside it)."),
    out: Path = typer.Option(Path("predictions.csv"), help="CSV: image, predictions, candidates, scores."),
    threshold: Optional[float] = typer.Option(None, help="new_individual below this cosine score."),
    calibrate: Optional[Path] = typer.Option(None, help="Embeddings of labelled validation photos: choose the threshold by best leave-one-out MAP@5."),
    new_rate: Optional[float] = typer.Option(None, min=0.0, max=1.0, help="Or choose the threshold so this share of queries is new."),
    per_species: bool = typer.Option(False, help="With --calibrate: one threshold per species (species with 20+ validation photos)."),
    blend: float = typer.Option(0.0, min=0.0, max=1.0, help="Weight of the ArcFace-logit probabilities blended with kNN scores (0: kNN only; needs models saved with their head). --calibrate then ranks the validation photos against the gallery."),
    index: str = typer.Option("exact", help="exact or faiss."),
    tta: bool = typer.Option(False, help="Flip TTA when embedding a query CSV."),
    save: Optional[Path] = typer.Option(None, help="Also save the Identifier (index + ids + threshold) here."),
    submission: Optional[Path] = typer.Option(None, help="Also write a Kaggle submission CSV here."),
    boxes: Optional[list[Path]] = typer.Option(None, "--boxes", help="Box file(s) for a query CSV when the gallery was embedded with --crop boxes."),
    cache_root: Path = CacheRootOpt,
):
    """Top-5 individuals (or new_individual) for each query photo."""
    from whaleid.model.embed import Embedder, Embeddings
    from whaleid.search.identify import (
        Identifier,
        apply_threshold,
        calibrate_per_species,
        calibrate_threshold,
    )
    from whaleid.search.index import build_index
    from whaleid.search.openset import leave_one_out
    from whaleid.experiments.recipe import rankings as blended_rankings
    from whaleid.experiments.recipe import truths

    if per_species and calibrate is None:
        raise typer.BadParameter("--per-species needs --calibrate VAL_EMBEDDINGS")
    g = Embeddings.load(gallery)
    g.require_labels("the gallery")
    if queries.is_dir():
        q = Embeddings.load(queries)
        g.require_compatible(q, "the queries")
    else:  # embedded with the gallery's model
        embedder = Embedder.from_source(g.meta.get("source", {}), (g.meta.get("model") or {}).get("img_size", 224), tta_flip=tta)
        embedder.preprocess = g.meta.get("preprocess")  # queries are cropped exactly as the gallery was
        q = embedder.embed_catalog(_prepared(_catalog(queries, images, require_labels=False), embedder.preprocess, boxes, cache_root))
    species = g.table["species"].tolist() if "species" in g.table else None
    identifier = Identifier(build_index(g.vectors, index), g.table["individual_id"].tolist(),
                            metadata={**g.meta, "blend": blend}, gallery_species=species)
    rankings = blended_rankings(g, q, blend) if blend > 0 else identifier.rank(q.vectors)
    if calibrate is not None:
        v = Embeddings.load(calibrate)
        v.require_labels("the calibration embeddings")
        g.require_compatible(v, "the calibration embeddings")
        if blend > 0:
            calibration, val_truths = blended_rankings(g, v, blend), truths(v, g)
        else:
            calibration, val_truths = leave_one_out(v.vectors, v.table["individual_id"].tolist())
        if per_species:
            threshold = calibrate_per_species(calibration, val_truths, v.table["species"].tolist())
        else:
            threshold = calibrate_threshold(calibration, val_truths, method="sweep")
    elif new_rate is not None:
        threshold = calibrate_threshold(rankings, None, method="rate", new_rate=new_rate)
    identifier.threshold = threshold
    answers = apply_threshold(rankings, threshold, species_of=dict(zip(g.table["individual_id"], species or [])) or None)
    table = pd.DataFrame(
        {
            "image": q.table["image"],
            "predictions": [" ".join(a.ids) for a in answers],
            "candidates": [" ".join(r.ids) for r in rankings],
            "scores": [" ".join(f"{s:.4f}" for s in r.scores) for r in rankings],
        }
    )
    _save_csv(table, out)
    if save:
        identifier.save(save)
    if submission:
        from whaleid.search.metrics import write_submission

        write_submission(table["image"].tolist(), [a.ids for a in answers], submission)
    shown = {k: round(v, 4) for k, v in threshold.items()} if isinstance(threshold, dict) else threshold if threshold is None else round(threshold, 4)
    console.print(f"{len(table)} queries -> {out} (threshold: {shown})")


@command("pseudo-label")
def pseudo_label(
    model: Path = typer.Argument(..., help="A model.pt, or a run folder of fold*/model.pt."),
    train_csv: Path = typer.Argument(..., help="The labelled training catalog (the gallery)."),
    unlabelled: Path = typer.Argument(..., help="CSV of the photos to label (individual_id may be empty)."),
    out: Path = typer.Option(..., help="CSV of confident labels: image, species, individual_id, score."),
    images: Optional[Path] = ImagesOpt,
    unlabelled_images: Optional[Path] = typer.Option(None, help="Photo folder of the unlabelled CSV (default: images/ beside it)."),
    confidence: float = typer.Option(0.7, min=0.0, max=1.0, help="Keep a photo when its top candidate scores at least this."),
    threshold: Optional[float] = typer.Option(None, help="new_individual threshold: photos below it are left out as new."),
    blend: float = typer.Option(0.0, min=0.0, max=1.0, help="Weight of the ArcFace-logit probabilities in the score."),
    tta: bool = typer.Option(False, help="Flip TTA."),
    cache_root: Path = CacheRootOpt,
):
    """Confident predictions on unlabelled photos, as labels for the next training round (`train --pseudo`)."""
    from whaleid.experiments.pseudo import pseudo_labels
    from whaleid.experiments.recipe import rankings

    embedder = _embedder(model, None, 0, tta, 32)
    g = embedder.embed_catalog(_prepared(_catalog(train_csv, images), embedder.preprocess, None, cache_root))
    q = embedder.embed_catalog(_prepared(_catalog(unlabelled, unlabelled_images, require_labels=False), embedder.preprocess, None, cache_root))
    species_of = dict(zip(g.table["individual_id"], g.table["species"]))
    labels = pseudo_labels(q.table["image"].tolist(), rankings(g, q, blend), confidence, species_of, threshold)
    _save_csv(labels, out)
    console.print(f"{len(labels)} of {len(q)} photos labelled (confidence >= {confidence}) -> {out}")


@command()
def run(
    recipe_file: Path = typer.Argument(..., help="A recipe YAML (configs/*.yaml)."),
    out: Path = typer.Option(..., help="Run folder: split/, round<i>/ models, report.json, recipe.yaml."),
    set_: Optional[list[str]] = SetOpt,
):
    """A whole recipe: Happywhale-style split, (k-fold) training, scoring, pseudo-label rounds."""
    from whaleid.experiments.recipe import run_recipe

    report = run_recipe(_recipe(recipe_file, set_), out)
    metrics = [k for k, v in report["rounds"][0].items() if not isinstance(v, dict)]
    rows = {k: {f"round {i}": r[k] for i, r in enumerate(report["rounds"])} for k in metrics}  # one column per round
    console.print(_metrics_table("test set (held-out photos and individuals)", rows))
    console.print(f"report: {out / 'report.json'}")


@command()
def evaluate(
    predictions: Path = typer.Argument(..., help="CSV from `whaleid identify`."),
    truth: Path = typer.Option(..., help="CSV with image, species, individual_id of the queries."),
    gallery: Optional[Path] = typer.Option(None, help="Gallery embeddings: queries of individuals absent there count as new_individual."),
    out: Optional[Path] = typer.Option(None, help="Folder for report.json, per_species.csv, threshold_sweep.csv/.png."),
):
    """MAP@5, top-1, top-5, per-species table and a threshold sweep."""
    from whaleid.data.catalog import NEW_INDIVIDUAL, read_catalog, read_table
    from whaleid.model.embed import Embeddings
    from whaleid.search.metrics import evaluate as score
    from whaleid.search.metrics import plot_threshold_sweep, threshold_sweep, truths_for
    from whaleid.search.identify import Ranking

    preds = read_table(predictions, ["image", "predictions"]).fillna("")
    truths, species = truths_for(preds["image"].tolist(), read_catalog(truth, check_images=False).table, str(truth))
    if gallery is not None:
        known = set(Embeddings.load(gallery).table["individual_id"])
        truths = [t if t in known else NEW_INDIVIDUAL for t in truths]
    report = score([p.split() for p in preds["predictions"]], truths, species)
    console.print(_metrics_table("evaluation", {"all": {k: v for k, v in report.to_dict().items() if k != "per_species"}}))
    if report.per_species is not None:
        console.print(report.per_species.to_string(index=False))
    if out is not None:
        _save_json(report.to_dict(), out / "report.json")
        if report.per_species is not None:
            _save_csv(report.per_species, out / "per_species.csv")
        if "scores" in preds:
            rankings = [Ranking(c.split(), [float(s) for s in sc.split()]) for c, sc in zip(preds["candidates"], preds["scores"])]
            sweep = threshold_sweep(rankings, truths)
            _save_csv(sweep, out / "threshold_sweep.csv")
            plot_threshold_sweep(sweep, out / "threshold_sweep.png")
        console.print(f"written to {out}")


@command()
def openset(
    test: Path = typer.Argument(..., help="Embeddings of held-out individuals: each photo queries all the others."),
    val: Path = typer.Option(..., help="Embeddings of validation individuals, to choose the threshold."),
    out: Optional[Path] = typer.Option(None, help="Write the metrics here as JSON."),
):
    """The demo's open-set score for any embeddings: threshold from val, metrics on test."""
    from whaleid.model.embed import Embeddings
    from whaleid.search.openset import calibrated_open_set

    v, t = Embeddings.load(val), Embeddings.load(test)
    v.require_labels("the validation embeddings")
    t.require_labels("the test embeddings")
    v.require_compatible(t, "the test embeddings", own="the validation embeddings")
    metrics, _, _ = calibrated_open_set(v, t)
    console.print(_metrics_table("open set (leave-one-out)", {str(test): metrics}))
    if out is not None:
        _save_json(metrics, out)


@command()
def crop(
    csv: Path,
    out: Path = typer.Option(..., help="Folder for crops.csv, failures.csv and masks/."),
    images: Optional[Path] = ImagesOpt,
    threshold: float = typer.Option(0.5, min=0.0, max=1.0, help="Saliency above this is the animal."),
    enlarge: float = typer.Option(1.2, help="Grow the box by this factor about its centre."),
    square: bool = typer.Option(False, help="Make boxes square before clipping."),
    region: str = typer.Option("union", help="union (of all regions above --min-area) or largest (connected region)."),
    min_area: float = typer.Option(0.002, min=0.0, max=1.0, help="Regions smaller than this share of the photo are ignored."),
    clahe: bool = typer.Option(False, help="Equalise contrast first (dark or hazy photos)."),
    batch_size: int = typer.Option(8, min=1),
    workers: int = typer.Option(2, min=1),
):
    """Find the animal in every photo: a crop table with box, mask area, score and status."""
    from whaleid.preprocess.crops import CropSettings, crop_catalog, write_crop_table

    settings = CropSettings(threshold, enlarge, square, min_area, region, clahe)
    catalog = _catalog(csv, images, require_labels=False, check=False)
    table = crop_catalog(catalog, settings, masks_dir=out, batch_size=batch_size, workers=workers)
    crops_csv, failures_csv = write_crop_table(table, out)
    _save_json(settings.to_dict(), out / "crop_settings.json")  # for `whaleid cache --crop-settings`
    console.print(table["status"].value_counts().to_string())
    console.print(f"crop table -> {crops_csv}; {len(table) - int((table['status'] == 'ok').sum())} to review -> {failures_csv}")


@command()
def cache(
    csv: Path,
    images: Optional[Path] = ImagesOpt,
    root: Path = CacheRootOpt,
    sizes: str = typer.Option("256", help="Comma-separated longest sides to write, e.g. 128,256,384."),
    crop_mode: str = typer.Option("saliency", "--crop", help="none, saliency or boxes (--boxes)."),
    boxes: Optional[list[Path]] = BoxesOpt,
    background: Optional[str] = BackgroundOpt,
    feather: float = typer.Option(0.02, min=0.0, max=1.0, help="Soft edge of the background mask (share of the diagonal)."),
    grayscale: bool = False,
    crop_settings: Optional[Path] = typer.Option(None, help="crop_settings.json written by `whaleid crop` (default: its defaults)."),
    batch_size: int = typer.Option(8, min=1),
    workers: int = typer.Option(2, min=1),
):
    """Write cropped, resized photos once; re-running skips finished photos."""
    from whaleid.preprocess.cache import CacheSettings, build_cache
    from whaleid.preprocess.crops import CropSettings

    saliency = CropSettings.from_json(crop_settings) if crop_settings else CropSettings()
    try:
        settings = CacheSettings(
            sizes=tuple(int(s) for s in sizes.split(",")), crop=crop_mode, background=background, feather=feather,
            grayscale=grayscale, saliency=saliency,
        )
    except ValueError as error:
        raise typer.BadParameter(f"{error} (--sizes takes whole numbers like 128,256)") from error
    catalog = _catalog(csv, images, require_labels=False, check=False)
    table = _box_table(catalog, boxes) if crop_mode == "boxes" else None
    built = build_cache(catalog, root, settings, boxes=table, batch_size=batch_size, workers=workers)
    console.print(f"cache {built.dir}: {built.stats}")


@command()
def explore(
    csv: Path,
    out: Path = typer.Option(Path("runs/explore"), help="Folder for the HTML pages and thumbnails."),
    images: Optional[Path] = ImagesOpt,
    crops: Optional[Path] = typer.Option(None, help="A crops.csv (from `whaleid crop` or a cache folder) to draw boxes and masks."),
    per_individual: int = typer.Option(12, min=1),
    max_individuals: int = typer.Option(200, min=1),
    sheet: Optional[Path] = typer.Option(None, help="Also write one PNG of every photo with its box (needs --crops)."),
    sheet_columns: int = typer.Option(10, min=1),
    sheet_size: int = typer.Option(120, min=16, help="Tile size of --sheet in pixels."),
):
    """A static HTML report of a catalog: counts, contact sheets, crop failures, worst crops."""
    from whaleid.preprocess.crops import read_crop_table
    from whaleid.app.explore import build_explorer, contact_sheet

    if sheet and not crops:
        raise typer.BadParameter("--sheet needs --crops")
    catalog = _catalog(csv, images, require_labels=False)
    table = read_crop_table(crops) if crops else None
    index = build_explorer(catalog, out, table, crops.parent if crops else None,
                           per_individual=per_individual, max_individuals=max_individuals)
    console.print(f"explorer -> {index}")
    if sheet:
        contact_sheet(catalog, table, sheet, crops.parent, sheet_columns, sheet_size)
        console.print(f"contact sheet -> {sheet}")


@command()
def synth(
    out: Path = typer.Option(Path("runs/synth"), help="Folder for images/ and train.csv."),
    individuals: int = typer.Option(40, min=1),
    min_photos: int = typer.Option(2, min=1),
    max_photos: int = typer.Option(8, min=1),
    size: int = typer.Option(256, min=32),
    seed: int = 0,
):
    """Synthetic catalog of dorsal-fin photos, identity carried by trailing-edge nicks."""
    from whaleid.data.synth import make_catalog

    csv = make_catalog(out, individuals, (min_photos, max_photos), size, seed, progress=True)
    console.print(f"synthetic catalog -> {csv}")


@command()
def demo(
    data: Optional[Path] = typer.Option(None, help="A real catalog folder (train.csv + images/); default: synthetic fins."),
    out: Path = typer.Option(Path("runs/demo"), help="Where everything goes."),
    epochs: int = typer.Option(20, min=1),
    img_size: int = typer.Option(128, min=32),
    batch_size: int = typer.Option(32, min=2),
    backbone: str = "tf_efficientnet_lite0",
    backbone_lr: float = 5e-4,
    lr: float = 2e-3,
    subcenters: int = typer.Option(3, min=1, help="ArcFace sub-centers per individual."),
    individuals: int = typer.Option(120, min=4, help="Synthetic individuals (without --data)."),
    variation: float = typer.Option(0.5, min=0.0, max=1.0, help="How much synthetic photos of one fin vary (0-1; without --data)."),
    new_fraction: float = 0.3,
    seed: int = 0,
    max_steps: Optional[int] = typer.Option(None, min=1, help="Cap steps per epoch (smoke runs)."),
    resume: bool = False,
):
    """Zero-shot vs fine-tuned MAP@5 on held-out individuals, end to end on CPU."""
    from whaleid.experiments.demo import format_report, run_open_set
    from whaleid.data.synth import make_catalog

    if data is None:
        csv = out / "catalog" / "train.csv"
        if not csv.exists():
            console.print("building a synthetic catalog of dorsal fins...")
            csv = make_catalog(out / "catalog", individuals, (4, 10), 256, seed, progress=True, variation=variation)
    else:
        csv = data / "train.csv"
    catalog = _catalog(csv, None)
    from whaleid.train import TrainConfig

    config = TrainConfig(**_train_flags(dict(
        backbone=backbone, pretrained_weights=None, epochs=epochs, img_size=img_size, batch_size=batch_size,
        lr=lr, backbone_lr=backbone_lr, subcenters=subcenters, seed=seed, max_steps_per_epoch=max_steps,
    )))
    report = run_open_set(catalog, config, out, new_fraction=new_fraction, seed=seed, resume=resume)
    console.print(format_report(report), soft_wrap=True, highlight=False)
    for name, path in report["files"].items():
        console.print(f"{name}: {path}")
    console.print(f"report: {out / 'report.md'}")


if __name__ == "__main__":
    app()
