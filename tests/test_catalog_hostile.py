"""The living catalog against hostile input, through the real `whaleid catalog` process: nothing a user can
type loses the catalog's data or reads it wrongly, and every refusal is one `error:` line, exit 2."""

import ctypes
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from alembic import command
from PIL import Image

from processes import kill_when
from whaleid.model.checkpoint import save_checkpoint
from whaleid.model.network import EmbeddingModel, ModelConfig
from whaleid.store.catalog import CatalogStore
from whaleid.store.db import alembic_config, open_engine

ENV = {k: v for k, v in os.environ.items() if k != "WHALEID_DEBUG"}  # PYTHONPATH passes on: the code under test
UNREACHABLE = "postgresql+psycopg://whaleid@127.0.0.1:9/whaleid?connect_timeout=3"  # port 9 (discard): closed
FORMULAS = ("=", "+", "-", "@", "\t", "\r")


def whaleid(*args, preexec_fn=None, script: str | None = None) -> subprocess.CompletedProcess:
    """`python -m whaleid ARGS` (or ``script`` run with ARGS as its argv), as a user runs it."""
    head = ["-c", script, *map(str, args)] if script else ["-m", "whaleid", *map(str, args)]
    return subprocess.run(
        [sys.executable, *head], capture_output=True, text=True, env=ENV, timeout=300, preexec_fn=preexec_fn
    )


