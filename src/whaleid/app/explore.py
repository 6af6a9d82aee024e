"""A static HTML explorer for a catalog and its crops, to look at the data before training on it.

Numbers say little about a photo-ID catalog; looking at it does: an individual whose
photos show two different animals, crops that cut off the fin, a batch of photos where
saliency found nothing. :func:`build_explorer` writes a folder of plain HTML pages
(``index.html`` with counts and charts, ``individuals.html`` with contact sheets,
``failures.html`` and ``worst.html``) with small JPEG thumbnails on which the crop box
and saliency mask are drawn. Everything is linked relatively and needs no JavaScript or
network, so the folder can be opened from disk, zipped, or copied to a shared drive.
"""

from __future__ import annotations

import html
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from whaleid.data.catalog import Catalog, summary
from whaleid.data.images import ImageError, open_image
from whaleid.errors import UserError
from whaleid.files import atomic_path, inside, safe_name
from whaleid.preprocess.crops import CROP_COLUMNS
from whaleid.preprocess.saliency import STATUS_OK

__all__ = ["BOX_COLOUR", "MASK_COLOUR", "annotated_thumbnail", "build_explorer", "contact_sheet"]

#: Outline of the crop box: yellow stands out against sea, sky and grey skin.
BOX_COLOUR: tuple[int, int, int] = (255, 255, 0)
#: Tint laid over salient pixels, opacity proportional to the mask (at most half).
MASK_COLOUR: tuple[int, int, int] = (255, 0, 160)

_PAGES = (
    ("index.html", "Overview"),
    ("individuals.html", "Individuals"),
    ("failures.html", "Failures"),
    ("worst.html", "Worst crops"),
)

_CSS = """\
body { font-family: system-ui, sans-serif; margin: 0; color: #222; background: #f6f7f9; }
header { background: #15324b; color: #fff; padding: .8em 1.5em; }
header h1 { margin: 0 0 .3em; font-size: 1.4em; }
nav a { color: #cfe6ff; margin-right: 1.2em; text-decoration: none; }
nav a[aria-current] { color: #fff; font-weight: bold; }
main { padding: 1em 1.5em; }
section { margin-bottom: 2em; }
h2 { font-size: 1.15em; margin: .8em 0 .3em; }
table.counts { border-collapse: collapse; }
table.counts td, table.counts th { padding: .15em .8em; text-align: left; border-bottom: 1px solid #ddd; }
table.counts td.n { text-align: right; font-variant-numeric: tabular-nums; }
img.chart { max-width: 100%; background: #fff; border: 1px solid #ddd; }
.sheet { display: flex; flex-wrap: wrap; gap: 8px; }
figure { margin: 0; padding: 4px; background: #fff; border: 1px solid #ddd; border-radius: 4px; }
figure img { display: block; }
figcaption { font-size: .75em; max-width: 12em; overflow-wrap: anywhere; margin-top: 2px; }
.unreadable { display: flex; align-items: center; justify-content: center; text-align: center;
  width: 8em; height: 6em; background: #eee; color: #a00; font-size: .8em; }
.fallback { border-color: #e0a000; }
.error { border-color: #c00; }
.status { font-weight: bold; }
.meta { color: #666; }
"""


@dataclass(frozen=True)
class _Thumb:
    src: str | None  # path relative to out_dir; None when the photo cannot be read
    width: int
    height: int
    note: str  # why there is no thumbnail (or no mask on it); "" when all went well


def _status_class(status: str) -> str:
    if not status:  # photo without a crop row
        return ""
    if status == STATUS_OK:
        return "ok"
    if status.startswith("fallback"):
        return "fallback"
    return "error"


def _mask_path(crop: dict[str, Any] | None, crops_dir: Path | None) -> Path | None:
    """The mask file the crop table records, relative to ``crops_dir``."""
    value = None if crop is None else crop.get("mask")
    if crops_dir is None or not isinstance(value, str) or not value.strip():
        return None
    return crops_dir / value


