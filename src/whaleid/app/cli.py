"""Command line for the catalog and the search: each command parses, calls the library and prints.

The training and experiment commands (train, pseudo-label, run, demo) live in
:mod:`whaleid.experiments.commands`; ``whaleid.__main__`` puts both groups under one ``whaleid``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from whaleid.app.command import (
    BackgroundOpt,
    BoxesOpt,
    CacheRootOpt,
    CropOpt,
    EngineOpt,
    ImagesOpt,
    LocalWeightOpt,
    ShortlistOpt,
    command,
    console,
    embedder_for,
    metrics_table,
    preparation,
    prepared,
    read_catalog,
    rounded,
    save_json,
)
from whaleid.files import output_path
from whaleid.model import DEFAULT_IMG_SIZE


@command()
def summary(
    csv: Path, images: Optional[Path] = ImagesOpt, check: bool = typer.Option(True, help="Decode every photo.")
):
    """Photos, individuals, species and photos-per-individual of a catalog."""
    from whaleid.data.summary import format_summary
    from whaleid.data.summary import summary as summarise

    console.print(format_summary(summarise(read_catalog(csv, images, check=check))))


@command()
def split(
    csv: Path,
    out: Path = typer.Option(..., help="Folder for the split CSVs."),
    images: Optional[Path] = ImagesOpt,
    new_fraction: float = typer.Option(0.3, help="Share of individuals held out entirely (open set)."),
    folds: int = typer.Option(
        0, min=0, help="Also write folds.csv with a stratified k-fold column (0: no; else 2 or more)."
    ),
    min_photos: int = typer.Option(1, min=1, help="Keep only individuals with at least this many photos."),
    seed: int = 0,
):
    """Open-set split (known.csv / new.csv) and optional k-fold assignment."""
    from whaleid.data.splits import min_photos as keep_min
    from whaleid.data.splits import open_set_split, write_folds

    if folds == 1:
        raise typer.BadParameter("--folds must be 0 (no folds) or at least 2", param_hint="--folds")
    output_path(out, "--out", folder=True)
    catalog = keep_min(read_catalog(csv, images), min_photos)
    known, new = open_set_split(catalog, new_fraction, seed=seed)
    known.to_csv(out / "known.csv")
    new.to_csv(out / "new.csv")
    console.print(f"known: {len(known)} photos / {known.n_individuals} individuals -> {out / 'known.csv'}")
    console.print(f"new:   {len(new)} photos / {new.n_individuals} individuals -> {out / 'new.csv'}")
    if folds:
        write_folds(catalog, folds, seed, out / "folds.csv")
        console.print(f"{folds} folds -> {out / 'folds.csv'}")


@command()
def embed(
    csv: Path,
    out: Path = typer.Option(..., help="Folder for vectors.npy, photos.csv, failures.csv, embeddings.json."),
    images: Optional[Path] = ImagesOpt,
    model: Optional[Path] = typer.Option(
        None, help="A whaleid model (model.json), or a run folder of fold*/ models (an ensemble)."
    ),
    zero_shot: Optional[str] = typer.Option(None, help="Or a pretrained timm backbone, no fine-tuning."),
    img_size: int = typer.Option(DEFAULT_IMG_SIZE, min=32, help="Input size for --zero-shot (a model knows its own)."),
    tta: bool = typer.Option(False, help="Average with the horizontally flipped photo."),
    ensemble: str = typer.Option("concat", help="How fold models combine: concat or mean of their unit vectors."),
    batch_size: int = typer.Option(32, min=1),
    crop: Optional[str] = CropOpt,
    boxes: Optional[list[Path]] = BoxesOpt,
    background: Optional[str] = BackgroundOpt,
    cache_root: Path = CacheRootOpt,
    keypoints: bool = typer.Option(
        False, help="Also extract keypoints (keypoints.npz), for `identify --rerank` and `openset --rerank`."
    ),
    detector: str = typer.Option(
        "aliked", help="With --keypoints: aliked (learned, matched by LightGlue), sift or orb."
    ),
    engine: str = EngineOpt,
):
    """Embed every photo of a catalog (labels optional)."""
    from whaleid.model.embed import throughput
    from whaleid.model.keypoints import KeypointConfig

    output_path(out, "--out", folder=True)
    preprocess = preparation(model, img_size, crop, background) if model or zero_shot else None
    embedder = embedder_for(
        model,
        zero_shot,
        img_size,
        tta,
        batch_size,
        ensemble,
        engine,
        preprocess=None if preprocess is None else preprocess.to_dict(),
        keypoints=KeypointConfig(detector=detector) if keypoints else None,
    )
    embeddings = embedder.embed_catalog(
        prepared(read_catalog(csv, images, require_labels=False), preprocess, boxes, cache_root)
    )
    embeddings.save(out)
    console.print(f"{len(embeddings)} vectors of {embeddings.vectors.shape[1]} dims -> {out}; {throughput(embedder)}")


GalleryArg = typer.Argument(
    ...,
    help="Embeddings folder of the labelled catalog (from `whaleid embed`), or a saved Identifier "
    "(`--save`), whose scorer, fusion and threshold are used as saved.",
)
QueriesArg = typer.Argument(
    ..., help="Embeddings folder of the photos to identify, or a CSV of them (embedded with the gallery's model)."
)
QueryImagesOpt = typer.Option(None, "--images", help="Photo folder of a query CSV (default: images/ beside it).")
ThresholdOpt = typer.Option(
    None, help="new_individual below this score (with --rerank and --calibrate: this one, not a calibrated one)."
)
CalibrateOpt = typer.Option(
    None,
    help="Embeddings of labelled validation photos: choose the threshold by best leave-one-out MAP@5 "
    "(with --rerank, fit the fusion on them too).",
)
NewRateOpt = typer.Option(None, min=0.0, max=1.0, help="Or choose the threshold so this share of queries is new.")
PerSpeciesOpt = typer.Option(
    False, help="With --calibrate: one threshold per species (species with 20+ validation photos)."
)
BlendOpt = typer.Option(
    0.0,
    min=0.0,
    max=1.0,
    help="Weight of the ArcFace-logit probabilities blended with kNN scores (0: kNN only; needs models saved with their head). --calibrate then ranks the validation photos against the gallery.",
)
SaveOpt = typer.Option(None, help="Also save the Identifier (index, ids, scorer, threshold, model) here.")
SubmissionOpt = typer.Option(None, help="Also write a Kaggle submission CSV here.")
QueryBoxesOpt = typer.Option(
    None, "--boxes", help="Box file(s) for a query CSV when the gallery was embedded with --crop boxes."
)


@command()
def identify(
    gallery: Path = GalleryArg,
    queries: Path = QueriesArg,
    images: Optional[Path] = QueryImagesOpt,
    out: Path = typer.Option(Path("predictions.csv"), help="CSV: image, predictions, candidates, scores."),
    threshold: Optional[float] = ThresholdOpt,
    calibrate: Optional[Path] = CalibrateOpt,
    new_rate: Optional[float] = NewRateOpt,
    per_species: bool = PerSpeciesOpt,
    blend: float = BlendOpt,
    index: str = typer.Option("exact", help="exact or faiss."),
    shortlist: int = ShortlistOpt,
    local_weight: float = LocalWeightOpt,
    engine: str = EngineOpt,
    save: Optional[Path] = SaveOpt,
    submission: Optional[Path] = SubmissionOpt,
    boxes: Optional[list[Path]] = QueryBoxesOpt,
    cache_root: Path = CacheRootOpt,
):
    """Top-5 individuals (or new_individual) for each query photo.

    Query photos given as a CSV are prepared and embedded as the gallery's were (model, crop, flip TTA).
    """
    from whaleid.model.embeddings import Embeddings
    from whaleid.search.identify import identify_queries

    if per_species and calibrate is None:
        raise typer.BadParameter("--per-species needs --calibrate VAL_EMBEDDINGS")
    if threshold is not None and (new_rate is not None or (calibrate is not None and not shortlist)):
        raise typer.BadParameter(
            "--threshold is a threshold already chosen: give it, --calibrate or --new-rate, not two "
            "(with --rerank, --calibrate fits the fusion and --threshold wins)"
        )
    for path, flag, folder in ((out, "--out", False), (save, "--save", True), (submission, "--submission", False)):
        if path:
            output_path(path, flag, folder=folder)
    scoring = dict(blend=blend, per_species=per_species, new_rate=new_rate, index=index, shortlist=shortlist)
    identifier = _identifier(gallery, threshold, calibrate is not None, local_weight, **scoring)
    if queries.is_dir():
        q = Embeddings.load(queries)
    else:  # embedded with the gallery's model, its photos prepared as the gallery's were
        q = identifier.embed(read_catalog(queries, images, require_labels=False), boxes, cache_root, engine=engine)
    predictions = identify_queries(
        identifier, q, Embeddings.load(calibrate) if calibrate else None, keep_threshold=threshold is not None
    )
    predictions.save(out)
    if save:
        identifier.save(save)
    if submission:
        predictions.write_submission(submission)
    said = " (given)" if threshold is not None else ""
    console.print(f"{len(predictions)} queries -> {out} (threshold: {rounded(identifier.threshold)}{said})")


def _identifier(gallery: Path, threshold: float | None, calibrating: bool, local_weight: float, **scoring):
    """A saved Identifier as it was saved, or one over an embeddings folder scored as the options say."""
    from whaleid.model.embeddings import Embeddings
    from whaleid.search.identify import Identifier, IdentifyConfig
    from whaleid.search.saved import SIDECAR

    if (gallery / SIDECAR).is_file():  # a saved Identifier: ranked and thresholded as it was saved
        if (
            scoring["shortlist"]
            or scoring["blend"]
            or scoring["per_species"]
            or scoring["new_rate"] is not None
            or scoring["index"] != "exact"
        ):
            raise typer.BadParameter(
                "a saved Identifier scores as it was saved: drop --rerank, --blend, --per-species, --new-rate "
                "and --index (or identify from the gallery's embeddings folder)"
            )
        identifier = Identifier.load(gallery)
        if threshold is not None:
            identifier.threshold = threshold
        return identifier
    new_rate = scoring["new_rate"]
    policy = (
        "per-species" if scoring["per_species"] else "rate" if new_rate is not None and not calibrating else "sweep"
    )
    g = Embeddings.load(gallery)
    reranking = rerank_config(g, scoring["shortlist"], local_weight)
    if reranking is not None and not calibrating:
        raise typer.BadParameter(
            "--rerank learns its fusion on labelled photos: give --calibrate VAL_EMBEDDINGS "
            "(or identify with an Identifier saved with its fusion)"
        )
    config = IdentifyConfig(
        blend=scoring["blend"] or None, threshold=policy, new_rate=new_rate, index=scoring["index"], rerank=reranking
    )
    return Identifier.from_embeddings(g, config, threshold=threshold)


def rerank_config(embeddings, shortlist: int, local_weight: float):
    """The re-ranking settings for ``--rerank``, reading the keypoint settings the embeddings were made with."""
    from whaleid.model.embeddings import keypoint_config
    from whaleid.search.rerank import RerankConfig

    if not shortlist:
        return None
    if embeddings.keypoints is None:
        raise typer.BadParameter(f"--rerank needs keypoints: embed {embeddings.directory} again with --keypoints")
    return RerankConfig(shortlist=shortlist, local_weight=local_weight, keypoints=keypoint_config(embeddings.meta))


@command()
def evaluate(
    predictions: Path = typer.Argument(..., help="CSV from `whaleid identify`."),
    truth: Path = typer.Option(..., help="CSV with image, species, individual_id of the queries."),
    gallery: Optional[Path] = typer.Option(
        None, help="Gallery embeddings: queries of individuals absent there count as new_individual."
    ),
    out: Optional[Path] = typer.Option(None, help="Folder for report.json, per_species.csv, threshold_sweep.csv/.png."),
):
    """MAP@5, top-1, top-5, per-species table and a threshold sweep."""
    from whaleid.data.catalog import read_catalog as read
    from whaleid.model.embeddings import Embeddings
    from whaleid.search.predictions import Predictions

    if out is not None:
        output_path(out, "--out", folder=True)
    known = Embeddings.load(gallery).table["individual_id"].tolist() if gallery is not None else None
    report, sweep = Predictions.load(predictions).evaluate(read(truth, check_images=False).table, str(truth), known)
    console.print(
        metrics_table("evaluation", {"all": {k: v for k, v in report.to_dict().items() if k != "per_species"}})
    )
    if report.per_species is not None:
        console.print(report.per_species.to_string(index=False))
    if out is not None:
        report.save(out, sweep)
        console.print(f"written to {out}")


@command()
def openset(
    test: Path = typer.Argument(..., help="Embeddings of held-out individuals: each photo queries all the others."),
    val: Path = typer.Option(..., help="Embeddings of validation individuals, to choose the threshold."),
    out: Optional[Path] = typer.Option(None, help="Write the metrics here as JSON."),
    shortlist: int = ShortlistOpt,
    local_weight: float = LocalWeightOpt,
):
    """The demo's open-set score for any embeddings: threshold from val, metrics on test."""
    from whaleid.model.embeddings import Embeddings
    from whaleid.search.openset import calibrated_open_set

    if out is not None:
        output_path(out, "--out", folder=False)
    v, t = Embeddings.load(val), Embeddings.load(test)
    v.require_labels("the validation embeddings")
    t.require_labels("the test embeddings")
    v.require_compatible(t, "the test embeddings", own="the validation embeddings")
    metrics, _, _ = calibrated_open_set(v, t, rerank_config(v, shortlist, local_weight))
    console.print(metrics_table("open set (leave-one-out)", {str(test): metrics}))
    if out is not None:
        save_json(metrics, out)


