"""The living catalog on SQLite and on a real PostgreSQL: migrations, the review loop, conflicts, exports, crashes."""

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading

import pandas as pd
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from PIL import Image
from sqlalchemy import func, inspect, select
from typer.testing import CliRunner

from processes import kill_when
from whaleid.__main__ import app
from whaleid.data.catalog import read_catalog
from whaleid.errors import UserError
from whaleid.store import db
from whaleid.store.catalog import CatalogStore
from whaleid.store.db import migrate, open_engine
from whaleid.store.errors import ConflictError
from whaleid.store.exif import photo_exif
from whaleid.store.intake import EncounterInfo
from whaleid.store.schema import Base, Decision, Photo

FIRST = 5  # individuals imported; the rest arrive as new animals


@pytest.fixture
def photos(synth_csv, tmp_path):
    """The synthetic catalog split: a labelled part to import and the photos of a new season."""
    table = pd.read_csv(synth_csv)
    first = sorted(table["individual_id"].unique())[:FIRST]
    known = table[table["individual_id"].isin(first)]
    known.to_csv(tmp_path / "known.csv", index=False)
    images = synth_csv.parent / "images"
    season = [images / name for name in table[~table["individual_id"].isin(first)]["image"]]
    return {"csv": tmp_path / "known.csv", "images": images, "known": known, "season": season}


def recoded(path, folder, quality=80):
    """The same photo saved again: other bytes (another sha256), nearly the same pixels."""
    folder.mkdir(exist_ok=True)
    target = folder / f"copy_{path.name}"
    Image.open(path).save(target, quality=quality)
    return target


def make_store(tmp_path, model, database_url, photos):
    store = CatalogStore.create(tmp_path / "catalog", model.parent, database_url)
    store.intake.import_catalog(photos["csv"], photos["images"])
    return store


def test_migrations_build_the_schema_from_empty_and_match_the_models(database_url):
    engine = open_engine(database_url)
    migrate(engine)
    assert {"photos", "individuals", "decisions", "embeddings", "match_runs", "users"} <= set(
        inspect(engine).get_table_names()
    )
    with engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
    migrate(engine)  # again: nothing to do


def test_a_season_is_added_matched_and_decided(tmp_path, model, database_url, photos):
    store = make_store(tmp_path, model, database_url, photos)
    known = photos["known"]
    assert store.exports.stats()["confirmed"] == len(known) and store.exports.stats()["individuals"] == FIRST
    first_new = photos["season"][0]
    batch = [first_new, recoded(first_new, tmp_path / "copies"), *photos["season"][1:4]]
    result = store.intake.add(batch, EncounterInfo(date="2026-07-01", place="Bay", observer="ana"))
    assert len(result.added) == 5 and not result.rejected
    queue = store.review.queue()
    assert [q.photo for q in queue] == result.added
    # two photos of one new animal in the same survey find each other
    assert queue[0].batch_matches[0]["photo"] == queue[1].photo
    assert all(c["individual"] in set(known["individual_id"]) | {"new_individual"} for c in queue[0].candidates)

    new = store.review.decide(queue[0].photo, new=True, name="Nick", reviewer="ana")
    assert new.kind == "new"
    with store.session() as session:
        animal = session.get(Photo, queue[0].photo).individual_id
    # a confirmed photo joins the gallery at once: a recoded copy of it now ranks its animal first
    again = store.intake.add([recoded(first_new, tmp_path / "copies2", quality=70)])
    proposed = store.review.queue()[-1]
    assert proposed.photo == again.added[0] and proposed.candidates[0]["individual"].startswith("WID-")
    store.review.decide(queue[1].photo, confirm=proposed.candidates[0]["individual"], reviewer="ben")
    with store.session() as session:
        assert session.get(Photo, queue[1].photo).individual_id == animal
    assert store.exports.stats()["decisions_per_reviewer"] == {"import": len(known), "ana": 1, "ben": 1}
    # the gallery grown in memory by confirmations is the one a fresh process rebuilds from the database
    with store.session() as session:
        grown = store.gallery.identifier(session, store.models.active(session))
    fresh = CatalogStore(store.dir)
    with fresh.session() as session:
        rebuilt = fresh.gallery.identifier(session, fresh.models.active(session))
    assert sorted(grown.gallery_ids) == sorted(rebuilt.gallery_ids) and len(grown) == len(known) + 2
    assert sorted(map(tuple, grown.index.vectors.tolist())) == sorted(map(tuple, rebuilt.index.vectors.tolist()))


