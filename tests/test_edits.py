"""Naming an individual and correcting an encounter: events with the values before and after, audited and
undone like decisions (an undo never drops a later change), from the store, the pages, the API and the CLI;
captions date photos by when the animal was seen; catalogs of schema 0003 gain the columns as they open."""

import html
import json
import re
from datetime import date

import pandas as pd
import pytest
from sqlalchemy import func, inspect, select
from typer.testing import CliRunner

from webapp import build_catalog, client
from whaleid.__main__ import app as cli
from whaleid.errors import UserError
from whaleid.store import browse
from whaleid.store.catalog import CatalogStore
from whaleid.store.errors import ConflictError, NotFound
from whaleid.store.schema import Decision, Encounter
from whaleid.web.config import WebConfig

NO_WORKER = WebConfig(start_worker=False)


@pytest.fixture(scope="module")
def store(tmp_path_factory, synth_csv, model):
    """One catalog for the module (5 known fins, one pending encounter #1 of 2026-07-01 in "test bay"):
    each test names its own individuals and edits its own encounters."""
    return build_catalog(tmp_path_factory.mktemp("edits"), synth_csv, model)


@pytest.fixture(scope="module")
def individuals(store) -> list[str]:
    return [i["individual"] for i in browse.individuals(store)]


def new_encounter(store, **fields) -> int:
    with store.session() as session, session.begin():
        row = Encounter(**fields, created_at=pd.Timestamp("2026-01-01").to_pydatetime())
        session.add(row)
    return row.id


def details(store, encounter_id: int) -> dict:
    page = browse.encounter_page(store, encounter_id)
    return {key: page[key] for key in ("date", "place", "latitude", "longitude", "observer", "notes")}


def events(store) -> int:
    with store.reader() as session:
        return session.scalar(select(func.count()).select_from(Decision))


def form_client(store, role: str):
    """A client that posts forms as a browser does: the CSRF token in the form, not a header."""
    c = client(store, role, NO_WORKER)
    return c, c.headers.pop("X-CSRF-Token")


def shown(page) -> str:
    return html.unescape(page.text)


# --------------------------------------------------------------------------- store


def test_a_rename_is_an_event_and_its_undo_restores_the_name_unless_renamed_since(store, individuals):
    fin = individuals[0]
    first = store.edits.rename(fin, "  Nicky ", reviewer="ana")  # (trimmed)
    assert (first.kind, first.details) == ("rename", {"name": {"before": None, "after": "Nicky"}})
    assert browse.individual_page(store, fin)["name"] == "Nicky"
    with pytest.raises(UserError, match=f"^nothing to change: {fin} is already named 'Nicky'$"):
        store.edits.rename(fin, "Nicky")
    second = store.edits.rename(fin, "Nick", reviewer="bo")
    assert second.details == {"name": {"before": "Nicky", "after": "Nick"}}

    before = events(store)
    with pytest.raises(
        ConflictError,
        match=f"^decision {first.id}: the name of {fin} changed again since: undo that later change first$",
    ):
        store.review.undo(first.id)  # its "after" (Nicky) is no longer the name: Nick would be lost
    assert events(store) == before and browse.individual_page(store, fin)["name"] == "Nick"
    undo_second = store.review.undo(second.id, reviewer="ana")
    assert browse.individual_page(store, fin)["name"] == "Nicky"
    store.review.undo(first.id, reviewer="ana")  # now it is as it left it
    assert browse.individual_page(store, fin)["name"] is None

    history = browse.individual_page(store, fin)["history"]
    assert [(h["id"], h["undoes"], h["undone"], h["reviewer"], h["changes"]) for h in history] == [
        (undo_second.id + 1, first.id, False, "ana", "name: Nicky → –"),
        (undo_second.id, second.id, False, "ana", "name: Nick → Nicky"),
        (second.id, None, True, "bo", "name: Nicky → Nick"),
        (first.id, None, True, "ana", "name: – → Nicky"),
    ]
    latest = browse.latest_decisions(store, 4)
    assert [(d["kind"], d["individual"], d["undoes"], d["changes"]) for d in latest] == [
        ("undo", None, first.id, ""),
        ("undo", None, second.id, ""),
        ("rename", fin, None, "name: Nicky → Nick"),
        ("rename", fin, None, "name: – → Nicky"),
    ]