@command("convert-checkpoint")
def convert_checkpoint(
    old: Path = typer.Argument(..., help="A model.pt written by whaleid before checkpoints became safetensors + JSON."),
    out: Optional[Path] = typer.Option(
        None, help="Where to write model.safetensors + model.json (default: beside it)."
    ),
):
    """Rewrite an old pickled model.pt as safetensors + JSON, loading it without running any code it carries."""
    from whaleid.model.checkpoint import convert_checkpoint as convert

    console.print(f"converted -> {convert(old, out)}")


@command()
def crop(
    csv: Path,
    out: Path = typer.Option(..., help="Folder for crops.csv, failures.csv and masks/."),
    images: Optional[Path] = ImagesOpt,
    threshold: float = typer.Option(0.5, min=0.0, max=1.0, help="Saliency above this is the animal."),
    enlarge: float = typer.Option(1.2, help="Grow the box by this factor about its centre."),
    square: bool = typer.Option(False, help="Make boxes square before clipping."),
    region: str = typer.Option("union", help="union (of all regions above --min-area) or largest (connected region)."),
    min_area: float = typer.Option(
        0.002, min=0.0, max=1.0, help="Regions smaller than this share of the photo are ignored."
    ),
    clahe: bool = typer.Option(False, help="Equalise contrast first (dark or hazy photos)."),
    batch_size: int = typer.Option(8, min=1),
    workers: int = typer.Option(2, min=1),
):
    """Find the animal in every photo: a crop table with box, mask area, score and status."""
    from whaleid.preprocess.crops import CropSettings, crop_catalog, write_crop_table

    settings = CropSettings(threshold, enlarge, square, min_area, region, clahe)
    output_path(out, "--out", folder=True)
    catalog = read_catalog(csv, images, require_labels=False, check=False)
    table = crop_catalog(catalog, settings, masks_dir=out, batch_size=batch_size, workers=workers)
    crops_csv, failures_csv = write_crop_table(table, out)
    save_json(settings.to_dict(), out / "crop_settings.json")  # for `whaleid cache --crop-settings`
    console.print(table["status"].value_counts().to_string())
    console.print(
        f"crop table -> {crops_csv}; {len(table) - int((table['status'] == 'ok').sum())} to review -> {failures_csv}"
    )


