"""`whaleid catalog ...`: the living catalog from the command line (the web app calls the same library)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from whaleid.app.command import app, command, console

catalog_app = typer.Typer(no_args_is_help=True, help="A living catalog: add photos, review matches, grow the gallery.")
app.add_typer(catalog_app, name="catalog")
ReviewerOpt = typer.Option("cli", "--reviewer", help="Who decides (recorded with every decision).")


def _store(directory: Path):
    from whaleid.store.catalog import CatalogStore

    return CatalogStore(directory)


@command("init", group=catalog_app)
def init(
    directory: Path = typer.Argument(..., help="The new catalog folder."),
    model: Path = typer.Option(..., help="A model.json, a run folder of fold*/ models, or a saved Identifier folder."),
    db: Optional[str] = typer.Option(
        None, help="A database URL (postgresql+psycopg://...); default: SQLite in the folder."
    ),
):
    """A new catalog with its database and its first model."""
    from whaleid.store.catalog import CatalogStore

    CatalogStore.create(directory, model, db)
    console.print(f"catalog -> {directory}")


@command("import", group=catalog_app)
def import_(
    directory: Path,
    csv: Path = typer.Argument(..., help="A labelled catalog CSV (image, species, individual_id)."),
    images: Optional[Path] = typer.Option(None, help="Photo folder (default: images/ beside the CSV)."),
):
    """Bring an existing labelled catalog in: every photo copied, embedded and confirmed as labelled."""
    result = _store(directory).intake.import_catalog(csv, images)
    console.print(
        f"{len(result.added)} photos imported, {len(result.duplicates)} already there, "
        f"{len(result.rejected)} unreadable"
    )


@command("add", group=catalog_app)
def add(
    directory: Path,
    photos: list[Path] = typer.Argument(..., help="Photo files of a survey."),
    date: Optional[str] = typer.Option(
        None, "--date", help="Encounter date, ISO 8601 (2026-07-01 or 2026-07-01T14:30)."
    ),
    place: Optional[str] = typer.Option(None, "--place"),
    latitude: Optional[float] = typer.Option(None, "--lat", help="Decimal degrees, -90 to 90."),
    longitude: Optional[float] = typer.Option(None, "--lon", help="Decimal degrees, -180 to 180."),
    observer: Optional[str] = typer.Option(None, "--observer"),
    notes: Optional[str] = typer.Option(None, "--notes"),
):
    """Copy new photos in, embed them and match them against the catalog and each other; they await review."""
    from whaleid.store.intake import EncounterInfo

    encounter = EncounterInfo(date, place, latitude, longitude, observer, notes)
    result = _store(directory).intake.add(photos, encounter)
    console.print(f"{len(result.added)} photos queued for review, {len(result.duplicates)} already in the catalog")
    for name, reason in result.rejected:
        console.print(f"[yellow]skipped {name}: {reason}[/yellow]")


@command("queue", group=catalog_app)
def queue(directory: Path, limit: int = typer.Option(20, min=1), as_json: bool = typer.Option(False, "--json")):
    """Photos awaiting a decision, with the individuals the model proposed."""
    items = _store(directory).review.queue(limit)
    if as_json:
        console.print_json(json.dumps([vars(i) for i in items]))
        return
    for item in items:
        proposed = ", ".join(f"{c['individual']} {c['score']:.3f}" for c in item.candidates) or "(empty gallery)"
        console.print(f"{item.photo:>6}  {item.name}  ->  {proposed}")
    console.print(f"{len(items)} shown")


@command("decide", group=catalog_app)
def decide(
    directory: Path,
    photo: str = typer.Argument(..., help="Photo number (from `queue`) or 8+ characters of its sha256."),
    confirm: Optional[str] = typer.Option(None, "--confirm", help="It is this individual (catalog id)."),
    new: bool = typer.Option(False, "--new", help="It is an individual not in the catalog."),
    unsure: bool = typer.Option(False, "--unsure", help="Can't tell."),
    name: Optional[str] = typer.Option(None, "--name", help="With --new: a name for the animal."),
    reviewer: str = ReviewerOpt,
):
    """Decide one photo: a known individual, a new one, or can't tell."""
    event = _store(directory).review.decide(
        photo, confirm=confirm, new=new, unsure=unsure, name=name, reviewer=reviewer
    )
    console.print(f"decision {event.id}: {event.kind}")


@command("merge", group=catalog_app)
def merge(directory: Path, source: str, target: str, reviewer: str = ReviewerOpt):
    """Individual SOURCE is TARGET: SOURCE's photos join TARGET."""
    event = _store(directory).review.merge(source, target, reviewer)
    console.print(f"decision {event.id}: {source} merged into {target}")


@command("undo", group=catalog_app)
def undo(directory: Path, event: int, reviewer: str = ReviewerOpt):
    """Cancel an earlier decision (recorded as an event of its own)."""
    done = _store(directory).review.undo(event, reviewer)
    console.print(f"decision {done.id}: undid {event}")


@command("reindex", group=catalog_app)
def reindex(
    directory: Path,
    model: Optional[Path] = typer.Option(None, help="A new model to embed with."),
    version: Optional[int] = typer.Option(None, help="Go back to an earlier model of this catalog (v<N>).", min=1),
):
    """Embed every photo again (with a new model, or an earlier one, when given); decisions are kept."""
    console.print(f"{_store(directory).gallery.reindex(model, version=version)} photos embedded")


@command("export", group=catalog_app)
def export(
    directory: Path,
    out: Path = typer.Option(..., help="The CSV to write (outside the catalog folder)."),
    format_: str = typer.Option("happywhale", "--format", help="happywhale, decisions or dwc (Darwin Core)."),
    force: bool = typer.Option(
        False, "--force", help="Replace --out even when it is not an earlier export of this format."
    ),
):
    """The grown catalog as a Happywhale CSV, the decision log, or Darwin Core occurrences."""
    rows = _store(directory).exports.export(format_, out, force=force)
    console.print(f"{rows} rows -> {out}" + (f" (photos in {directory / 'photos'})" if format_ == "happywhale" else ""))


@command("histories", group=catalog_app)
def histories(
    directory: Path,
    out: Path = typer.Option(
        ..., help="A .csv (individuals x occasions, 0/1) or a MARK .inp file, outside the catalog."
    ),
    occasion: str = typer.Option("month", help="The sampling occasion: day, month, season or encounter."),
    season_start: int = typer.Option(1, help="With --occasion season: the month a season starts (7: July-June)."),
    force: bool = typer.Option(False, "--force", help="Replace --out even when it is not an earlier export of it."),
):
    """Capture histories for mark-recapture: one row per individual, one column per occasion (confirmed photos)."""
    made = _store(directory).exports.export_histories(out, occasion, season_start, force=force)
    console.print(
        f"{len(made.matrix)} individuals x {made.matrix.shape[1]} occasions ({occasion}) -> {out}; "
        f"{made.waiting} photos still waiting for review, {made.left_out()}"
    )


@command("stats", group=catalog_app)
def stats(directory: Path):
    """Photos, individuals, pending, decisions per reviewer, new individuals per encounter."""
    console.print_json(json.dumps(_store(directory).exports.stats()))