def test_decisions_are_events_that_merge_and_undo_derive_from(tmp_path, model, database_url, photos):
    store = make_store(tmp_path, model, database_url, photos)
    added = store.intake.add(photos["season"][:2]).added
    a, b = photos["known"]["individual_id"].unique()[:2]
    confirmed = store.review.decide(added[0], confirm=a)
    with pytest.raises(ConflictError, match="already decided"):
        store.review.decide(added[0], unsure=True)
    with pytest.raises(UserError, match="no individual 'nobody'"):
        store.review.decide(added[1], confirm="nobody")
    with pytest.raises(UserError, match="exactly one of"):
        store.review.decide(added[1], new=True, unsure=True)
    merged = store.review.merge(a, b)
    with pytest.raises(UserError, match="already one individual"):
        store.review.merge(a, b)
    with store.session() as session:
        photo = session.get(Photo, added[0])
        target = photo.individual_id
    store.review.undo(merged.id)
    store.review.undo(confirmed.id)
    with pytest.raises(UserError, match="already undone"):
        store.review.undo(confirmed.id)
    with store.session() as session:
        assert session.get(Photo, added[0]).state == "pending"
        kinds = session.scalars(select(Decision.kind).where(Decision.reviewer != "import").order_by(Decision.id)).all()
    assert kinds == ["confirm", "merge", "undo", "undo"] and target is not None  # nothing deleted, all appended
    assert store.review.queue()[0].photo == added[0]


