"""`whaleid catalog ...`: the living catalog from the command line (the web app calls the same library)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from whaleid.app.command import app, command, console
from whaleid.errors import UserError

catalog_app = typer.Typer(no_args_is_help=True, help="A living catalog: add photos, review matches, grow the gallery.")
app.add_typer(catalog_app, name="catalog")
ReviewerOpt = typer.Option("cli", "--reviewer", help="Who decides (recorded with every decision).")
# an encounter's details, as `add` records them and `edit-encounter` corrects them
DateOpt = typer.Option(None, "--date", help="Encounter date, ISO 8601 (2026-07-01 or 2026-07-01T14:30).")
PlaceOpt = typer.Option(None, "--place")
LatitudeOpt = typer.Option(None, "--latitude", "--lat", help="Decimal degrees, -90 to 90.")
LongitudeOpt = typer.Option(None, "--longitude", "--lon", help="Decimal degrees, -180 to 180.")
ObserverOpt = typer.Option(None, "--observer")
NotesOpt = typer.Option(None, "--notes")


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
    date: Optional[str] = DateOpt,
    place: Optional[str] = PlaceOpt,
    latitude: Optional[float] = LatitudeOpt,
    longitude: Optional[float] = LongitudeOpt,
    observer: Optional[str] = ObserverOpt,
    notes: Optional[str] = NotesOpt,
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


@command("name", group=catalog_app)
def name(
    directory: Path,
    catalog_id: str = typer.Argument(..., help="The individual (an alias: the one it was merged into)."),
    new_name: str = typer.Argument(..., metavar="NAME", help='Its name; "" clears it.'),
    reviewer: str = ReviewerOpt,
):
    """Name individual CATALOG_ID ("" clears its name); recorded as an event, undone with `undo`."""
    event = _store(directory).edits.rename(catalog_id, new_name, reviewer)
    change = event.details["name"]
    console.print(f"decision {event.id}: {catalog_id} named {change['after']!r} (was {change['before']!r})")


@command("edit-encounter", group=catalog_app)
def edit_encounter(
    directory: Path,
    encounter: int = typer.Argument(..., help="The encounter's number (the web app's encounter pages show it)."),
    date: Optional[str] = DateOpt,
    place: Optional[str] = PlaceOpt,
    latitude: Optional[float] = LatitudeOpt,
    longitude: Optional[float] = LongitudeOpt,
    observer: Optional[str] = ObserverOpt,
    notes: Optional[str] = NotesOpt,
    reviewer: str = ReviewerOpt,
):
    """Correct an encounter's details: the options given change ("" clears a text), the rest stay; recorded
    with the values before, undone with `undo`."""
    given = {"date": date, "place": place, "latitude": latitude, "longitude": longitude}
    given |= {"observer": observer, "notes": notes}
    fields = {key: value for key, value in given.items() if value is not None}
    if not fields:
        raise UserError("give at least one of --date, --place, --latitude, --longitude, --observer, --notes")
    event = _store(directory).edits.edit_encounter(encounter, reviewer, **fields)
    changes = ", ".join(f"{key} {c['before']!r} -> {c['after']!r}" for key, c in event.details.items())
    console.print(f"decision {event.id}: encounter {encounter}: {changes}")


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


@command("retrain", group=catalog_app)
def retrain(
    directory: Path,
    recipe: Optional[Path] = typer.Option(
        None, help="A recipe YAML whose train section to use (default: how the active model was trained)."
    ),
    epochs: Optional[int] = typer.Option(None, min=1, help="Train this many epochs instead of the recipe's."),
    holdout: float = typer.Option(0.3, min=0.01, max=0.99, help="Share of the individuals held out to judge by."),
    seed: int = typer.Option(0, min=0, help="Which individuals are held out."),
):
    """Train the next model on the confirmed photos, judge it against the active one on held-out individuals,
    and register it with its report (not active: `reindex --version N` makes it so)."""
    from whaleid.settings import load_yaml
    from whaleid.train.retrain import recipe_trainer

    store = _store(directory)
    settings = load_yaml(recipe).get("train", {}) if recipe else store.retrain.recipe()
    trainer = recipe_trainer(settings, epochs)
    report = store.retrain.run(trainer, holdout, seed, progress=_said)
    console.print(retrain_table(report))
    verdict = "better" if report["better"] else "[yellow]not better[/yellow]"
    console.print(
        f"model v{report['version']} registered, {verdict} than v{report['from_version']} on MAP@5; "
        f"use it with `whaleid catalog reindex {directory} --version {report['version']}`"
    )


def _said(stage: str, done: int, total: int) -> None:
    if stage == "training":
        console.print(f"training: {done}/{total} epochs")
    elif done == 0:
        console.print(f"{stage}...")


def retrain_table(report: dict):
    """The report's scores, one row per model, as the CLI prints them."""
    from rich.table import Table

    from whaleid.search.metrics import cell

    held = report["held_out"]
    table = Table(
        title=f"held-out individuals: {held['test']['individuals']} scored ({held['test']['photos']} photos), "
        f"{held['calibration']['individuals']} calibrating"
    )
    columns = {"map5": "MAP@5", "top1_known": "top-1", "top5_known": "top-5", "new_precision": "new P"}
    columns |= {"new_recall": "new R", "threshold": "threshold"}
    table.add_column("model", no_wrap=True)
    for name in columns.values():
        table.add_column(name, justify="right")
    names = {"current": f"v{report['from_version']} (active)", "new": f"v{report['version']} (new)"}
    for key, scores in report["scores"].items():
        table.add_row(names.get(key, "ImageNet only"), *(cell(scores[c]) for c in columns))
    return table


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