def test_a_rename_follows_merges_and_refuses_what_is_no_name(store, individuals):
    alias, into = individuals[1], individuals[2]
    store.review.merge(alias, into)
    event = store.edits.rename(alias, "Stripe")
    assert browse.catalog_id(store, event.individual_id) == into
    assert browse.individual_page(store, into)["name"] == "Stripe"
    before = events(store)
    for name, says in (
        ("x" * 201, "^a name is at most 200 characters, not 201: give a shorter one$"),
        ("Stripe", f"^nothing to change: {into} is already named 'Stripe'$"),
    ):
        with pytest.raises(UserError, match=says):
            store.edits.rename(into, name)
    with pytest.raises(NotFound, match="^no individual 'NOPE' in the catalog$"):
        store.edits.rename("NOPE", "x")
    assert events(store) == before
    assert store.edits.rename(into, "x" * 200).details["name"]["after"] == "x" * 200
    assert store.edits.rename(into, "   ").details == {"name": {"before": "x" * 200, "after": None}}  # cleared


def test_an_edit_records_only_the_fields_that_changed_and_its_undo_restores_them(store):
    encounter = new_encounter(store, date="2026-07-01", place="test bay", latitude=41.5, longitude=-70.1)
    first = store.edits.edit_encounter(
        encounter, "ana", date="2026-07-01", place="Cape Cod Bay", latitude=41.5, observer=" ana "
    )
    assert first.kind == "edit" and first.encounter_id == encounter
    assert first.details == {
        "place": {"before": "test bay", "after": "Cape Cod Bay"},
        "observer": {"before": None, "after": "ana"},
    }
    second = store.edits.edit_encounter(encounter, "bo", latitude=42, notes="calf alongside", place="")
    assert second.details == {
        "place": {"before": "Cape Cod Bay", "after": None},
        "latitude": {"before": 41.5, "after": 42},
        "notes": {"before": None, "after": "calf alongside"},
    }
    assert details(store, encounter) == {
        "date": "2026-07-01",
        "place": None,
        "latitude": 42.0,
        "longitude": -70.1,
        "observer": "ana",
        "notes": "calf alongside",
    }
    newest = browse.latest_decisions(store, 1)[0]
    assert (newest["kind"], newest["encounter"], newest["photo"], newest["reviewer"]) == ("edit", encounter, None, "bo")
    assert newest["changes"] == "place: Cape Cod Bay → –; latitude: 41.5 → 42; notes: – → calf alongside"
    logged = store.exports.table("decisions").set_index("event").loc[second.id]  # the exported audit trail, whole
    assert (logged["kind"], logged["encounter"], logged["reviewer"]) == ("edit", encounter, "bo")
    assert json.loads(logged["changes"]) == second.details

    with pytest.raises(
        ConflictError, match=f"decision {first.id}: the place of encounter {encounter} changed again since"
    ):
        store.review.undo(first.id)  # the second edit cleared the place the first one set
    store.review.undo(second.id)
    assert details(store, encounter)["place"] == "Cape Cod Bay" and details(store, encounter)["notes"] is None
    store.review.undo(first.id)
    assert details(store, encounter) == {
        "date": "2026-07-01",
        "place": "test bay",
        "latitude": 41.5,
        "longitude": -70.1,
        "observer": None,
        "notes": None,
    }
    with pytest.raises(UserError, match=f"^decision {first.id} was already undone$"):
        store.review.undo(first.id)
    history = browse.encounter_page(store, encounter)["history"]
    assert [h["changes"] for h in history] == [
        "place: Cape Cod Bay → test bay; observer: ana → –",
        "place: – → Cape Cod Bay; latitude: 42 → 41.5; notes: calf alongside → –",
        "place: Cape Cod Bay → –; latitude: 41.5 → 42; notes: – → calf alongside",
        "place: test bay → Cape Cod Bay; observer: – → ana",
    ]