def test_two_deciders_at_once_one_wins_the_other_gets_a_conflict(tmp_path, model, database_url, photos):
    store = make_store(tmp_path, model, database_url, photos)
    photo = store.intake.add(photos["season"][:1]).added[0]
    others = [CatalogStore(store.dir) for _ in range(2)]
    barrier, outcomes = threading.Barrier(2), []

    def decide(store_, individual):
        barrier.wait()
        try:
            outcomes.append(store_.review.decide(photo, confirm=individual, reviewer=individual).kind)
        except ConflictError as error:
            outcomes.append(str(error))

    ids = photos["known"]["individual_id"].unique()[:2]
    threads = [threading.Thread(target=decide, args=(s, i)) for s, i in zip(others, ids)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(outcomes)[0] == "confirm" and "decided" in sorted(outcomes)[1]
    with store.session() as session:
        assert session.scalar(select(func.count()).where(Decision.photo_id == photo)) == 1


def test_unreadable_and_duplicate_photos_are_recorded_not_stored(tmp_path, model, fixtures, photos):
    store = make_store(tmp_path, model, None, photos)
    season = photos["season"][:2]
    result = store.intake.add([*season, fixtures / "images" / "truncated.jpg", season[0]])
    assert len(result.added) == 2 and result.duplicates == [season[0].name]
    assert result.rejected == [("truncated.jpg", "truncated JPEG")]
    assert store.intake.add(season).duplicates == [p.name for p in season]  # the same upload again
    assert store.exports.stats()["rejected"] == 1 and store.exports.stats()["pending"] == 2
    assert sorted(p.name for p in (store.dir / "photos").iterdir()) == sorted(
        {f"{s}.jpg" for s in _sha(store)}
    )  # no file without its row


def _sha(store):
    with store.session() as session:
        return session.scalars(select(Photo.sha256)).all()


def test_exports_feed_training_and_darwin_core(tmp_path, model, photos):
    store = make_store(tmp_path, model, None, photos)
    added = store.intake.add(
        photos["season"][:2], EncounterInfo(date="2026-07-02", latitude=41.5, longitude=-70.1)
    ).added
    store.review.decide(added[0], new=True)
    assert store.exports.export("happywhale", tmp_path / "hw.csv") == len(photos["known"]) + 1
    grown = read_catalog(tmp_path / "hw.csv", store.dir / "photos")  # the next model trains on it as is
    assert len(grown) == len(photos["known"]) + 1 and grown.n_individuals == FIRST + 1
    store.exports.export("dwc", tmp_path / "dwc.csv")
    dwc = pd.read_csv(tmp_path / "dwc.csv")
    row = dwc[dwc["organismID"].str.startswith("WID-")].iloc[0]
    assert (row["eventDate"], row["decimalLatitude"], row["identifiedBy"]) == ("2026-07-02", 41.5, "reviewer")
    assert store.exports.export("decisions", tmp_path / "log.csv") == len(photos["known"]) + 1
    earlier = tmp_path / "earlier-log.csv"  # a decision log of a whaleid before renames and edits: replaced
    earlier.write_text("event,kind,photo_sha256,individual,merged_into,undoes,reviewer,time\n1,new,,,,,ana,\n")
    store.exports.export("decisions", earlier)
    assert pd.read_csv(earlier).columns[-2:].tolist() == ["encounter", "changes"]
    (tmp_path / "mine.csv").write_text("event,kind\n1,a\n")  # not an export of this kind: kept
    with pytest.raises(UserError, match="--force"):
        store.exports.export("decisions", tmp_path / "mine.csv")
    with pytest.raises(UserError, match="unknown export format"):
        store.exports.export("xml", tmp_path / "x.xml")


def exif_photo(path, taken: str, latitude: tuple, longitude: tuple = (70.0, 6.0, 0.0)):
    """A JPEG whose EXIF says when (DateTimeOriginal) and where (GPS, north and west) it was taken."""
    image = Image.new("RGB", (32, 32))
    exif = image.getexif()
    exif.get_ifd(0x8769)[0x9003] = taken
    exif.get_ifd(0x8825).update({1: "N", 2: latitude, 3: "W", 4: longitude})
    image.save(path, exif=exif)
    return path


def test_exif_date_and_gps_are_read(tmp_path):
    gps = exif_photo(tmp_path / "gps.jpg", "2025:08:14 09:30:00", (41.0, 30.0, 0.0))
    assert photo_exif(gps) == ("2025-08-14T09:30:00", 41.5, -70.1)
    Image.new("RGB", (8, 8)).save(tmp_path / "plain.png")
    assert photo_exif(tmp_path / "plain.png") == (None, None, None)


def test_nonsense_exif_dates_and_places_are_not_kept(tmp_path):
    """Darwin Core exports carry them: a month 13 or a latitude of 95 is dropped, the rest kept."""
    odd = exif_photo(tmp_path / "odd.jpg", "2025:13:45 99:00:00", (95.0, 0.0, 0.0))
    assert photo_exif(odd) == (None, None, -70.1)


SLOW_ADD = """
import sys, time
from pathlib import Path
import whaleid.store.catalog as catalog
import whaleid.store.models as models

real = models.Models.embed
def embed(self, model, paths):
    out = real(self, model, paths)
    Path(sys.argv[2]).write_text("embedded")
    time.sleep(60)  # killed here: files copied, rows not committed
    return out
models.Models.embed = embed
catalog.CatalogStore(sys.argv[1]).intake.add(sys.argv[3:])
"""


def test_add_killed_mid_batch_then_run_again_keeps_everything_once(tmp_path, model, photos):
    store = make_store(tmp_path, model, None, photos)
    first = store.intake.add(photos["season"][:1]).added[0]
    decided = store.review.decide(first, new=True)
    batch = [str(p) for p in photos["season"][1:6]]
    marker = tmp_path / "embedded"
    child = subprocess.Popen([sys.executable, "-c", SLOW_ADD, str(store.dir), str(marker), *batch])
    kill_when(marker, child, 120, "the middle of its add")
    assert store.exports.stats()["photos"] == len(photos["known"]) + 1  # no half rows
    again = store.intake.add(batch)
    assert len(again.added) == 5 and not again.duplicates
    assert store.intake.add(batch).duplicates == [os.path.basename(p) for p in batch]
    with store.session() as session:
        shas = session.scalars(select(Photo.sha256)).all()
        assert len(shas) == len(set(shas)) == len(photos["known"]) + 6
        assert session.get(Decision, decided.id).kind == "new"


def test_the_catalog_commands(tmp_path, model, photos):
    runner = CliRunner()

    def run(*args):
        result = runner.invoke(app, ["catalog", *map(str, args)])
        assert result.exit_code == 0, result.output
        return result.output

    folder = tmp_path / "cat"
    run("init", folder, "--model", model.parent)
    assert "photos imported" in run("import", folder, photos["csv"], "--images", photos["images"])
    run("add", folder, *photos["season"][:3], "--date", "2026-07-03", "--place", "Bay", "--observer", "ana")
    items = json.loads(run("queue", folder, "--json"))
    assert len(items) == 3
    run("decide", folder, items[0]["photo"], "--new", "--name", "Nick", "--reviewer", "ana")
    run("decide", folder, items[1]["photo"], "--unsure")
    bad = runner.invoke(app, ["catalog", "decide", str(folder), str(items[0]["photo"]), "--unsure"])
    assert bad.exit_code == 2 and "already decided" in bad.output and "Traceback" not in bad.output
    stats = json.loads(run("stats", folder))
    assert (stats["pending"], stats["unsure"], stats["individuals"]) == (1, 1, FIRST + 1)
    run("export", folder, "--out", tmp_path / "dwc.csv", "--format", "dwc")
    assert "2 photos embedded" not in run("reindex", folder)
    shutil.rmtree(folder / "index", ignore_errors=True)  # the vector cache is rebuilt from the database
    run("add", folder, recoded(photos["season"][0], tmp_path / "c"))


def test_a_vector_cache_cut_short_is_rebuilt_from_the_database(tmp_path, model, photos):
    """The cache under index/ is only a cache: a damaged file (a disk fault, a copy cut short) costs a rebuild."""
    store = make_store(tmp_path, model, None, photos)
    store.intake.add(photos["season"][:2])
    cache = store.dir / "index" / "model1.npz"
    before = [item.candidates for item in store.review.queue()]
    assert cache.is_file() and before[0]
    cache.write_bytes(cache.read_bytes()[:200])
    again = CatalogStore(store.dir)
    assert len(again.intake.add(photos["season"][2:3]).added) == 1
    assert [item.candidates for item in again.review.queue()][:2] == before


def test_a_catalog_locked_by_another_writer_too_long_is_one_line(tmp_path, model, photos, monkeypatch):
    """Past SQLite's busy wait a second writer gets one line saying why and what to do, not a driver error."""
    store = make_store(tmp_path, model, None, photos)
    monkeypatch.setattr(db, "BUSY_MS", 100)
    holder = sqlite3.connect(store.dir / "catalog.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(UserError, match="stayed locked by another writer"):
            CatalogStore(store.dir).intake.add(photos["season"][:1])
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert len(CatalogStore(store.dir).intake.add(photos["season"][:1]).added) == 1
