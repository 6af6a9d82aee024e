"""A static HTML explorer for a catalog and its crops, to look at the data before training on it.

Numbers say little about a photo-ID catalog; looking at it does: an individual whose
photos show two different animals, crops that cut off the fin, a batch of photos where
saliency found nothing. :func:`build_explorer` writes a folder of plain HTML pages
(``index.html`` with counts and charts, ``individuals.html`` with contact sheets,
``failures.html`` and ``worst.html``) with small JPEG thumbnails on which the crop box
and saliency mask are drawn. Everything is linked relatively and needs no JavaScript or
network, so the folder can be opened from disk, zipped, or copied to a shared drive. The pages are
Jinja2 templates (``templates/explore/``), autoescaped: image names and ids come from users.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from whaleid.app.thumbnails import Thumb, at_least, check_crops, make_thumbs
from whaleid.data.catalog import Catalog
from whaleid.data.summary import summary
from whaleid.files import atomic_path
from whaleid.preprocess.saliency import STATUS_OK

__all__ = ["build_explorer"]

_PAGES = (
    ("index.html", "Overview"),
    ("individuals.html", "Individuals"),
    ("failures.html", "Failures"),
    ("worst.html", "Worst crops"),
)


_TEMPLATES = Environment(
    loader=PackageLoader("whaleid.app", "templates/explore"),
    autoescape=select_autoescape(["html"]),
    undefined=StrictUndefined,
    keep_trailing_newline=True,
)


def _status_class(status: str) -> str:
    if not status:  # photo without a crop row
        return ""
    if status == STATUS_OK:
        return "ok"
    if status.startswith("fallback"):
        return "fallback"
    return "error"


@dataclass(frozen=True)
class Card:
    """One photo on a page: its thumbnail (None: the reason shows instead) and caption lines."""

    image: str
    thumb: Thumb | None
    reason: str
    lines: list[str]
    css: str


def _card(image: str, thumb: Thumb | None, lines: list[str], css: str = "") -> Card:
    if thumb is not None and thumb.src is not None:
        return Card(image, thumb, "", [x for x in [*lines, thumb.note] if x], css)
    return Card(image, None, thumb.note if thumb is not None else "no thumbnail", [x for x in lines if x], css)


@dataclass(frozen=True)
class _Cards:
    """Cards for the pages, so that a photo is captioned the same way wherever it shows up."""

    thumbs: dict[str, Thumb]
    crop_rows: dict[str, dict[str, Any]]  # image -> its row of the crop table
    individual_of: dict[str, Any]

    def photo(self, image: str) -> Card:
        """A contact-sheet card: the photo with its crop status, if it has a crop."""
        status = self.crop_rows[image]["status"] if image in self.crop_rows else ""
        return _card(image, self.thumbs[image], [status], _status_class(status))

    def problem(self, image: str, reason: str) -> Card:
        """A photo the catalog lists but could not read, with the reason."""
        return _card(image, self.thumbs[image], [f"catalog: {reason}"], "error")

    def crop(self, row: dict[str, Any]) -> Card:
        """A crop worth a look: whose photo it is, its status and, unless it failed, how salient it was."""
        image = row["image"]
        css = _status_class(row["status"])
        lines = [f"individual: {self.individual_of.get(image) or '-'}", row["status"]]
        if css != "error":
            lines.append(f"mask area {row['mask_area']:.2%} · score {row['score']:.3f}")
        return _card(image, self.thumbs[image], lines, css)


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


def _write_page(out_dir: Path, name: str, title: str, **context: Any) -> None:
    html = _TEMPLATES.get_template(name).render(pages=_PAGES, current=name, title=title, **context)
    with atomic_path(out_dir / name) as tmp:
        tmp.write_text(html, encoding="utf-8")


def _counts(stats: dict[str, Any], crop_table: pd.DataFrame | None) -> list[tuple[str, Any]]:
    """The overview's table: the counts, then crop statuses when there is a crop table."""
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
    return rows


@dataclass(frozen=True)
class _Individual:
    """One contact sheet of the individuals page."""

    individual: Any
    species: str
    total: int
    cards: list[Card]


def _write_pages(
    out_dir: Path,
    catalog: Catalog,
    stats: dict[str, Any],
    crop_table: pd.DataFrame | None,
    sel: _Selection,
    cards: _Cards,
) -> None:
    """The four pages: overview, individuals (largest first), failures (unreadable photos first, then failed
    crops, fallbacks before errors) and the ok crops most likely to be wrong after all."""
    with_crops = crop_table is not None
    source = f" from {catalog.csv_path}" if catalog.csv_path is not None else ""
    counts = _counts(stats, crop_table)
    _write_page(
        out_dir, "index.html", "whaleid dataset explorer", source=source, images_dir=catalog.images_dir, counts=counts
    )
    individuals = [
        _Individual(
            ind,
            ", ".join(sorted(map(str, rows["species"].unique()))),
            sel.totals[ind],
            [cards.photo(n) for n in rows["image"]],
        )
        for ind, rows in sel.sheets.items()
    ]
    _write_page(out_dir, "individuals.html", "Individuals", sections=individuals, n_individuals=sel.n_individuals)
    failed = [cards.problem(name, reason) for name, reason in sel.problems] + [cards.crop(row) for row in sel.failed]
    _write_page(out_dir, "failures.html", "Failures", cards=failed, with_crops=with_crops)
    smallest, lowest = ([cards.crop(r) for r in rows] for rows in (sel.smallest, sel.lowest))
    _write_page(out_dir, "worst.html", "Worst crops", smallest=smallest, lowest=lowest, with_crops=with_crops)


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
    at_least(thumb_size, 16, "thumbnail size")
    at_least(per_individual, 1, "photos per individual")
    at_least(worst, 0, "number of worst crops")
    if max_individuals is not None:
        at_least(max_individuals, 1, "number of individuals")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = catalog.table
    stats = summary(catalog)
    crop_table = check_crops(crops) if crops is not None else None
    crop_rows = {} if crop_table is None else {r["image"]: r for r in crop_table.to_dict("records")}
    sel = _select(catalog, crop_table, per_individual, max_individuals, worst)
    thumbs = make_thumbs(
        _thumb_jobs(catalog, sel),
        crop_rows,
        Path(crops_dir) if crops_dir is not None else None,
        out_dir,
        thumb_size,
        progress,
    )
    cards = _Cards(thumbs, crop_rows, dict(zip(table["image"], table["individual_id"])))

    with atomic_path(out_dir / "style.css") as tmp:
        tmp.write_text(_TEMPLATES.get_template("style.css").render(), encoding="utf-8")
    _charts(stats, out_dir)
    _write_pages(out_dir, catalog, stats, crop_table, sel, cards)
    return out_dir / "index.html"
