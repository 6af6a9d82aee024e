"""Limits of the review web app that hold under concurrency and over time: the login limit against parallel
guesses (through a real `whaleid serve` process), guesses at the current password, files per upload request,
the pixels decoded at once, uploads abandoned half-way, who may say where a request came from
(X-Forwarded-For), the CSRF header in the OpenAPI spec, and the demo's admin.

One catalog is built per module and never written to; each test works on its own copy of it."""

from __future__ import annotations

import asyncio
import io
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import select, update
from typer.testing import CliRunner

from webapp import PASSWORD, Server, build_catalog
from whaleid.__main__ import app as cli
from whaleid.store.browse import photo_file
from whaleid.store.catalog import CatalogStore
from whaleid.store.errors import ConflictError
from whaleid.store.intake import EncounterInfo
from whaleid.store.queries import now
from whaleid.store.schema import Job
from whaleid.web import images, jobs
from whaleid.web.config import WebConfig
from whaleid.web.jobs import Jobs, UploadLimits
from whaleid.web.server import create_app
from whaleid.web.users import verified

NO_WORKER = WebConfig(start_worker=False)
LIMIT = 5  # failed password checks per address and per name (WebConfig's default)
UNSAFE = {"post", "put", "patch", "delete"}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory, synth_csv, model) -> Path:
    """The catalog as built (a user per role, photos pending review), closed: only ever copied."""
    store = build_catalog(tmp_path_factory.mktemp("limits") / "built", synth_csv, model)
    store.engine.dispose()  # SQLite folds its WAL back into the file: a plain copy is the whole catalog
    return store.dir


@pytest.fixture
def store(pristine, tmp_path) -> CatalogStore:
    shutil.copytree(pristine, tmp_path / "catalog")
    return CatalogStore(tmp_path / "catalog")


def login(app, name: str = "reviewer") -> TestClient:
    """A client logged in as ``name``, its CSRF token set as a default header."""
    c = TestClient(app)
    answer = c.post("/api/login", json={"name": name, "password": PASSWORD})
    assert answer.status_code == 200, answer.text
    c.headers["X-CSRF-Token"] = answer.json()["csrf"]
    return c


def jpeg(seed: int = 0, side: int = 48) -> bytes:
    pixels = np.random.RandomState(seed).randint(0, 256, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def png(width: int, height: int) -> bytes:
    """Many pixels in few bytes (the shape of the 88 MP, 258 KB PNG that took a server to 3 GB)."""
    buffer = io.BytesIO()
    Image.new("L", (width, height)).save(buffer, format="PNG")
    return buffer.getvalue()


def staged(store: CatalogStore, job_id: int) -> list[dict]:
    with store.reader() as session:
        return list(session.get(Job, job_id).payload["files"])


def burst(url: str, bodies: list[dict], headers: list[dict] | None = None) -> list[int]:
    """Every body posted to /api/login at once, one thread each (a bounded burst to 127.0.0.1)."""
    start = threading.Barrier(len(bodies))

    def one(i: int) -> int:
        start.wait(30)
        return httpx.post(
            f"{url}/api/login", json=bodies[i], headers=(headers or [{}] * len(bodies))[i], timeout=60
        ).status_code

    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(one, range(len(bodies))))


# --------------------------------------------------------------------------------- 2. the login limit


def test_parallel_wrong_passwords_for_one_name_get_no_more_checks_than_the_limit(store):
    """30 wrong passwords for one name sent at once to a real server: the limit is taken before each check, so
    at most 5 are checked (401) and the rest refused (429); the right password then waits too."""
    server = Server(store.dir)
    try:
        codes = burst(server.url, [{"name": "reviewer", "password": f"wrong guess {i}"} for i in range(30)])
        assert codes.count(401) <= LIMIT and codes.count(401) + codes.count(429) == 30, sorted(codes)
        right = httpx.post(f"{server.url}/api/login", json={"name": "reviewer", "password": PASSWORD}, timeout=60)
        assert right.status_code == 429 and "too many failed logins" in right.json()["detail"], right.text
    finally:
        server.stop()


def test_parallel_guesses_from_one_address_are_limited_whatever_x_forwarded_for_says(store):
    """30 wrong passwords at once, each for another name and claiming another address in X-Forwarded-For: the
    server was not told it sits behind a proxy, so they all come from 127.0.0.1 and at most 5 are checked."""
    server = Server(store.dir)
    try:
        codes = burst(
            server.url,
            [{"name": f"nobody{i}", "password": f"wrong guess {i}"} for i in range(30)],
            [{"X-Forwarded-For": f"198.51.100.{i + 1}"} for i in range(30)],
        )
        assert codes.count(401) <= LIMIT and codes.count(401) + codes.count(429) == 30, sorted(codes)
    finally:
        server.stop()


