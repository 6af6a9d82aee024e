"""The review web app through its API and pages: accounts, the review loop, uploads as jobs that survive
a crash, switching model, and every page for every role (security: test_web_security.py; browser:
test_web_browser.py)."""

import hashlib

import pytest
from filelock import FileLock
from PIL import Image
from sqlalchemy import func, select, update
from typer.testing import CliRunner

from webapp import PASSWORD, build_catalog, client, wait_for_job
from whaleid.__main__ import app as cli
from whaleid.errors import UserError
from whaleid.store.catalog import CatalogStore
from whaleid.store.intake import EncounterInfo
from whaleid.store.schema import Decision, Job, MatchRun, Photo
from whaleid.web.config import WebConfig
from whaleid.web.jobs import Jobs, UploadLimits
from whaleid.web.server import serve
from whaleid.web.users import first_admin


@pytest.fixture
def store(tmp_path, synth_csv, model):
    return build_catalog(tmp_path, synth_csv, model)


def _pending(store):
    with store.reader() as session:
        return session.scalars(select(Photo).where(Photo.state == "pending").order_by(Photo.id)).all()


def test_the_first_admin_gets_a_one_time_password_that_must_be_changed_first(tmp_path, synth_csv, model):
    store = CatalogStore.create(tmp_path / "empty", model.parent)
    password = first_admin(store, "chief", None)
    assert password and len(password) >= 12
    assert first_admin(store, "other", None) is None  # only when there are no users at all
    with client(store) as c:
        c.headers["X-CSRF-Token"] = c.post("/api/login", json={"name": "chief", "password": password}).json()["csrf"]
        assert c.post("/api/logout").status_code == 200  # logging out needs no new password first
        csrf = c.post("/api/login", json={"name": "chief", "password": password}).json()["csrf"]
        c.headers["X-CSRF-Token"] = csrf
        refused = c.post("/api/users", json={"name": "bob", "password": PASSWORD, "role": "viewer"})
        assert refused.status_code == 403 and "one-time password" in refused.json()["detail"]
        changed = c.post("/api/me/password", json={"current": password, "new": PASSWORD})
        assert changed.status_code == 200
        assert c.get("/api/me").status_code == 401  # changing the password ends every session
        c.headers["X-CSRF-Token"] = c.post("/api/login", json={"name": "chief", "password": PASSWORD}).json()["csrf"]
        assert c.post("/api/users", json={"name": "bob", "password": PASSWORD, "role": "viewer"}).status_code == 201
        assert c.post("/api/login", json={"name": "chief", "password": password}).status_code == 401


def test_an_admin_password_from_the_environment_is_used_as_given(tmp_path, model):
    store = CatalogStore.create(tmp_path / "c", model.parent)
    assert first_admin(store, "admin", PASSWORD) is None  # nothing to print
    with client(store) as c:
        assert c.post("/api/login", json={"name": "admin", "password": PASSWORD}).json()["must_change"] is False


def test_review_through_the_api_confirm_conflict_undo_new_unsure(store):
    with client(store, "reviewer") as c:
        first, second, third = _pending(store)[:3]
        item = c.get(f"/api/photos/{first.id}").json()
        assert item["photo"]["state"] == "pending" and len(item["candidates"]) == 5
        top = item["candidates"][0]
        assert top["photos"] and top["photo_count"] >= len(top["photos"])  # each candidate with its photos
        assert all(b["encounter"] == 1 for b in item["batch"])  # look-alikes from the same upload
        body = {"kind": "confirm", "individual": top["individual"], "version": first.version}
        confirmed = c.post(f"/api/photos/{first.id}/decision", json=body)
        assert confirmed.status_code == 200 and confirmed.json()["individual"] == top["individual"]
        assert c.post(f"/api/photos/{first.id}/decision", json=body).status_code == 409  # decided already
        assert c.get(f"/api/photos/{first.id}").json()["last_decision"] == confirmed.json()["decision"]
        undone = c.post(f"/api/decisions/{confirmed.json()['decision']}/undo")
        assert undone.status_code == 200
        assert c.get(f"/api/photos/{first.id}").json()["photo"]["state"] == "pending"
        assert c.post(f"/api/decisions/{confirmed.json()['decision']}/undo").status_code == 400  # undone once only
        new = c.post(f"/api/photos/{second.id}/decision", json={"kind": "new", "name": "Nicky"}).json()
        assert new["individual"].startswith("WID-")
        assert c.post(f"/api/photos/{third.id}/decision", json={"kind": "unsure"}).status_code == 200
        stats = c.get("/api/stats").json()
        assert (stats["individuals"], stats["unsure"]) == (6, 1)
        assert stats["discovery_curve"][-1] == [29, 6]  # 28 imported photos of 5 fins, then the new one
        recent = c.get("/api/decisions?limit=4").json()
        assert [d["kind"] for d in recent] == ["unsure", "new", "undo", "confirm"] and recent[3]["undone"]
        assert c.get(f"/api/individuals/{new['individual']}").json()["name"] == "Nicky"
        exported = c.get("/api/export/happywhale")
        assert exported.headers["content-type"].startswith("text/csv") and new["individual"] in exported.text
        missing = c.post("/api/photos/999999/decision", json={"kind": "unsure"})
        assert missing.status_code == 404 and "999999" in missing.json()["detail"]


