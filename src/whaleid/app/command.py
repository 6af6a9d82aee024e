"""The commands' common footing: the typer app, one-line user errors, and the options and helpers that the
catalog, search and experiment commands share (so no command module imports another's)."""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from pathlib import Path

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
                f"(re-run with --debug or {DEBUG_ENV}=1 for the traceback, and please report it)",
                1,
            ) from None

    return wrapper


def command(*args, group: typer.Typer | None = None, **kwargs) -> Callable[[Callable], Callable]:
    """``app.command`` (or a sub-app's) with :func:`_user_errors` around the function."""
    return lambda function: (group or app).command(*args, **kwargs)(_user_errors(function))


@app.callback()
def _options(debug: bool = typer.Option(False, "--debug", help=f"Show tracebacks (or set {DEBUG_ENV}=1).")) -> None:
    """Photo-identification of individual whales and dolphins."""
    _debug["on"] = debug or _debug_from_env()


ImagesOpt = typer.Option(None, "--images", help="Photo folder (default: images/ beside the CSV).")
ShortlistOpt = typer.Option(
    0,
    "--rerank",
    min=0,
    help="Re-rank this many nearest photos by local-feature matches fused with the cosine "
    "(0: off; the embeddings need --keypoints; docs/results/local-features.md).",
)
LocalWeightOpt = typer.Option(0.5, min=0.0, max=1.0, help="With --rerank: weight of the local score in the fusion.")
CropOpt = typer.Option(
    None,
    "--crop",
    help="Crop photos first: none, saliency (the animal's salient region) or boxes (--boxes). Default: as the model was trained, else none.",
)
BoxesOpt = typer.Option(
    None,
    "--boxes",
    help="Box file(s): pixel-box CSV (image, box 'x0 y0 x1 y1' or x0..y1, optional source) or YOLO (folder of .txt or CSV with cx,cy,w,h).",
)
BackgroundOpt = typer.Option(
    None, "--background", help="Remove the background (black, blur or mean) using the saliency mask."
)
EngineOpt = typer.Option(
    "auto", help="What runs the model: onnx (ONNX Runtime, CPU), torch, or auto (onnx on CPU where it exports)."
)
CacheRootOpt = typer.Option(Path(".cache/whaleid"), "--cache-root", help="Where cropped/resized photos are cached.")


def read_catalog(csv: Path, images: Path | None, require_labels: bool = True, check: bool = True):
    """The catalog, with the photos that could not be read listed (first ten) rather than failing the run."""
    from whaleid.data.catalog import read_catalog as read

    catalog = read(csv, images, require_labels=require_labels, check_images=check, progress=True)
    if len(catalog.problems):
        console.print(f"[yellow]skipped {len(catalog.problems)} unreadable photo(s):[/yellow]")
        for row in catalog.problems.head(10).itertuples():
            console.print(f"  {row.image}: {row.reason}")
    return catalog


def prepared(catalog, preprocess, boxes: list[Path] | None, cache_root: Path, training: bool = False):
    """The catalog as the model reads it (crop cache built or reused), said in one line."""
    from whaleid.preprocess.prepare import prepare

    if preprocess is None:
        return catalog
    ready = prepare(catalog, preprocess, cache_root, boxes, training=training)
    console.print(
        f"photos from the crop cache ({preprocess.cache.crop}, background {preprocess.cache.background}): "
        f"{len(ready)} ready"
    )
    return ready


def save_json(value: dict, path: Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(value, indent=2, default=str))


def metrics_table(title: str, rows: dict[str, dict]) -> Table:
    """Metric rows as a terminal table; an undefined metric is a dash."""
    from whaleid.search.metrics import cell

    table = Table(title=title)
    columns = list(next(iter(rows.values())).keys())
    table.add_column("")
    for c in columns:
        table.add_column(c, justify="right")
    for name, values in rows.items():
        table.add_row(name, *[cell(v, 4) if v is None or isinstance(v, float) else str(v) for v in values.values()])
    return table


def embedder_for(
    model: Path | None,
    zero_shot: str | None,
    img_size: int,
    tta: bool,
    batch_size: int,
    ensemble: str = "concat",
    engine: str = "auto",
    **recorded,
):
    """The embedder of a model.json (or run folder of folds), or of a pretrained backbone; ``recorded``: what it
    records with its vectors besides (``preprocess``, ``keypoints``)."""
    from whaleid.model.checkpoint import checkpoints
    from whaleid.model.embed import Embedder

    if (model is None) == (zero_shot is None):
        raise typer.BadParameter("give exactly one of --model or --zero-shot")
    options = dict(tta_flip=tta, batch_size=batch_size, engine=engine, **recorded)
    if model is not None:
        return Embedder.from_checkpoint(checkpoints(model), ensemble=ensemble, **options)
    return Embedder.zero_shot(zero_shot, img_size, **options)


def preparation(model: Path | None, img_size: int, crop: str | None, background: str | None):
    """How photos are prepared: the options given, else what the model recorded (read before it loads)."""
    from whaleid.model.checkpoint import checkpoints, recorded_preparation
    from whaleid.preprocess.prepare import PreprocessConfig

    size, recorded = (img_size, None) if model is None else recorded_preparation(checkpoints(model)[0])
    return PreprocessConfig.from_options(crop, background, None, size, PreprocessConfig.from_dict(recorded))


def rounded(threshold):
    return (
        {k: round(v, 4) for k, v in threshold.items()}
        if isinstance(threshold, dict)
        else None
        if threshold is None
        else round(threshold, 4)
    )