@command()
def cache(
    csv: Path,
    images: Optional[Path] = ImagesOpt,
    root: Path = CacheRootOpt,
    sizes: str = typer.Option("256", help="Comma-separated longest sides to write, e.g. 128,256,384."),
    crop_mode: str = typer.Option("saliency", "--crop", help="none, saliency or boxes (--boxes)."),
    boxes: Optional[list[Path]] = BoxesOpt,
    background: Optional[str] = BackgroundOpt,
    feather: float = typer.Option(
        0.02, min=0.0, max=1.0, help="Soft edge of the background mask (share of the diagonal)."
    ),
    grayscale: bool = False,
    crop_settings: Optional[Path] = typer.Option(
        None, help="crop_settings.json written by `whaleid crop` (default: its defaults)."
    ),
    batch_size: int = typer.Option(8, min=1),
    workers: int = typer.Option(2, min=1),
):
    """Write cropped, resized photos once; re-running skips finished photos."""
    from whaleid.preprocess.cache import CacheSettings
    from whaleid.preprocess.cache_writer import build_cache
    from whaleid.preprocess.crops import CropSettings
    from whaleid.preprocess.prepare import box_table

    output_path(root, "--cache-root", folder=True)
    saliency = CropSettings.from_json(crop_settings) if crop_settings else CropSettings()
    try:
        size_list = tuple(int(s) for s in sizes.split(","))
    except ValueError as error:
        raise typer.BadParameter(f"{error} (--sizes takes whole numbers like 128,256)") from error
    settings = CacheSettings(
        sizes=size_list, crop=crop_mode, background=background, feather=feather, grayscale=grayscale, saliency=saliency
    )
    catalog = read_catalog(csv, images, require_labels=False, check=False)
    table = box_table(catalog, boxes) if crop_mode == "boxes" else None
    built = build_cache(catalog, root, settings, boxes=table, batch_size=batch_size, workers=workers)
    console.print(f"cache {built.dir}: {built.stats}")