@pytest.mark.parametrize(
    "fields, says",
    [
        ({"date": "2026-13-45"}, "date '2026-13-45' is not an ISO 8601 date"),
        ({"date": "yesterday"}, "date 'yesterday' is not an ISO 8601 date"),
        ({"latitude": 91.0}, "latitude 91.0 is not a number from -90 to 90"),
        ({"longitude": float("nan")}, "longitude nan is not a number from -180 to 180"),
        ({"latitude": "north"}, "latitude 'north' is not a number from -90 to 90"),
        ({"place": "p" * 301}, "place is at most 300 characters, not 301"),
        ({"depth": 12}, "an encounter has no depth: change date, place, latitude, longitude, observer, notes"),
        ({"place": "test bay", "date": "2026-07-01"}, "nothing to change: encounter {id} already has these details"),
        ({}, "nothing to change: encounter {id} already has these details"),
    ],
)
def test_what_an_encounter_cannot_hold_is_refused_in_one_line_and_nothing_is_recorded(store, fields, says):
    encounter = new_encounter(store, date="2026-07-01", place="test bay")
    before = events(store)
    with pytest.raises(UserError) as refused:
        store.edits.edit_encounter(encounter, "ana", **fields)
    assert str(refused.value).startswith(says.format(id=encounter)) and "\n" not in str(refused.value)
    assert events(store) == before and details(store, encounter)["place"] == "test bay"


def test_editing_an_encounter_that_is_not_there_is_not_found(store):
    with pytest.raises(NotFound, match="^no encounter 9999 in the catalog$"):
        store.edits.edit_encounter(9999, "ana", place="x")


# --------------------------------------------------------------------------- web


def test_the_name_form_and_api_history_and_the_dashboards_undo(store, individuals):
    fin = individuals[3]
    c, token = form_client(store, "reviewer")
    viewer, viewer_token = form_client(store, "viewer")
    page = f"/individuals/{fin}"
    assert 'id="name-form"' in c.get(page).text and 'id="name-form"' not in viewer.get(page).text
    assert viewer.post(f"{page}/name", data={"name": "Moby", "csrf": viewer_token}).status_code == 403

    sent = c.post(f"{page}/name", data={"name": "Moby", "csrf": token}, follow_redirects=False)
    assert sent.status_code == 303 and sent.headers["location"] == f"{page}?note=named"
    shown_page = shown(c.get(sent.headers["location"]))
    assert f"<h1>{fin} “Moby”</h1>" in shown_page and 'value="Moby"' in shown_page and "Name saved" in shown_page
    assert re.search(r"<td>\d+</td><td>name: – → Moby</td><td>reviewer</td>", shown_page)
    refused = c.post(f"{page}/name", data={"name": "m" * 201, "csrf": token}, follow_redirects=False)
    assert refused.headers["location"] == f"{page}?error=name-refused"
    assert browse.individual_page(store, fin)["name"] == "Moby"

    api = client(store, "reviewer", NO_WORKER)
    renamed = api.patch(f"/api/individuals/{fin}", json={"name": "Moby Dick"})
    assert renamed.status_code == 200
    assert renamed.json() == {"decision": renamed.json()["decision"], "individual": fin, "name": "Moby Dick"}
    again = api.patch(f"/api/individuals/{fin}", json={"name": "Moby Dick"})
    assert again.status_code == 400 and again.json() == {
        "detail": f"nothing to change: {fin} is already named 'Moby Dick'"
    }
    assert client(store, "viewer", NO_WORKER).patch(f"/api/individuals/{fin}", json={"name": "x"}).status_code == 403

    dashboard = shown(c.get("/"))
    decision = renamed.json()["decision"]
    assert "rename: name: Moby → Moby Dick" in dashboard
    assert f'action="/decisions/{decision}/undo"' in dashboard and 'class="undo-rename"' in dashboard
    assert f'action="/decisions/{decision}/undo"' not in viewer.get("/").text
    done = c.post(f"/decisions/{decision}/undo", data={"csrf": token}, follow_redirects=False)
    assert done.headers["location"] == "/?note=undone"
    assert browse.individual_page(store, fin)["name"] == "Moby"