def test_an_upload_is_staged_processed_and_matched_within_its_batch(store, synth_csv):
    images = sorted((synth_csv.parent / "images").glob("*.jpg"))[:3]
    with client(store, "reviewer") as c:
        job = c.post("/api/uploads", json={"date": "2026-08-02", "place": "north cape"}).json()
        assert job["state"] == "receiving"
        for path in images:  # photos of the imported fins: already in the catalog
            assert (
                c.post(f"/api/uploads/{job['id']}/photos", files={"file": (path.name, path.read_bytes())}).status_code
                == 201
            )
        fresh = Image.open(images[0]).transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        fresh.save(store.dir.parent / "flipped.png")
        data = (store.dir.parent / "flipped.png").read_bytes()
        assert c.post(f"/api/uploads/{job['id']}/photos", files={"file": ("flipped.png", data)}).status_code == 201
        assert c.post(f"/api/uploads/{job['id']}/start").json()["state"] in ("queued", "running", "done")
        done = wait_for_job(c.get, job["id"])
        assert done["state"] == "done", done
        assert (done["result"]["added"], done["result"]["duplicates"], len(done["result"]["photos"])) == (1, 3, 4)
        assert done["progress"] == {"stage": "done", "done": 4, "total": 4}
        encounter = c.get(f"/api/encounters/{done['encounter']}").json()
        assert encounter["place"] == "north cape" and [p["name"] for p in encounter["photos"]] == ["flipped.png"]
        assert c.post(f"/api/uploads/{job['id']}/start").status_code == 409  # started once
    assert not (store.dir / "uploads" / str(job["id"])).exists()  # staging removed once done


def test_a_job_left_running_by_a_killed_server_is_resumed_and_adds_nothing_twice(store, synth_csv):
    jobs = Jobs(store, UploadLimits())
    job = jobs.create_upload(EncounterInfo(date="2026-09-09", place="crash cove"), "reviewer")
    table = sorted((synth_csv.parent / "images").glob("*.jpg"))
    flipped = []
    for i, path in enumerate(table[:4]):
        target = store.dir.parent / f"new{i}.png"
        Image.open(path).transpose(Image.Transpose.FLIP_TOP_BOTTOM).save(target)
        flipped.append(target)
        jobs.stage(job["id"], target.read_bytes(), target.name)
    jobs.start(job["id"])
    # The crash: the job was claimed and half of its photos committed, then the process died.
    with store.session() as session, session.begin():
        session.execute(update(Job).where(Job.id == job["id"]).values(state="running"))
        staged = session.get(Job, job["id"]).payload["files"]
    store.intake.add([store.dir / f["file"] for f in staged[:2]], job["encounter"])
    restarted = Jobs(store, UploadLimits(), poll=0.05)
    restarted.start_worker()
    try:
        done = wait_for_job(lambda url: _Json(restarted.get(int(url.rsplit("/", 1)[1]))), job["id"])
    finally:
        restarted.stop_worker()
    assert done["state"] == "done" and len(done["result"]["photos"]) == 4
    digests = [hashlib.sha256(p.read_bytes()).hexdigest() for p in flipped]
    with store.reader() as session:
        counts = session.execute(
            select(Photo.sha256, func.count()).where(Photo.sha256.in_(digests)).group_by(Photo.sha256)
        ).all()
    assert sorted(n for _, n in counts) == [1, 1, 1, 1]


class _Json:
    """A job dict dressed as a response (wait_for_job calls ``.json()``)."""

    def __init__(self, value):
        self.value = value

    def json(self):
        return self.value


