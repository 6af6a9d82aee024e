"""Capture histories from a hand-made catalog: three whales, four encounters, expected matrices written by hand."""

import re

import pandas as pd
import pytest

from whaleid.errors import UserError
from whaleid.store.catalog import CatalogStore
from whaleid.store.intake import EncounterInfo

WHALES = ["fin_000", "fin_001", "fin_002"]
ENCOUNTERS = [  # date, then (photo number of a whale, whale) confirmed in it
    ("2026-01-10", [(1, "fin_000"), (1, "fin_001")]),
    ("2026-01-25", [(1, "fin_002")]),
    ("2026-03-05", [(2, "fin_000"), (2, "fin_002")]),
    ("2027-07-02", [(2, "fin_001")]),
]


@pytest.fixture(scope="module")
def catalog(synth_csv, model, tmp_path_factory):
    """Each whale imported from one undated photo, then seen in dated encounters; one photo waits, one is unsure."""
    root = tmp_path_factory.mktemp("population")
    table = pd.read_csv(synth_csv)
    photos = {w: table[table["individual_id"] == w]["image"].tolist() for w in WHALES + ["fin_003"]}
    images = synth_csv.parent / "images"
    table[table["image"].isin([photos[w][0] for w in WHALES])].to_csv(root / "first.csv", index=False)
    store = CatalogStore.create(root / "catalog", model.parent)
    store.intake.import_catalog(root / "first.csv", images)
    for date, seen in ENCOUNTERS:
        added = store.intake.add([images / photos[w][n] for n, w in seen], EncounterInfo(date=date, place="bay"))
        for photo, (_, whale) in zip(added.added, seen, strict=True):
            store.review.decide(photo, confirm=whale)
    waiting = store.intake.add([images / photos["fin_003"][0], images / photos["fin_003"][1]], EncounterInfo())
    store.review.decide(waiting.added[1], unsure=True)
    return store


def matrix(histories) -> list[list[int]]:
    return histories.matrix.loc[WHALES].to_numpy().tolist()


@pytest.mark.parametrize(
    "occasion, start, columns, rows",
    [
        ("month", 1, ["2026-01", "2026-03", "2027-07"], [[1, 1, 0], [1, 0, 1], [1, 1, 0]]),
        (
            "day",
            1,
            ["2026-01-10", "2026-01-25", "2026-03-05", "2027-07-02"],
            [[1, 0, 1, 0], [1, 0, 0, 1], [0, 1, 1, 0]],
        ),
        ("season", 7, ["2025", "2027"], [[1, 0], [1, 1], [1, 0]]),  # July to June: Jan-Mar 2026 is season 2025
        ("season", 1, ["2026", "2027"], [[1, 0], [1, 1], [1, 0]]),
        ("encounter", 1, None, [[1, 0, 1, 0], [1, 0, 0, 1], [0, 1, 1, 0]]),  # encounters in date order
    ],
)
def test_capture_histories_by_occasion(catalog, occasion, start, columns, rows):
    histories = catalog.exports.capture_histories(occasion, start)
    assert list(histories.matrix.index) == WHALES  # the unconfirmed fin_003 is not in it
    if columns is not None:
        assert list(histories.matrix.columns) == columns
    assert matrix(histories) == rows
    assert (histories.undated, histories.waiting) == (3, 2)  # the imported photos; one pending, one unsure


def test_the_mark_inp_file_has_one_history_line_per_individual(catalog, tmp_path):
    out = tmp_path / "whales.inp"
    catalog.exports.export_histories(out, "month")
    lines = out.read_text().splitlines()
    assert lines[0].startswith("/* whaleid capture histories by month: 3 individuals, 3 occasions")
    assert "2 photos still waiting for review" in lines[0] and lines[0].endswith("*/")
    assert lines[1:] == ["/* fin_000 */ 110 1;", "/* fin_001 */ 101 1;", "/* fin_002 */ 110 1;"]
    mark = re.compile(r"^(/\*.*?\*/ )?[01]+ \d+;$")  # MARK: a history string, a count, a semicolon
    assert all(mark.match(line) for line in lines[1:])


def test_the_csv_matrix_and_where_it_may_be_written(catalog, tmp_path):
    out = tmp_path / "histories.csv"
    catalog.exports.export_histories(out, "season", 7)
    assert out.read_text().splitlines() == ["individual,2025,2027", "fin_000,1,0", "fin_001,1,1", "fin_002,1,0"]
    catalog.exports.export_histories(out, "day")  # an earlier export of its kind is replaced
    assert out.read_text().splitlines()[0] == "individual,2026-01-10,2026-01-25,2026-03-05,2027-07-02"
    mine = tmp_path / "notes.csv"
    mine.write_text("my,own\n")
    with pytest.raises(UserError, match="not a capture-history export"):
        catalog.exports.export_histories(mine, "day")
    with pytest.raises(UserError, match="in the catalog"):
        catalog.exports.export_histories(catalog.dir / "h.csv", "day")
    with pytest.raises(UserError, match="unknown occasion 'week'"):
        catalog.exports.capture_histories("week")


def test_the_histories_command(catalog, tmp_path):
    from typer.testing import CliRunner

    from whaleid.__main__ import app

    out = tmp_path / "whales.inp"
    args = ["catalog", "histories", str(catalog.dir), "--out", str(out), "--occasion", "encounter"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert "3 individuals x 4 occasions (encounter)" in said and "2 photos still waiting" in said
    assert "3 confirmed photos left out (no encounter)" in said
    assert out.read_text().splitlines()[1:] == [
        "/* fin_000 */ 1010 1;",
        "/* fin_001 */ 1001 1;",
        "/* fin_002 */ 0110 1;",
    ]
    refused = CliRunner().invoke(app, [*args[:-1], "fortnight"])
    assert refused.exit_code != 0 and "unknown occasion 'fortnight'" in " ".join(refused.output.split())


def test_the_dashboard_shows_individuals_seen_per_month(catalog):
    from webapp import PASSWORD, client
    from whaleid.web.config import WebConfig
    from whaleid.web.users import add_user

    add_user(catalog, "viewer", PASSWORD, "viewer")
    page = client(catalog, "viewer", WebConfig(start_worker=False)).get("/")
    assert page.status_code == 200
    bars = re.findall(r'<rect class="bar"[^>]*><title>([^<]*)</title>', page.text)
    assert bars == ["2026-01: 3", "2026-03: 2", "2027-07: 1"]  # fin_002 seen on the 25th counts for January


def test_an_individuals_page_plots_its_sightings_by_date_and_place(catalog):
    from webapp import PASSWORD, client
    from whaleid.web.config import WebConfig
    from whaleid.web.users import add_user

    add_user(catalog, "looker", PASSWORD, "viewer")
    c = client(catalog, None, WebConfig(start_worker=False))
    c.post("/api/login", json={"name": "looker", "password": PASSWORD}).raise_for_status()
    page = c.get("/individuals/fin_000")
    dots = re.findall(r'<circle class="dot" cx="([\d.]+)"[^>]*><title>([^<]*)</title>', page.text)
    # the imported photo has no date; the two encounters sit at either end of the time axis
    assert dots == [("0.0", "2026-01-10 bay"), ("560.0", "2026-03-05 bay")]