def test_the_encounter_form_api_captions_and_the_refused_undo(store):
    c, token = form_client(store, "reviewer")
    today = date.today().isoformat()  # when the photos were imported: never a caption
    page = c.get("/encounters/1").text
    captions = re.findall(r"<figcaption>#(\d+) · ([^·<]+) · ", page)
    assert captions and {seen.strip() for _, seen in captions} == {"2026-07-01"} and today not in page
    assert 'value="2026-07-01"' in page and 'value="test bay"' in page and 'id="edit-encounter"' in page
    assert 'id="edit-encounter"' not in form_client(store, "viewer")[0].get("/encounters/1").text

    form = {"date": "2026-07-02", "place": "test bay", "latitude": "41.5", "longitude": "", "csrf": token}
    sent = c.post("/encounters/1/edit", data={**form, "observer": "", "notes": ""}, follow_redirects=False)
    assert sent.headers["location"] == "/encounters/1?note=edited"
    page = shown(c.get(sent.headers["location"]))
    assert {seen.strip() for _, seen in re.findall(r"<figcaption>#(\d+) · ([^·<]+) · ", page)} == {"2026-07-02"}
    assert re.search(r"<td>\d+</td><td>date: 2026-07-01 → 2026-07-02; latitude: – → 41.5</td><td>reviewer</td>", page)
    assert 'value="41.5"' in page and "Encounter saved" in page
    pending = browse.first_pending(store, 1)
    review = c.get(f"/review/{pending}").text.split("Look-alikes in the same upload")[1].split("</section>")[0]
    batch = re.findall(r"<figcaption>#\d+ · ([^·<]+) · ", review)
    assert batch and {seen.strip() for seen in batch} == {"2026-07-02"}

    bad = c.post("/encounters/1/edit", data={**form, "latitude": "north"}, follow_redirects=False)
    assert bad.headers["location"] == "/encounters/1?error=edit-refused"
    assert details(store, 1)["latitude"] == 41.5 and details(store, 1)["date"] == "2026-07-02"

    api = client(store, "reviewer", NO_WORKER)
    moved = api.patch("/api/encounters/1", json={"place": "Cape Cod Bay"})
    assert moved.json() == {
        "decision": moved.json()["decision"],
        "encounter": 1,
        "changed": {"place": {"before": "test bay", "after": "Cape Cod Bay"}},
    }
    wrong = api.patch("/api/encounters/1", json={"date": "yesterday"})
    assert wrong.status_code == 400 and wrong.json()["detail"].startswith("date 'yesterday' is not an ISO 8601")
    later = api.patch("/api/encounters/1", json={"place": "Stellwagen Bank", "notes": None}).json()["decision"]

    refused = c.post(f"/decisions/{moved.json()['decision']}/undo", data={"csrf": token}, follow_redirects=False)
    assert refused.headers["location"] == "/?error=undo-conflict"
    assert "changed again since" in shown(c.get(refused.headers["location"]))
    assert api.post(f"/api/decisions/{moved.json()['decision']}/undo").status_code == 409
    assert api.post(f"/api/decisions/{later}/undo").status_code == 200
    assert api.post(f"/api/decisions/{moved.json()['decision']}/undo").status_code == 200
    assert details(store, 1) == {
        "date": "2026-07-02",
        "place": "test bay",
        "latitude": 41.5,
        "longitude": None,
        "observer": None,
        "notes": None,
    }


# --------------------------------------------------------------------------- CLI and migration