def ok(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def refused(done: subprocess.CompletedProcess, *words: str) -> str:
    """Exit 2 with one `error:` line that says what went wrong (naming ``words``), no traceback, no 'unexpected'."""
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert len(errors) == 1 and "Traceback" not in done.stderr and "unexpected" not in done.stderr, done.stderr
    assert all(word in errors[0] for word in words), (words, errors[0])
    return errors[0]


def snapshot(folder) -> dict:
    """Every file under ``folder`` with its bytes (SQLite's -wal and -shm aside: they come and go on open)."""
    if not folder.exists():
        return {}
    if folder.is_file():
        return {folder.name: folder.read_bytes()}
    return {
        str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None
        for p in sorted(folder.rglob("*"))
        if not p.name.endswith(("-wal", "-shm"))
    }


def photos(folder, names, ids, seed) -> object:
    """A catalog CSV with a tiny real photo per name (the seed makes them differ between folders)."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in names:
        Image.fromarray(rng.integers(0, 255, (36, 40, 3), dtype=np.uint8)).save(folder / "images" / name)
    pd.DataFrame({"image": names, "species": "x", "individual_id": ids}).to_csv(folder / "train.csv", index=False)
    return folder / "train.csv"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny real model and a catalog of 6 photos of 3 individuals made with it (copied by each test)."""
    root = tmp_path_factory.mktemp("hostile")
    network = EmbeddingModel(ModelConfig(backbone="test_efficientnet", embedding_dim=8, img_size=32), pretrained=False)
    model = save_checkpoint(network.eval(), root / "model" / "model", ["x"])
    csv = photos(root / "known", [f"k{i}.png" for i in range(6)], [f"id{i % 3}" for i in range(6)], seed=0)
    photos(root / "new", ["n0.png", "n1.png"], ["new0", "new1"], seed=1)
    ok(whaleid("catalog", "init", root / "catalog", "--model", model))
    ok(whaleid("catalog", "import", root / "catalog", csv))
    return {"root": root, "model": model, "csv": csv, "new": root / "new" / "images"}


@pytest.fixture
def catalog(world, tmp_path):
    return shutil.copytree(world["root"] / "catalog", tmp_path / "catalog")


def stored_photo(catalog):
    return next((catalog / "photos").iterdir())


# --------------------------------------------------------------------------- data lost


def test_export_never_overwrites_the_catalog_or_a_file_that_is_not_its_export(catalog, tmp_path):
    notes = tmp_path / "notes.csv"
    notes.write_text("my field notes, not an export\n")
    dwc = tmp_path / "dwc.csv"
    ok(whaleid("catalog", "export", catalog, "--out", dwc, "--format", "dwc"))
    before, kept = snapshot(catalog), {p: p.read_bytes() for p in (notes, dwc)}
    for out, force in [(catalog / "catalog.db", True), (stored_photo(catalog), True), (notes, False), (dwc, False)]:
        refused(whaleid("catalog", "export", catalog, "--out", out), out.name)  # (a dwc export is not a Happywhale one)
        if force:  # the catalog's own files: not even with --force
            refused(whaleid("catalog", "export", catalog, "--out", out, "--force"), out.name)
    assert snapshot(catalog) == before and {p: p.read_bytes() for p in kept} == kept


def test_export_replaces_its_own_earlier_export_and_anything_with_force(catalog, tmp_path):
    out = tmp_path / "hw.csv"
    assert "6 rows" in ok(whaleid("catalog", "export", catalog, "--out", out))
    ok(whaleid("catalog", "export", catalog, "--out", out))  # an earlier Happywhale export: replaced
    other = tmp_path / "notes.csv"
    other.write_text("field notes\n")
    ok(whaleid("catalog", "export", catalog, "--out", other, "--force"))
    assert other.read_text().splitlines()[0] == "image,species,individual_id" and len(pd.read_csv(other)) == 6


def test_init_refuses_a_database_that_holds_a_catalog(world, catalog, tmp_path):
    before = snapshot(catalog)
    done = whaleid(
        "catalog", "init", tmp_path / "b", "--model", world["model"], "--db", f"sqlite:///{catalog}/catalog.db"
    )
    refused(done, "already holds a catalog")
    assert snapshot(catalog) == before and not (tmp_path / "b").exists()
    assert [m["active"] for m in CatalogStore(catalog).models.listed()] == [True]


KILLED_REINDEX = """
import sys, time
from pathlib import Path
import whaleid.store.models as models
from whaleid.__main__ import main

marker = Path(sys.argv[1])
real = models.Models.embed
def embed(self, model, paths):
    out = real(self, model, paths)
    marker.write_text("embedded")
    time.sleep(120)  # killed here: the new model registered, its vectors not yet stored
    return out
models.Models.embed = embed
sys.argv = ["whaleid", *sys.argv[2:]]
main()
"""


def test_reindex_killed_before_its_vectors_are_stored_leaves_the_old_model_active(world, catalog, tmp_path):
    marker = tmp_path / "embedded"
    args = [sys.executable, "-c", KILLED_REINDEX, marker, "catalog", "reindex", catalog, "--model", world["model"]]
    child = subprocess.Popen([str(a) for a in args], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kill_when(marker, child, 180, "its embedding")
    assert [(m["version"], m["active"]) for m in CatalogStore(catalog).models.listed()] == [(1, True), (2, False)]
    assert "1 photos queued" in ok(whaleid("catalog", "add", catalog, world["new"] / "n0.png"))  # it still matches


# --------------------------------------------------------------------------- silent wrong results


def test_an_older_catalog_still_migrates(catalog):
    engine = open_engine(f"sqlite:///{catalog}/catalog.db")
    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "0001")
    engine.dispose()
    assert '"photos": 6' in ok(whaleid("catalog", "stats", catalog))


@pytest.mark.parametrize(
    "option",
    [
        ["--date", "2026-13-45"],
        ["--date", "yesterday"],
        ["--lat", "nan"],
        ["--lon", "inf"],
        ["--lat", "91"],
        ["--lon", "-180.5"],
    ],
)
def test_encounter_dates_and_places_are_checked(world, catalog, option):
    before = snapshot(catalog)
    refused(whaleid("catalog", "add", catalog, world["new"] / "n0.png", *option), option[1])
    assert snapshot(catalog) == before


def test_the_web_upload_form_gets_the_same_check(catalog):
    from webapp import PASSWORD, client
    from whaleid.web.users import add_user

    store = CatalogStore(catalog)
    add_user(store, "ana", PASSWORD, "reviewer")
    with client(store) as c:
        token = c.post("/api/login", json={"name": "ana", "password": PASSWORD}).json()["csrf"]
        answer = c.post("/api/uploads", json={"date": "yesterday"}, headers={"X-CSRF-Token": token})
    assert answer.status_code == 400 and "ISO 8601" in answer.text, answer.text


def test_one_photo_under_two_labels_is_a_conflict(world, catalog, tmp_path):
    """The same bytes in two folders, or already in the catalog, with another individual: refused naming both."""
    source = tmp_path / "two"
    for folder in ("a", "b"):
        (source / folder).mkdir(parents=True)
        shutil.copy(world["new"] / "n0.png", source / folder / "x.png")
    table = pd.DataFrame({"image": ["a/x.png", "b/x.png"], "species": "x", "individual_id": ["A", "B"]})
    table.to_csv(source / "two.csv", index=False)
    before = snapshot(catalog)
    refused(whaleid("catalog", "import", catalog, source / "two.csv", "--images", source), "a/x.png (A)", "b/x.png (B)")
    known = pd.read_csv(world["csv"]).iloc[0]  # k0.png is id0 in the catalog
    shutil.copy(world["root"] / "known" / "images" / known["image"], source / "a" / "k.png")
    pd.DataFrame({"image": ["a/k.png"], "species": "x", "individual_id": ["id1"]}).to_csv(source / "k.csv", index=False)
    refused(whaleid("catalog", "import", catalog, source / "k.csv", "--images", source), "a/k.png (id1)", "(id0)")
    assert snapshot(catalog) == before


def test_formula_cells_reach_no_export(world, catalog, tmp_path):
    hostile = {"individual_id": '=HYPERLINK("http://x","y")', "species": "+cmd|' /C calc'!A0"}
    source = tmp_path / "hostile"
    (source / "images").mkdir(parents=True)
    shutil.copy(world["new"] / "n0.png", source / "images" / "h.png")
    pd.DataFrame([{"image": "h.png", **hostile}]).to_csv(source / "h.csv", index=False)
    ok(whaleid("catalog", "import", catalog, source / "h.csv"))
    extra = ["--date", "2026-07-01T14:30:00", "--lat", "-41.5", "--lon", "-70.25", "--observer", "@SUM(A1)"]
    ok(whaleid("catalog", "add", catalog, world["new"] / "n1.png", *extra, "--notes", "-2+3"))
    ok(whaleid("catalog", "decide", catalog, "8", "--new", "--reviewer", "-2+3"))
    tables = {}
    for kind in ("happywhale", "decisions", "dwc"):
        ok(whaleid("catalog", "export", catalog, "--out", tmp_path / f"{kind}.csv", "--format", kind))
        tables[kind] = pd.read_csv(tmp_path / f"{kind}.csv", dtype=str, keep_default_na=False)
    cells = [cell for table in tables.values() for column in table.columns for cell in table[column]]
    assert [c for c in cells if c.startswith(FORMULAS)] == ["-41.5", "-70.25"]  # numbers stay numbers
    happywhale = tables["happywhale"].set_index("image")
    assert set(happywhale["individual_id"]) == {"id0", "id1", "id2", "WID-00005", "'" + hostile["individual_id"]}
    assert set(happywhale["species"]) == {"x", "'+cmd|'_/c_calc'!a0"}  # (species names are cleaned up on import)
    assert set(tables["decisions"]["reviewer"]) == {"import", "'-2+3"}
    row = tables["dwc"].set_index("identifiedBy").loc["'-2+3"]
    assert (row["eventDate"], row["decimalLatitude"], row["decimalLongitude"]) == (
        "2026-07-01T14:30:00",
        "-41.5",
        "-70.25",
    )


# --------------------------------------------------------------------------- user errors, not bugs


def _write(path, data: bytes):
    path.write_bytes(data)
    for suffix in ("-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)


def _damage_db(how):
    def damage(w, cat):
        db = cat / "catalog.db"
        data = db.read_bytes()
        _write(db, how(data, w))

    return damage


def _stats(w, cat):
    return ["catalog", "stats", cat]


USER_ERRORS = {
    # case: (what to do to the catalog copy, the command's arguments, words its line must hold)
    "catalog folder is a file": (lambda w, cat: shutil.rmtree(cat) or cat.write_text("x"), _stats, ["is a file"]),
    "init over a file": (
        lambda w, cat: shutil.rmtree(cat) or cat.write_text("x"),
        lambda w, cat: ["catalog", "init", cat, "--model", w["model"]],
        ["is a file"],
    ),
    "catalog.db garbage": (_damage_db(lambda d, w: bytes(range(256)) * 20), _stats, ["catalog.db", "damaged"]),
    "catalog.db truncated": (_damage_db(lambda d, w: d[:3000]), _stats, ["catalog.db", "damaged"]),
    "catalog.db a JPEG": (
        _damage_db(lambda d, w: (w["new"] / "n0.png").read_bytes()),
        _stats,
        ["catalog.db", "damaged"],
    ),
    "catalog.db 0 bytes": (_damage_db(lambda d, w: b""), _stats, ["catalog.db", "holds no whaleid catalog"]),
    "catalog.db missing": (lambda w, cat: (cat / "catalog.db").unlink(), _stats, ["catalog.db", "missing"]),
    "add to a damaged catalog.db": (
        _damage_db(lambda d, w: d[:3000]),
        lambda w, cat: ["catalog", "add", cat, w["new"] / "n0.png"],
        ["damaged"],
    ),
    "catalog.json garbage": (lambda w, cat: (cat / "catalog.json").write_text("{db: "), _stats, ["catalog.json"]),
    "catalog.json empty": (lambda w, cat: (cat / "catalog.json").write_text(""), _stats, ["catalog.json"]),
    "catalog.json a list": (lambda w, cat: (cat / "catalog.json").write_text("[1, 2]"), _stats, ["catalog.json"]),
    "catalog.json not UTF-8": (
        lambda w, cat: (cat / "catalog.json").write_bytes(b'{"db": "\xff\xfe"}'),
        _stats,
        ["catalog.json", "UTF-8"],
    ),
    "catalog.json names an unreachable PostgreSQL": (
        lambda w, cat: (cat / "catalog.json").write_text(f'{{"db": "{UNREACHABLE}"}}'),
        _stats,
        ["cannot connect", "127.0.0.1"],
    ),
    "init --db unreachable PostgreSQL (new folder)": (
        lambda w, cat: shutil.rmtree(cat),
        lambda w, cat: ["catalog", "init", cat / "deeper", "--model", w["model"], "--db", UNREACHABLE],
        ["cannot connect"],
    ),
    "init --db unreachable PostgreSQL (folder of the user's)": (
        lambda w, cat: shutil.rmtree(cat) or cat.mkdir() or (cat / "mine.txt").write_text("keep me"),
        lambda w, cat: ["catalog", "init", cat, "--model", w["model"], "--db", UNREACHABLE],
        ["cannot connect"],
    ),
    "init --db SQLite in a missing folder": (
        lambda w, cat: shutil.rmtree(cat),
        lambda w, cat: ["catalog", "init", cat, "--model", w["model"], "--db", f"sqlite:///{cat}-none/x/c.db"],
        ["does not exist"],
    ),
    "init --db a file that is not a database": (
        lambda w, cat: shutil.rmtree(cat) or cat.mkdir() or shutil.copy(w["new"] / "n0.png", cat / "p.png"),
        lambda w, cat: ["catalog", "init", cat / "new", "--model", w["model"], "--db", f"sqlite:///{cat}/p.png"],
        ["p.png", "not a database"],
    ),
}
READ_ONLY = {
    "stats": lambda w, cat: ["catalog", "stats", cat],
    "add": lambda w, cat: ["catalog", "add", cat, w["new"] / "n0.png"],
    "decide": lambda w, cat: ["catalog", "decide", cat, "1", "--unsure"],
    "reindex": lambda w, cat: ["catalog", "reindex", cat],
    "export": lambda w, cat: ["catalog", "export", cat, "--out", cat.parent / "out.csv"],
}


@pytest.mark.parametrize("case", sorted(USER_ERRORS))
def test_hostile_input_is_one_line_and_changes_nothing(world, catalog, case):
    spoil, args, words = USER_ERRORS[case]
    spoil(world, catalog)
    before = snapshot(catalog)
    refused(whaleid(*args(world, catalog)), *words)
    assert snapshot(catalog) == before


def _obey_permissions():
    """In the child, before exec: drop root's right to ignore file permissions (so chmod binds, as for anyone)."""
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2, 3):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


@pytest.fixture
def as_anyone(tmp_path):
    """How to run a command that file permissions bind: as is, or for root without its override capabilities."""
    if os.geteuid() != 0:
        return None
    probe = tmp_path / "probe"
    probe.mkdir(mode=0o555)
    try:
        tried = subprocess.run(
            [sys.executable, "-c", f"open({str(probe / 'f')!r}, 'w')"],
            preexec_fn=_obey_permissions,
            capture_output=True,
        )
    except subprocess.SubprocessError:  # the capability could not be dropped
        tried = None
    probe.chmod(0o755)
    if tried is None or "PermissionError" not in tried.stderr.decode():
        pytest.skip("root here cannot give up its permission override, so a read-only folder is writable anyway")
    return _obey_permissions


@pytest.mark.parametrize("command_", sorted(READ_ONLY) + ["init in a read-only folder", "export to a read-only folder"])
def test_a_read_only_catalog_or_folder_is_one_line(world, catalog, tmp_path, as_anyone, command_):
    locked = tmp_path / "locked"
    locked.mkdir()
    args = {
        "init in a read-only folder": ["catalog", "init", locked / "c", "--model", world["model"]],
        "export to a read-only folder": ["catalog", "export", catalog, "--out", locked / "out.csv"],
    }.get(command_) or READ_ONLY[command_](world, catalog)
    read_only = [catalog, *catalog.rglob("*"), locked] if command_ in READ_ONLY else [locked]
    before = snapshot(catalog)
    for path in read_only:
        path.chmod(path.stat().st_mode & ~0o222)
    try:
        line = refused(whaleid(*args, preexec_fn=as_anyone))
    finally:
        for path in read_only:
            path.chmod(path.stat().st_mode | 0o200)
    assert ("read-only" in line or "ermission denied" in line) and snapshot(catalog) == before
    assert not list(locked.iterdir())


FULL_DISK = """
import resource, sys
import sqlalchemy
import whaleid.store.db as db
import whaleid.store.models as models
from whaleid.__main__ import main

how = sys.argv[1]
real = models.Models.embed
def embed(self, model, paths):
    out = real(self, model, paths)
    if how == "file size limit":  # from here on no file may grow past 8 kB: the import's rows cannot be written
        resource.setrlimit(resource.RLIMIT_FSIZE, (8192, resource.RLIM_INFINITY))
    return out
models.Models.embed = embed

def failing(conn, cursor, statement, *args):
    if statement.startswith("INSERT"):  # what SQLite says when the device is full (a file size limit gives I/O)
        import sqlite3
        raise sqlite3.OperationalError("database or disk is full")

opened = db.open_engine
def open_engine(url):
    engine = opened(url)
    if how == "device full":
        sqlalchemy.event.listen(engine, "before_cursor_execute", failing)
    return engine
db.open_engine = open_engine
sys.argv = ["whaleid", *sys.argv[2:]]
main()
"""


@pytest.mark.parametrize(
    "how,words", [("device full", ["disk full", "catalog.db"]), ("file size limit", ["disk I/O error", "catalog.db"])]
)
def test_a_full_disk_while_import_writes_its_rows_is_one_line(world, catalog, how, words):
    source = world["root"] / "new" / "train.csv"
    before = ok(whaleid("catalog", "stats", catalog))
    refused(whaleid(how, "catalog", "import", catalog, source, script=FULL_DISK), *words)
    assert ok(whaleid("catalog", "stats", catalog)) == before  # no rows written