def test_a_team_behind_one_address_logs_in_at_once(store):
    """20 right passwords at once from one address (a field station behind one router): the places the
    limit keeps for checks in flight make the later ones wait a moment, never refuse them."""
    server = Server(store.dir)
    try:
        codes = burst(server.url, [{"name": role, "password": PASSWORD} for role in ("viewer", "reviewer") * 10])
        assert codes == [200] * 20, sorted(codes)
    finally:
        server.stop()


def test_behind_a_declared_proxy_x_forwarded_for_names_the_address(store):
    """With --proxy 127.0.0.1 the proxy's header is believed: six addresses, six wrong guesses, none limited."""
    server = Server(store.dir, "--proxy", "127.0.0.1")
    try:
        for i in range(LIMIT + 1):
            answer = httpx.post(
                f"{server.url}/api/login",
                json={"name": f"nobody{i}", "password": "wrong guess"},
                headers={"X-Forwarded-For": f"198.51.100.{i + 1}"},
                timeout=60,
            )
            assert answer.status_code == 401, f"guess {i}: {answer.status_code} {answer.text}"
    finally:
        server.stop()


# --------------------------------------------------------------------------- 3. the current password


def test_guesses_at_the_current_password_share_the_login_limit(store):
    app = create_app(store, NO_WORKER)
    c = login(app, "viewer")
    for i in range(LIMIT):
        wrong = c.post("/api/me/password", json={"current": f"a wrong guess {i}", "new": "a brand new password"})
        assert wrong.status_code == 403, wrong.text
    right = c.post("/api/me/password", json={"current": PASSWORD, "new": "a brand new password"})
    assert right.status_code == 429 and "try again in" in right.json()["detail"], right.text
    assert verified(store, "viewer", PASSWORD) is not None  # unchanged
    elsewhere = TestClient(app, client=("203.0.113.7", 40000))  # the name is spent, wherever the guess comes from
    assert elsewhere.post("/api/login", json={"name": "viewer", "password": PASSWORD}).status_code == 429


def test_the_account_page_form_shares_the_limit_too(store):
    app = create_app(store, NO_WORKER)
    c = login(app, "viewer")
    form = {"current_password": "a wrong guess", "new_password": "a brand new password"}
    for _ in range(LIMIT):
        wrong = c.post("/account/password", data=form, follow_redirects=False)
        assert wrong.status_code == 303 and "error=password-wrong" in wrong.headers["location"]
    right = c.post("/account/password", data={**form, "current_password": PASSWORD}, follow_redirects=False)
    assert right.status_code == 303 and "error=login-throttled" in right.headers["location"]
    assert verified(store, "viewer", PASSWORD) is not None  # unchanged


def test_a_right_password_does_not_count_against_the_limit(store):
    app = create_app(store, NO_WORKER)
    for _ in range(3 * LIMIT):
        login(app, "viewer")
    c = login(app, "admin")
    for _ in range(LIMIT - 1):
        assert c.post("/api/login", json={"name": "admin", "password": "a wrong guess"}).status_code == 401
    login(app, "admin")


# ------------------------------------------------------------------------------- 4. files per request


def upload_routes(app) -> set[str]:
    """Every route of the app (pages too) that takes a file."""
    from fastapi.params import File

    try:  # FastAPI >= 0.165 keeps included routers nested in app.routes
        from fastapi.routing import iter_route_contexts

        routes = [r.route if hasattr(r, "route") else r for r in iter_route_contexts(app.routes)]
    except ImportError:
        routes = list(app.routes)
    return {
        route.path
        for route in routes
        if getattr(route, "dependant", None) is not None
        and any(isinstance(p.field_info, File) for p in route.dependant.body_params)
    }


def test_a_request_with_several_files_is_refused_whole_with_the_reason(store):
    app = create_app(store, NO_WORKER)
    assert upload_routes(app) == {"/api/uploads/{job_id}/photos"}  # the upload page sends its photos there
    c = login(app)
    job = c.post("/api/uploads", json={"place": "many bay"}).json()["id"]
    before = sorted(p.relative_to(store.dir) for p in store.dir.rglob("*") if p.is_file())
    many = [("file", (f"{i}.jpg", jpeg(i), "image/jpeg")) for i in range(500)]
    refused = c.post(f"/api/uploads/{job}/photos", files=many)
    assert refused.status_code == 413 and "one photo per request, not 500" in refused.json()["detail"], refused.text
    mixed = [("file", ("a.jpg", jpeg(1), "image/jpeg")), ("photos", ("b.jpg", jpeg(2), "image/jpeg"))]
    refused = c.post(f"/api/uploads/{job}/photos", files=mixed)  # a second file under another field name
    assert refused.status_code == 413 and "not 2" in refused.json()["detail"], refused.text
    assert staged(store, job) == []
    assert sorted(
        p.relative_to(store.dir) for p in store.dir.rglob("*") if p.is_file() and "catalog.db" not in p.name
    ) == [p for p in before if "catalog.db" not in p.name]
    for i in range(3):  # one per request: each stored
        assert c.post(f"/api/uploads/{job}/photos", files=[many[i]]).status_code == 201
    assert [f["name"] for f in staged(store, job)] == ["0.jpg", "1.jpg", "2.jpg"]