def test_the_cli_names_edits_and_undoes(store, individuals):
    fin, where = individuals[4], str(store.dir)
    encounter = new_encounter(store, date="2026-08-03", place="Race Point")
    runner = CliRunner()
    named = runner.invoke(cli, ["catalog", "name", where, fin, "Flipper", "--reviewer", "ana"])
    assert named.exit_code == 0, named.output
    assert f"{fin} named 'Flipper' (was None)" in " ".join(named.output.split())
    edited = runner.invoke(
        cli, ["catalog", "edit-encounter", where, str(encounter), "--place", "Stellwagen", "--lat", "42.25"]
    )
    assert edited.exit_code == 0, edited.output
    assert "place 'Race Point' -> 'Stellwagen', latitude None -> 42.25" in " ".join(edited.output.split())
    assert details(store, encounter)["place"] == "Stellwagen" and details(store, encounter)["latitude"] == 42.25
    newest = browse.latest_decisions(store, 2)
    assert [(d["kind"], d["reviewer"]) for d in newest] == [("edit", "cli"), ("rename", "ana")]

    bad = runner.invoke(cli, ["catalog", "edit-encounter", where, str(encounter), "--date", "2026-02-30"])
    assert bad.exit_code == 2 and "error: date '2026-02-30' is not an ISO 8601 date" in " ".join(bad.output.split())
    nothing = runner.invoke(cli, ["catalog", "edit-encounter", where, str(encounter)])
    assert nothing.exit_code == 2 and "give at least one of --date" in nothing.output
    undone = runner.invoke(cli, ["catalog", "undo", where, str(newest[0]["id"])])
    assert undone.exit_code == 0, undone.output
    assert details(store, encounter)["place"] == "Race Point" and details(store, encounter)["latitude"] is None


def test_a_catalog_of_schema_0003_gains_the_columns_as_it_opens(tmp_path, synth_csv, model):
    from alembic import command

    from whaleid.store.db import alembic_config, open_engine

    table = pd.read_csv(synth_csv)
    table.head(3).to_csv(tmp_path / "three.csv", index=False)
    store = CatalogStore.create(tmp_path / "catalog", model.parent)
    store.intake.import_catalog(tmp_path / "three.csv", synth_csv.parent / "images")
    store.engine.dispose()

    def columns(engine) -> set[str]:
        return {c["name"] for c in inspect(engine).get_columns("decisions")}

    engine = open_engine(f"sqlite:///{tmp_path}/catalog/catalog.db")
    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "0003")
    assert {"details", "encounter_id"}.isdisjoint(columns(engine))  # what catalogs of schema 0003 hold
    engine.dispose()

    reopened = CatalogStore(tmp_path / "catalog")  # migrated as it opens
    assert {"details", "encounter_id"} <= columns(reopened.engine)
    assert any(fk["referred_table"] == "encounters" for fk in inspect(reopened.engine).get_foreign_keys("decisions"))
    with reopened.reader() as session:
        old = session.scalars(select(Decision)).all()
    assert len(old) == 3 and all(d.details is None and d.encounter_id is None for d in old)
    fin = table["individual_id"].iloc[0]
    renamed = reopened.edits.rename(fin, "Old Timer")
    assert renamed.details == {"name": {"before": None, "after": "Old Timer"}}
    encounter = new_encounter(reopened, place="here")
    reopened.review.undo(reopened.edits.edit_encounter(encounter, "ana", place="there").id)
    assert details(reopened, encounter)["place"] == "here"
    reopened.engine.dispose()

    engine = open_engine(f"sqlite:///{tmp_path}/catalog/catalog.db")  # and back, with edits in it
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "0003")
    assert {"details", "encounter_id"}.isdisjoint(columns(engine))
    engine.dispose()
    again = CatalogStore(tmp_path / "catalog")
    assert again.exports.stats()["decisions_per_reviewer"] == {"import": 3, "reviewer": 2, "ana": 1}
    with pytest.raises(UserError, match=f"^decision {renamed.id} does not say what it changed: change it back"):
        again.review.undo(renamed.id)  # its details went with schema 0003