@command()
def explore(
    csv: Path,
    out: Path = typer.Option(Path("runs/explore"), help="Folder for the HTML pages and thumbnails."),
    images: Optional[Path] = ImagesOpt,
    crops: Optional[Path] = typer.Option(
        None, help="A crops.csv (from `whaleid crop` or a cache folder) to draw boxes and masks."
    ),
    per_individual: int = typer.Option(12, min=1),
    max_individuals: int = typer.Option(200, min=1),
    sheet: Optional[Path] = typer.Option(None, help="Also write one PNG of every photo with its box (needs --crops)."),
    sheet_columns: int = typer.Option(10, min=1),
    sheet_size: int = typer.Option(120, min=16, help="Tile size of --sheet in pixels."),
):
    """A static HTML report of a catalog: counts, contact sheets, crop failures, worst crops."""
    from whaleid.app.explore import build_explorer
    from whaleid.app.thumbnails import contact_sheet
    from whaleid.preprocess.crops import read_crop_table

    if sheet and not crops:
        raise typer.BadParameter("--sheet needs --crops")
    output_path(out, "--out", folder=True)
    if sheet:
        output_path(sheet, "--sheet", folder=False)
    catalog = read_catalog(csv, images, require_labels=False)
    table = read_crop_table(crops) if crops else None
    index = build_explorer(
        catalog,
        out,
        table,
        crops.parent if crops else None,
        per_individual=per_individual,
        max_individuals=max_individuals,
    )
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

    output_path(out, "--out", folder=True)
    csv = make_catalog(out, individuals, (min_photos, max_photos), size, seed, progress=True)
    console.print(f"synthetic catalog -> {csv}")