def _at_least(value: int, least: int, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise UserError(f"{what} must be a whole number >= {least}, got {value!r}")


def annotated_thumbnail(
    path: str | Path, crop: dict[str, Any] | None, crops_dir: Path | None, size: int
) -> tuple[Image.Image, str]:
    """The photo shrunk to ``size``, mask tinted and crop box drawn, with a note on what could not be drawn.

    Raises :class:`ImageError` when the photo itself cannot be read.
    """
    photo = open_image(path)
    frame = photo.size
    photo.thumbnail((size, size))
    note = ""
    mask_path = _mask_path(crop, crops_dir)
    if mask_path is not None and not inside(mask_path, crops_dir):  # a crop table is a file users can edit
        note = "mask: not inside the crop folder"
    elif mask_path is not None:
        try:
            mask = open_image(mask_path).convert("L").resize(photo.size, Image.Resampling.BILINEAR)
        except ImageError as exc:
            note = f"mask: {exc.reason}"
        else:
            alpha = mask.point(lambda v: v // 2)
            photo = Image.composite(Image.new("RGB", photo.size, MASK_COLOUR), photo, alpha)
    if crop is not None and min(crop["x0"], crop["y0"], crop["x1"], crop["y1"]) >= 0:
        # The box is in the frame the crop table was made in; fall back to the photo's own.
        fw, fh = (crop["width"], crop["height"]) if min(crop["width"], crop["height"]) > 0 else frame
        sx, sy = photo.width / fw, photo.height / fh
        x0, x1 = round(crop["x0"] * sx), max(round(crop["x1"] * sx) - 1, 0)
        y0, y1 = round(crop["y0"] * sy), max(round(crop["y1"] * sy) - 1, 0)
        ImageDraw.Draw(photo).rectangle(
            (min(x0, photo.width - 1), min(y0, photo.height - 1), min(x1, photo.width - 1), min(y1, photo.height - 1)),
            outline=BOX_COLOUR,
            width=max(2, size // 80),
        )
    return photo, note


def _make_thumb(
    image: str, path: str, crop: dict[str, Any] | None, crops_dir: Path | None, thumbs: Path, size: int
) -> _Thumb:
    try:
        photo, note = annotated_thumbnail(path, crop, crops_dir, size)
    except ImageError as exc:
        return _Thumb(None, 0, 0, exc.reason)
    name = safe_name(image, ".jpg")
    with atomic_path(thumbs / name) as tmp:  # full-resolution chroma keeps the thin box line its own colour
        photo.save(tmp, format="JPEG", quality=90, subsampling=0)
    return _Thumb(f"thumbs/{name}", photo.width, photo.height, note)


def contact_sheet(
    catalog: Catalog,
    crops: pd.DataFrame,
    out_png: str | Path,
    crops_dir: str | Path | None = None,
    columns: int = 10,
    size: int = 120,
) -> Path:
    """One image of every photo with its box (and mask), numbered, fallbacks and errors framed in red.

    Made for reports: a person checks at a glance whether each box holds the animal.
    """
    _at_least(columns, 1, "contact sheet columns")
    _at_least(size, 16, "contact sheet tile size")
    rows = _check_crops(crops).set_index("image", drop=False)
    names = catalog.table["image"].astype(str).tolist()
    crops_dir = Path(crops_dir) if crops_dir is not None else None
    n_rows = max(1, -(-len(names) // columns))
    sheet = Image.new("RGB", (columns * size, n_rows * size), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for k, (name, path) in enumerate(zip(names, catalog.paths)):
        crop = rows.loc[name].to_dict() if name in rows.index else None
        x, y = (k % columns) * size, (k // columns) * size
        try:
            thumb, _ = annotated_thumbnail(path, crop, crops_dir, size - 4)
            sheet.paste(thumb, (x + 2, y + 2))
        except ImageError:
            pass  # left blank; the red frame below says the photo is a failure
        if crop is None or crop["status"] != STATUS_OK:
            draw.rectangle((x, y, x + size - 1, y + size - 1), outline=(220, 0, 0), width=3)
        draw.text((x + 4, y + 3), str(k), fill=(255, 255, 255), stroke_width=2, stroke_fill=(0, 0, 0))
    jpeg = Path(out_png).suffix.lower() in (".jpg", ".jpeg")  # JPEG: a tenth of the size, for committed reports
    with atomic_path(out_png) as tmp:
        sheet.save(tmp, format="JPEG" if jpeg else "PNG", quality=85, optimize=True)
    return Path(out_png)


def _make_thumbs(
    jobs: dict[str, str],
    crops: dict[str, dict[str, Any]],
    crops_dir: Path | None,
    out_dir: Path,
    size: int,
    progress: bool,
) -> dict[str, _Thumb]:
    thumbs = out_dir / "thumbs"
    thumbs.mkdir(parents=True, exist_ok=True)

    def one(item: tuple[str, str]) -> _Thumb:
        return _make_thumb(item[0], item[1], crops.get(item[0]), crops_dir, thumbs, size)

    workers = min(8, os.cpu_count() or 2)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = tqdm(
            pool.map(one, jobs.items()), total=len(jobs), desc="thumbnails", unit="photo", disable=not progress
        )
        return dict(zip(jobs, list(results), strict=True))


# --------------------------------------------------------------------------- html


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _page(current: str, title: str, body: str) -> str:
    nav = " ".join(
        f'<a href="{href}"{" aria-current=page" if href == current else ""}>{label}</a>' for href, label in _PAGES
    )
    return (
        '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{_esc(title)}</title>\n"
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<link rel="stylesheet" href="style.css">\n</head>\n<body>\n'
        f"<header><h1>{_esc(title)}</h1><nav>{nav}</nav></header>\n<main>\n{body}\n</main>\n</body>\n</html>\n"
    )


def _write(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _counts_table(rows: Iterable[tuple[str, Any]]) -> str:
    body = "".join(f'<tr><th scope="row">{_esc(k)}</th><td class="n">{_esc(v)}</td></tr>' for k, v in rows)
    return f'<table class="counts">{body}</table>'


def _card(image: str, thumb: _Thumb | None, lines: Sequence[str], css: str = "") -> str:
    if thumb is not None and thumb.src is not None:
        picture = f'<img src="{_esc(thumb.src)}" width="{thumb.width}" height="{thumb.height}" alt="{_esc(image)}">'
    else:
        reason = thumb.note if thumb is not None else "no thumbnail"
        picture = f'<div class="unreadable">{_esc(reason)}</div>'
    extra = [thumb.note] if thumb is not None and thumb.src is not None and thumb.note else []
    caption = "<br>".join([f"<b>{_esc(image)}</b>", *(_esc(x) for x in [*lines, *extra] if x)])
    return f'<figure class="{css}">{picture}<figcaption>{caption}</figcaption></figure>'


def _sheet(cards: Sequence[str]) -> str:
    return '<div class="sheet">' + "".join(cards) + "</div>"


# --------------------------------------------------------------------------- charts


def _save_chart(fig: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


def _charts(stats: dict[str, Any], out_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    species = stats["species"]
    fig = Figure(figsize=(7, max(2.0, 0.3 * len(species) + 1.0)), layout="constrained")
    ax = fig.subplots()
    ax.barh(list(species)[::-1], list(species.values())[::-1], color="C0")
    ax.set(xlabel="photos", title="Photos per species")
    ax.grid(axis="x", alpha=0.3)
    _save_chart(fig, out_dir / "species.png")

    hist = stats["photos_per_individual"]
    fig = Figure(figsize=(7, 3), layout="constrained")
    ax = fig.subplots()
    ax.bar([str(k) for k in hist], list(hist.values()), color="C1")
    ax.set(xlabel="photos of the individual", ylabel="individuals", title="Photos per individual")
    ax.grid(axis="y", alpha=0.3)
    _save_chart(fig, out_dir / "photos_per_individual.png")


# --------------------------------------------------------------------------- main


def _check_crops(crops: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in CROP_COLUMNS if c != "mask" and c not in crops.columns]  # masks are optional
    if missing:
        raise UserError(f"crop table lacks column(s) {', '.join(missing)}")
    dup = crops["image"][crops["image"].duplicated()].unique()
    if len(dup):
        raise UserError(f"crop table has {len(dup)} image(s) more than once, e.g. {dup[0]!r}")
    return crops.astype({c: "int64" for c in ("x0", "y0", "x1", "y1", "width", "height")})


@dataclass(frozen=True)
class _Selection:
    """Which photos each page shows, worked out before any thumbnail so that each one is made once."""

    sheets: dict[Any, pd.DataFrame]  # shown individual -> the photos on its contact sheet
    totals: dict[Any, int]  # shown individual -> how many photos it has in all
    n_individuals: int  # individuals with a photo, shown or not
    problems: list[tuple[str, str]]  # (image, reason): listed in the catalog but unreadable
    failed: list[dict[str, Any]]  # crop rows that are not ok, of photos not among the problems
    smallest: list[dict[str, Any]]  # ok crops with the smallest salient area
    lowest: list[dict[str, Any]]  # ok crops with the lowest saliency score


def _crops_to_check(
    crop_table: pd.DataFrame | None, problems: list[tuple[str, str]], worst: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """Failed crops (each photo once: the unreadable ones are listed as catalog problems already),
    then the ``worst`` ok crops by salient area and by score, where a crop is most likely wrong."""
    if crop_table is None:
        return [], [], []
    listed = {name for name, _ in problems}
    bad = crop_table[(crop_table["status"] != STATUS_OK) & ~crop_table["image"].isin(listed)]
    failed = bad.sort_values("status", key=lambda s: s.map(_status_class), kind="stable").to_dict("records")
    ok = crop_table[crop_table["status"] == STATUS_OK]
    return failed, ok.nsmallest(worst, "mask_area").to_dict("records"), ok.nsmallest(worst, "score").to_dict("records")


def _select(
    catalog: Catalog, crop_table: pd.DataFrame | None, per_individual: int, max_individuals: int | None, worst: int
) -> _Selection:
    """Contact sheets of the individuals with the most photos (capped, so that the page stays usable),
    plus the photos the failures and worst-crops pages show."""
    per = catalog.table.dropna(subset=["individual_id"]).groupby("individual_id", sort=False)
    order = sorted(per.groups, key=lambda i: (-len(per.groups[i]), str(i)))
    shown = order if max_individuals is None else order[:max_individuals]
    problems = list(zip(catalog.problems["image"], catalog.problems["reason"]))
    failed, smallest, lowest = _crops_to_check(crop_table, problems, worst)
    return _Selection(
        sheets={ind: per.get_group(ind).head(per_individual) for ind in shown},
        totals={ind: len(per.groups[ind]) for ind in shown},
        n_individuals=len(order),
        problems=problems,
        failed=failed,
        smallest=smallest,
        lowest=lowest,
    )


def _thumb_jobs(catalog: Catalog, sel: _Selection) -> dict[str, str]:
    """Image name -> photo path of every photo some page shows, each once."""
    paths = dict(zip(catalog.table["image"], catalog.table["path"]))

    def path_of(image: str) -> str:
        return paths.get(image) or str(catalog.images_dir / image)

    jobs: dict[str, str] = {}
    for sheet in sel.sheets.values():
        jobs.update((name, path_of(name)) for name in sheet["image"])
    for name in [n for n, _ in sel.problems] + [r["image"] for r in sel.failed + sel.smallest + sel.lowest]:
        jobs.setdefault(name, path_of(name))
    return jobs


# --------------------------------------------------------------------------- pages


@dataclass(frozen=True)
class _Cards:
    """Cards for the pages, so that a photo is captioned the same way wherever it shows up."""

    thumbs: dict[str, _Thumb]
    crop_rows: dict[str, dict[str, Any]]  # image -> its row of the crop table
    individual_of: dict[str, Any]

    def photo(self, image: str) -> str:
        """A contact-sheet card: the photo with its crop status, if it has a crop."""
        status = self.crop_rows[image]["status"] if image in self.crop_rows else ""
        return _card(image, self.thumbs[image], [status], _status_class(status))

    def problem(self, image: str, reason: str) -> str:
        """A photo the catalog lists but could not read, with the reason."""
        return _card(image, self.thumbs[image], [f"catalog: {reason}"], "error")

    def crop(self, row: dict[str, Any]) -> str:
        """A crop worth a look: whose photo it is, its status and, unless it failed, how salient it was."""
        image = row["image"]
        css = _status_class(row["status"])
        lines = [f"individual: {self.individual_of.get(image) or '-'}", row["status"]]
        if css != "error":
            lines.append(f"mask area {row['mask_area']:.2%} · score {row['score']:.3f}")
        return _card(image, self.thumbs[image], lines, css)


def _index_page(catalog: Catalog, stats: dict[str, Any], crop_table: pd.DataFrame | None) -> str:
    """Overview: the counts, crop statuses and the two charts."""
    rows: list[tuple[str, Any]] = [
        ("photos", stats["photos"]),
        ("individuals", stats["individuals"]),
        ("unlabelled photos", stats["unlabelled"]),
        ("species", len(stats["species"])),
        ("problems (listed but unreadable)", stats["problems"]),
        *((f"problem: {reason}", n) for reason, n in stats["problem_reasons"].items()),
    ]
    if crop_table is not None:
        rows += [(f"crop status: {s}", int(n)) for s, n in crop_table["status"].value_counts().items()]
    source = f" from {catalog.csv_path}" if catalog.csv_path is not None else ""
    body = (
        f'<section id="summary"><h2>Summary</h2><p class="meta">Catalog{_esc(source)}, '
        f"photos in {_esc(catalog.images_dir)}.</p>{_counts_table(rows)}</section>\n"
        '<section id="species"><h2>Species</h2>'
        '<img class="chart" src="species.png" alt="bar chart of photos per species"></section>\n'
        '<section id="photos-per-individual"><h2>Photos per individual</h2>'
        '<img class="chart" src="photos_per_individual.png" alt="histogram of photos per individual">'
        "</section>"
    )
    return _page("index.html", "whaleid dataset explorer", body)


def _individuals_page(sel: _Selection, cards: _Cards) -> str:
    """One contact sheet per shown individual, largest first, saying when photos were left out."""
    parts = []
    if len(sel.sheets) < sel.n_individuals:
        parts.append(
            f'<p class="meta">The {len(sel.sheets)} individuals with the most photos, of {sel.n_individuals}.</p>'
        )
    for n, (ind, rows_of) in enumerate(sel.sheets.items(), 1):
        total = sel.totals[ind]
        species = ", ".join(sorted(map(str, rows_of["species"].unique())))
        more = f", showing {len(rows_of)}" if len(rows_of) < total else ""
        parts.append(
            f'<section class="individual" id="individual-{n}"><h2>{_esc(ind)}</h2>'
            f'<p class="meta">{_esc(species)} · {total} photo{"s" if total != 1 else ""}{more}</p>'
            f"{_sheet([cards.photo(name) for name in rows_of['image']])}</section>"
        )
    if not sel.n_individuals:
        parts.append("<p>No photo in this catalog has an individual id.</p>")
    return _page("individuals.html", "Individuals", "\n".join(parts))


def _failures_page(sel: _Selection, cards: _Cards, with_crops: bool) -> str:
    """Unreadable photos first, then failed crops, fallbacks before errors."""
    figures = [cards.problem(name, reason) for name, reason in sel.problems]
    figures += [cards.crop(row) for row in sel.failed]
    where = "" if with_crops else " (no crop table given: only catalog problems are listed)"
    body = (
        f'<section id="failures"><h2>{len(figures)} photo{"s" if len(figures) != 1 else ""} '
        f"unreadable or without a proper crop{where}</h2>"
        + (_sheet(figures) if figures else "<p>No failures: every photo was read and cropped.</p>")
        + "</section>"
    )
    return _page("failures.html", "Failures", body)


def _worst_page(sel: _Selection, cards: _Cards, with_crops: bool) -> str:
    """The ok crops most likely to be wrong after all: smallest salient area, lowest score."""
    if not with_crops:
        sections = ["<p>No crop table given.</p>"] * 2
    else:
        sections = [
            _sheet([cards.crop(r) for r in rs]) if rs else "<p>No ok crops.</p>" for rs in (sel.smallest, sel.lowest)
        ]
    body = (
        f'<section id="smallest"><h2>Smallest salient area (ok crops)</h2>{sections[0]}</section>\n'
        f'<section id="lowest-score"><h2>Lowest saliency score (ok crops)</h2>{sections[1]}</section>'
    )
    return _page("worst.html", "Worst crops", body)


def build_explorer(
    catalog: Catalog,
    out_dir: str | Path,
    crops: pd.DataFrame | None = None,
    crops_dir: str | Path | None = None,
    *,
    thumb_size: int = 160,
    per_individual: int = 12,
    max_individuals: int | None = 200,
    worst: int = 48,
    progress: bool = True,
) -> Path:
    """Write the explorer pages for ``catalog`` into ``out_dir`` and return ``index.html``.

    ``crops`` (one row per photo, see :data:`whaleid.preprocess.crops.CROP_COLUMNS`) adds crop boxes to the
    thumbnails, crop status counts, the failures and the worst crops; its ``mask``
    paths are read relative to ``crops_dir`` and masks are not drawn without it.
    Contact sheets are capped (``max_individuals`` largest individuals, ``per_individual``
    photos each; None shows all) so that the page stays usable for a full catalog.
    Photos that cannot be read get a text placeholder with the reason, not an error.
    """
    _at_least(thumb_size, 16, "thumbnail size")
    _at_least(per_individual, 1, "photos per individual")
    _at_least(worst, 0, "number of worst crops")
    if max_individuals is not None:
        _at_least(max_individuals, 1, "number of individuals")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = catalog.table
    stats = summary(catalog)
    crop_table = _check_crops(crops) if crops is not None else None
    crop_rows = {} if crop_table is None else {r["image"]: r for r in crop_table.to_dict("records")}
    sel = _select(catalog, crop_table, per_individual, max_individuals, worst)
    thumbs = _make_thumbs(
        _thumb_jobs(catalog, sel),
        crop_rows,
        Path(crops_dir) if crops_dir is not None else None,
        out_dir,
        thumb_size,
        progress,
    )
    cards = _Cards(thumbs, crop_rows, dict(zip(table["image"], table["individual_id"])))

    _write(out_dir / "style.css", _CSS)
    _charts(stats, out_dir)
    _write(out_dir / "index.html", _index_page(catalog, stats, crop_table))
    _write(out_dir / "individuals.html", _individuals_page(sel, cards))
    _write(out_dir / "failures.html", _failures_page(sel, cards, crop_table is not None))
    _write(out_dir / "worst.html", _worst_page(sel, cards, crop_table is not None))
    return out_dir / "index.html"