def test_an_admin_switches_model_as_a_job_and_matches_record_it(store, tmp_path, model):
    store.gallery.reindex(model.parent)  # v2 registered and active
    assert [m["active"] for m in store.models.listed()] == [False, True]
    with client(store, "admin") as c:
        job = c.post("/api/models/1/activate").json()
        assert wait_for_job(c.get, job["id"])["state"] == "done"
        assert [m["active"] for m in c.get("/api/models").json()] == [True, False]
        assert c.post("/api/models/9/activate").status_code == 404
        pending = _pending(store)[0].id
        assert c.get(f"/api/photos/{pending}").json()["model"] == 1  # proposals of the model in use
    with store.reader() as session:
        assert session.scalar(select(func.count()).select_from(Decision)) == 28  # decisions untouched
        runs = session.execute(select(MatchRun.model_id, func.count()).group_by(MatchRun.model_id)).all()
    assert dict(runs) == {1: 2 * 49, 2: 49}  # added (v1), switched to v2, back to v1: each recorded


def test_every_page_renders_for_a_viewer_and_admin_pages_say_no(store):
    pending = _pending(store)[0].id
    with client(store, "viewer") as c:
        individual = c.get("/api/individuals").json()[0]["individual"]
        for page in ["/", "/upload", f"/review/{pending}", "/individuals", f"/individuals/{individual}",
                     "/encounters", "/encounters/1", "/export", "/account"]:  # fmt: skip
            answer = c.get(page)
            assert answer.status_code == 200 and "<html" in answer.text, page
        assert "needs the admin role" in c.get("/users").text
        assert c.get("/review").url.path == f"/review/{pending}"  # the first photo waiting
        review = c.get(f"/review/{pending}").text
        assert 'data-can-decide="no"' in review and 'data-rank="5"' in review
        assert "content-security-policy" in c.get("/").headers
    with client(store) as anonymous:
        answer = anonymous.get("/individuals", follow_redirects=False)
        assert answer.status_code == 303 and answer.headers["location"] == "/login?next=%2Findividuals"


def test_matched_points_need_a_login_name_real_photos_and_say_when_the_model_does_not_rerank(store):
    pending = store.review.queue(2)
    url = f"/api/photos/{pending[0].photo}/matches/{pending[1].photo}"
    with client(store) as anonymous:
        assert anonymous.get(url).status_code == 401
    with client(store, "viewer") as c:
        assert c.get(url).json() == {"matcher": None, "detector": None, "count": None, "pairs": []}
        missing = c.get(f"/api/photos/{pending[0].photo}/matches/999999")
        assert missing.status_code == 404 and missing.json()["detail"] == "no photo 999999"
    assert not list(store.dir.glob("cache/matches*"))  # nothing matched, nothing cached


def test_the_admin_pages_add_users_and_change_roles(store):
    with client(store, "admin") as c:
        csrf = c.headers["X-CSRF-Token"]
        added = c.post("/users", data={"name": "erin", "password": PASSWORD, "role": "viewer", "csrf": csrf})
        assert added.status_code == 200 and "User added." in added.text and "<td>erin</td>" in added.text
        assert "a password is" in c.post("/users", data={"name": "x", "password": "short", "csrf": csrf}).text
        c.post("/users/erin", data={"role": "reviewer", "csrf": csrf})
        assert {"name": "erin", "role": "reviewer"}.items() <= next(
            u for u in c.get("/api/users").json() if u["name"] == "erin"
        ).items()
        assert "the last admin" in c.post("/users/admin", data={"role": "viewer", "csrf": csrf}).text


def test_serve_refuses_a_folder_that_is_not_a_catalog_and_a_second_server(tmp_path, store):
    result = CliRunner().invoke(cli, ["serve", str(tmp_path / "nothing")])
    assert result.exit_code == 2 and "not a whaleid catalog" in result.output and "Traceback" not in result.output
    with FileLock(store.dir / ".serve.lock"):
        with pytest.raises(UserError, match="another `whaleid serve`"):
            serve(store.dir, "127.0.0.1", 1, WebConfig())


def test_a_refused_form_post_starts_no_session(store):
    with client(store) as c:
        answer = c.post("/login", data={"name": "admin", "password": PASSWORD, "csrf": "forged"})
        assert "expired" in answer.text and c.get("/api/me").status_code == 401
        page = c.get("/login")
        token = page.text.split('name="csrf" value="')[1].split('"')[0]
        logged = c.post("/login", data={"name": "admin", "password": PASSWORD, "csrf": token, "next": "//evil.example"})
        assert logged.url.path == "/" and logged.url.host == "testserver"
        assert c.get("/api/me").json()["name"] == "admin"