# ------------------------------------------------------------------------------ 7. pixels decoded at once


class Decodes:
    """Wraps a decoding function: the pixels being decoded at each moment, and the most at once."""

    def __init__(self, decode, pixels_of):
        self.decode, self.pixels_of = decode, pixels_of
        self.now = self.peak = self.calls = 0
        self.lock = threading.Lock()

    def __call__(self, source, *args, **kwargs):
        pixels = self.pixels_of(source)
        with self.lock:
            self.now += pixels
            self.peak = max(self.peak, self.now)
            self.calls += 1
        try:
            time.sleep(0.3)  # long enough that decodes allowed to overlap do
            return self.decode(source, *args, **kwargs)
        finally:
            with self.lock:
                self.now -= pixels


def concurrently(app, name: str, requests: list[tuple[str, str, dict]]) -> list[int]:
    """The requests sent at once through the app's own event loop (sync routes run on its thread pool)."""

    async def run() -> list[int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            answer = await c.post("/api/login", json={"name": name, "password": PASSWORD})
            c.headers["X-CSRF-Token"] = answer.json()["csrf"]
            answers = await asyncio.gather(*(c.request(method, url, **kw) for method, url, kw in requests))
            return [a.status_code for a in answers]

    return asyncio.run(run())


def test_uploads_decoded_at_once_stay_within_one_pixel_budget(store, monkeypatch):
    side = 1500
    limits = UploadLimits(pixels=side * side)  # the budget: twice the largest photo
    app = create_app(store, WebConfig(limits=limits, start_worker=False))
    c = login(app)
    job = c.post("/api/uploads", json={"place": "big bay"}).json()["id"]
    probe = Decodes(jobs.decode_bytes, lambda data: np.prod(Image.open(io.BytesIO(data)).size))
    monkeypatch.setattr(jobs, "decode_bytes", probe)
    photo = png(side, side)
    upload = ("POST", f"/api/uploads/{job}/photos", {"files": {"file": ("big.png", photo, "image/png")}})
    codes = concurrently(app, "reviewer", [upload] * 6)
    assert codes == [201] * 6 and probe.calls == 6
    assert probe.peak <= 2 * limits.pixels, f"{probe.peak / limits.pixels:g} photos decoded at once"


def test_renditions_made_at_once_stay_within_the_same_budget(store, monkeypatch):
    app = create_app(store, NO_WORKER)
    queue = login(app).get("/api/queue", params={"limit": 6}).json()
    assert len(queue) == 6
    sides = [Image.open(store.dir / "photos" / photo_file(store, q["photo"])[0]).size for q in queue]
    largest = max(w * h for w, h in sides)
    app = create_app(store, WebConfig(limits=UploadLimits(pixels=largest), start_worker=False))
    probe = Decodes(images.open_image, lambda path: np.prod(Image.open(path).size))
    monkeypatch.setattr(images, "open_image", probe)
    codes = concurrently(app, "viewer", [("GET", f"/api/photos/{q['photo']}/image?size=full", {}) for q in queue])
    assert codes == [200] * 6 and probe.calls == 6
    assert probe.peak <= 2 * largest, f"{probe.peak / largest:g} photos decoded at once"


def test_the_worker_decodes_within_its_share_of_the_budget(store, monkeypatch):
    limits = UploadLimits(pixels=1_000_000)
    work = Jobs(store, limits)
    held = []
    monkeypatch.setattr(work, "_upload", lambda job_id, payload: held.append(work.budget.in_use) or {})
    job = work.create_upload(EncounterInfo(place="worker bay"), "reviewer")["id"]
    work.stage(job, jpeg(), "a.jpg")
    work.start(job)
    assert work.run_next() and held == [limits.pixels] and work.budget.in_use == 0


# --------------------------------------------------------------------------- 11. abandoned uploads


def backdate(store: CatalogStore, job_id: int, hours: float) -> None:
    with store.session() as session, session.begin():
        session.execute(update(Job).where(Job.id == job_id).values(updated_at=now() - timedelta(hours=hours)))


def state(store: CatalogStore, job_id: int) -> str:
    with store.reader() as session:
        return session.scalar(select(Job.state).where(Job.id == job_id))


def swept(store: CatalogStore, job_id: int) -> bool:
    """Expired with its staged photos removed (they go just after its row says expired)."""
    return state(store, job_id) == "expired" and not (store.dir / "uploads" / str(job_id)).exists()


def test_uploads_left_waiting_expire_at_start_and_while_the_server_runs(store):
    work = Jobs(store, UploadLimits(idle_hours=24), poll=0.05, sweep=0.1)
    old, recent, later = (work.create_upload(EncounterInfo(place=p), "reviewer")["id"] for p in "abc")
    for job in (old, recent, later):
        work.stage(job, jpeg(job), "a.jpg")
    backdate(store, old, 25)
    backdate(store, recent, 23)
    work.start_worker()
    try:
        assert state(store, old) == "expired"  # at start-up
        assert not (store.dir / "uploads" / str(old)).exists()
        refused = pytest.raises(ConflictError, work.stage, old, jpeg(), "late.jpg")  # answered with a 409
        assert "expired" in str(refused.value)
        assert "nothing arrived for 24 h" in work.get(old)["error"]
        assert state(store, recent) == state(store, later) == "receiving"
        backdate(store, later, 30)  # abandoned while the server runs: the next sweep expires it
        deadline = time.monotonic() + 20
        while not swept(store, later) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert state(store, later) == "expired" and not (store.dir / "uploads" / str(later)).exists()
        assert state(store, recent) == "receiving" and len(staged(store, recent)) == 1
    finally:
        work.stop_worker()


# ---------------------------------------------------------------------- 11. the CSRF header in the spec


def test_the_openapi_spec_declares_the_csrf_header_on_every_write(store):
    spec = TestClient(create_app(store, NO_WORKER)).get("/api/openapi.json").json()
    schemes = {name: s for name, s in spec["components"]["securitySchemes"].items() if s["type"] == "apiKey"}
    (csrf,) = [name for name, s in schemes.items() if s["in"] == "header" and s["name"] == "X-CSRF-Token"]
    writes = {
        f"{method.upper()} {path}": op
        for path, ops in spec["paths"].items()
        for method, op in ops.items()
        if method in UNSAFE
    }
    assert len(writes) >= 10
    for label, op in writes.items():
        declared = any(csrf in requirement for requirement in op.get("security", []))
        assert declared == (label != "POST /api/login"), label  # the way in has no session yet


# ---------------------------------------------------------------------------------- 10. the demo's admin


def test_the_demo_prints_an_admin_login_that_reaches_users_and_model(tmp_path, model, monkeypatch):
    import whaleid.web.demo as demo
    import whaleid.web.server as server

    built = CatalogStore.create(tmp_path / "demo", model.parent)  # stands in for the synthetic catalog
    monkeypatch.setattr(demo, "demo_catalog", lambda directory, db=None: built)
    served = []
    monkeypatch.setattr(server, "serve", lambda directory, *args: served.append(server.admin_account(built)))
    monkeypatch.delenv("WHALEID_DEMO_PASSWORD", raising=False)
    monkeypatch.delenv("WHALEID_DEMO_ADMIN_PASSWORD", raising=False)
    result = CliRunner().invoke(cli, ["serve", str(tmp_path / "demo"), "--demo"])
    assert result.exit_code == 0 and served, result.output
    logins = dict(line.split()[3:6:2] for line in result.output.splitlines() if line.startswith("demo "))
    assert set(logins) == {"demo", "admin"}, result.output
    app = create_app(built, NO_WORKER)
    admin = TestClient(app)
    answer = admin.post("/api/login", json={"name": "admin", "password": logins["admin"]})
    assert answer.status_code == 200 and answer.json()["role"] == "admin" and not answer.json()["must_change"]
    admin.headers["X-CSRF-Token"] = answer.json()["csrf"]
    assert admin.get("/api/users").status_code == 200
    assert (
        admin.post("/api/users", json={"name": "newcomer", "password": PASSWORD, "role": "viewer"}).status_code == 201
    )
    reviewer = TestClient(app)
    assert reviewer.post("/api/login", json={"name": "demo", "password": logins["demo"]}).json()["role"] == "reviewer"

    again = CliRunner().invoke(cli, ["serve", str(tmp_path / "demo"), "--demo"])  # a restart: new passwords
    assert again.exit_code == 0, again.output
    assert "admin" in again.output and logins["admin"] not in again.output
