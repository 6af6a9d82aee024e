"""Security of the review web app: who may write (roles, CSRF), the login form and its rate limit, path
traversal and open redirects, hostile uploads (too big, broken, not a photo, bombs, odd file names), and a
schema-driven fuzz of the JSON API that must never get a server error.

One catalog is built per module and never written to; each fixture below works on its own copy of it."""

from __future__ import annotations

import asyncio
import html
import io
import json
import os
import re
import shutil
import struct
import traceback
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

import numpy as np
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from PIL import Image
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.generation import GenerationMode
from sqlalchemy import select

from webapp import PASSWORD, build_catalog
from whaleid.store.catalog import CatalogStore
from whaleid.store.schema import Base, Job
from whaleid.web.config import WebConfig
from whaleid.web.jobs import UploadLimits
from whaleid.web.pages import MESSAGES
from whaleid.web.security import COOKIE, LOGIN_COOKIE
from whaleid.web.server import STATIC, create_app
from whaleid.web.users import account, add_user, log_in

UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}
ROLE_ORDER = ("viewer", "reviewer", "admin")
NO_WORKER = WebConfig(start_worker=False)
MB = 2**20
ENTRANCES = {("POST", "/api/login"), ("POST", "/login")}  # the way in: open to anyone, by design
CONTROL = {"viewer": "ctl-viewer", "reviewer": "ctl-reviewer", "admin": "ctl-admin"}  # users of the positive controls
FUZZ_EXAMPLES = 8  # per operation and mode: about 300 requests in all
FUZZER = "fuzz.admin.q7"  # the fuzz's own admin: no generated request can name it


# ---------------------------------------------------------------------------------------------- catalogs


@pytest.fixture(scope="module")
def pristine(tmp_path_factory, synth_csv, model) -> Path:
    """The catalog as built (users of every role, 49 pending photos), closed: only ever copied."""
    store = build_catalog(tmp_path_factory.mktemp("websec") / "built", synth_csv, model)
    for role, name in CONTROL.items():
        add_user(store, name, PASSWORD, role)
    for name in ("target-api", "target-page"):
        add_user(store, name, PASSWORD, "viewer")
    add_user(store, FUZZER, PASSWORD, "admin")
    store.engine.dispose()  # SQLite folds its WAL back into the file: a plain copy is the whole catalog
    return store.dir


def copy_of(pristine: Path, target: Path) -> CatalogStore:
    shutil.copytree(pristine, target)
    return CatalogStore(target)


@pytest.fixture(scope="module")
def catalog(pristine, tmp_path_factory) -> CatalogStore:
    """A copy shared by the tests that only read, or whose writes (uploads, logins) concern nobody else."""
    return copy_of(pristine, tmp_path_factory.mktemp("shared") / "catalog")


def snapshot(store: CatalogStore) -> dict:
    """Every row of every table, and every file under the catalog folder but the database's own."""
    with store.reader() as session:
        rows = {
            table.name: [tuple(r) for r in session.execute(select(table).order_by(*table.primary_key.columns))]
            for table in Base.metadata.sorted_tables
        }
    return {"rows": rows, "files": files(store)}


def files(store: CatalogStore) -> set[str]:
    return {
        p.relative_to(store.dir).as_posix()
        for p in store.dir.rglob("*")
        if p.is_file() and not p.name.startswith("catalog.db")
    }


def changed(before: dict, after: dict) -> list[str]:
    """What differs between two snapshots (table names, and files added or removed), for messages."""
    out = [name for name in before["rows"] if before["rows"][name] != after["rows"].get(name)]
    out += [f"+{f}" for f in sorted(after["files"] - before["files"])]
    out += [f"-{f}" for f in sorted(before["files"] - after["files"])]
    return out


def login(app, name: str) -> tuple[TestClient, str]:
    """A client logged in as ``name`` (the session cookie in its jar) and its CSRF token, NOT set as a header."""
    c = TestClient(app)
    answer = c.post("/api/login", json={"name": name, "password": PASSWORD})
    assert answer.status_code == 200, answer.text
    return c, answer.json()["csrf"]


def jpeg(side: int = 64, seed: int = 0, quality: int = 90) -> bytes:
    """A real photo: noise, so that its size grows with ``side`` (about 0.9 byte per pixel at q90)."""
    pixels = np.random.RandomState(seed).randint(0, 256, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


# ------------------------------------------------------------------------------ 1. every write is guarded


@dataclass
class Write:
    """What a write route needs: the least role that may send it, a plausible body, its path parameters."""

    role: str
    json: dict | None = None
    form: dict | None = None
    upload: bool = False
    params: dict = field(default_factory=dict)


def plausible(ids: dict) -> dict[tuple[str, str], Write]:
    """A request that each known write route accepts from its role (checked: the positive control)."""
    return {
        ("POST", "/api/logout"): Write("viewer", json={}),
        ("POST", "/api/me/password"): Write("viewer", json={"current": PASSWORD, "new": PASSWORD}),
        ("POST", "/api/photos/{photo_id}/decision"): Write("reviewer", json={"kind": "unsure"}),
        ("POST", "/api/decisions/{decision_id}/undo"): Write("reviewer", json={}),
        ("POST", "/api/individuals/{catalog_id}/merge"): Write(
            "reviewer", json={"into": ids["individuals"][1]}, params={"catalog_id": ids["individuals"][0]}
        ),
        ("POST", "/api/uploads"): Write("reviewer", json={"date": "2026-08-01", "place": "test bay"}),
        ("POST", "/api/uploads/{job_id}/photos"): Write("reviewer", upload=True, params={"job_id": ids["empty_job"]}),
        ("POST", "/api/uploads/{job_id}/start"): Write("reviewer", json={}, params={"job_id": ids["full_job"]}),
        ("POST", "/api/users"): Write("admin", json={"name": "newcomer-api", "password": PASSWORD, "role": "viewer"}),
        ("PATCH", "/api/users/{name}"): Write("admin", json={"role": "reviewer"}, params={"name": "target-api"}),
        ("POST", "/api/models/{version}/activate"): Write("admin", json={}),
        ("POST", "/logout"): Write("viewer", form={}),
        ("POST", "/account/password"): Write("viewer", form={"current_password": PASSWORD, "new_password": PASSWORD}),
        ("POST", "/individuals/{catalog_id}/merge"): Write(
            "reviewer", form={"into": ids["individuals"][3]}, params={"catalog_id": ids["individuals"][2]}
        ),
        ("POST", "/users"): Write("admin", form={"name": "newcomer-page", "password": PASSWORD, "role": "viewer"}),
        ("POST", "/users/{name}"): Write("admin", form={"role": "reviewer"}, params={"name": "target-page"}),
        ("POST", "/models/{version}/activate"): Write("admin", form={}),
    }


def write_routes(app) -> set[tuple[str, str]]:
    """Every (method, path) of the app that may change something, included routers flattened."""
    try:  # FastAPI >= 0.165 keeps included routers nested in app.routes
        from fastapi.routing import iter_route_contexts

        routes = [(r.path, r.methods) for r in iter_route_contexts(app.routes)]
    except ImportError:
        routes = [(getattr(r, "path", None), getattr(r, "methods", None)) for r in app.routes]
    return {(m, path) for path, methods in routes if path and methods for m in methods & UNSAFE}


def url_of(path: str, params: dict, defaults: dict) -> str:
    def value(match: re.Match) -> str:
        name = match.group(1)
        return quote(str(params.get(name, defaults.get(name, "1"))), safe="")

    return re.sub(r"\{(\w+)(?::\w+)?\}", value, path)


def logged_out(answer, page: bool) -> bool:
    """Refused for want of a session: the API answers 401; a page's form leads to the login page."""
    if page:
        return answer.status_code == 303 and answer.headers["location"].startswith("/login?")
    return answer.status_code == 401


def detail(answer, page: bool) -> str:
    """Why a request was refused: the API's JSON detail, or the text of a page's refusal page."""
    return html.unescape(answer.text) if page else answer.json()["detail"]


def send(c: TestClient, method: str, url: str, spec: Write, token: str | None = None, in_form: bool = False):
    """The route's request; the CSRF token (if any) as the header, or as the form field ``csrf`` like a page."""
    headers = {"X-CSRF-Token": token} if token and not in_form else {}
    form = dict(spec.form or {})
    if token and in_form:
        form["csrf"] = token
    kwargs: dict = {}
    if spec.upload:
        kwargs["files"] = {"file": ("fin.jpg", jpeg(), "image/jpeg")}
        if form:
            kwargs["data"] = form
    elif spec.form is not None:
        kwargs["data"] = form
    elif spec.json is not None:
        kwargs["json"] = spec.json
    return c.request(method, url, headers=headers, follow_redirects=False, **kwargs)


@pytest.fixture(scope="module")
def guarded(pristine, tmp_path_factory):
    """Its own catalog (the positive controls change it) and the values that make each request plausible."""
    store = copy_of(pristine, tmp_path_factory.mktemp("guarded") / "catalog")
    app = create_app(store, NO_WORKER)
    admin, token = login(app, "admin")
    h = {"X-CSRF-Token": token}
    empty_job = admin.post("/api/uploads", json={"place": "a"}, headers=h).json()["id"]
    full_job = admin.post("/api/uploads", json={"place": "b"}, headers=h).json()["id"]
    staged = admin.post(f"/api/uploads/{full_job}/photos", files={"file": ("a.jpg", jpeg(), "image/jpeg")}, headers=h)
    assert staged.status_code == 201, staged.text
    ids = {
        "individuals": [i["individual"] for i in admin.get("/api/individuals").json()],
        "photo_id": admin.get("/api/queue").json()[0]["photo"],
        "decision_id": admin.get("/api/decisions").json()[0]["id"],
        "catalog_id": admin.get("/api/individuals").json()[0]["individual"],
        "job_id": full_job,
        "empty_job": empty_job,
        "full_job": full_job,
        "name": "target-api",
        "version": admin.get("/api/models").json()[0]["version"],
    }
    assert len(ids["individuals"]) >= 4
    return store, app, ids


def test_every_write_route_refuses_strangers_lower_roles_and_requests_without_the_csrf_token(guarded):
    """Each write route of the app (found in app.routes, so a new one is covered too), but the login: 401 when
    logged out, 403 for each role below its own, 403 without the session's CSRF token or with another
    session's, and nothing changed in the database or the catalog folder; then the same request from its
    role, with its token, is accepted and does change something (so the refusals were not about the body)."""
    store, app, ids = guarded
    table = plausible(ids)
    routes = write_routes(app)
    assert set(table) <= routes, f"known write routes not found (renamed? update the table): {set(table) - routes}"
    anonymous = TestClient(app)
    users = {role: login(app, role) for role in ROLE_ORDER}
    controls: dict[str, tuple[TestClient, str]] = {}
    checked = []
    for method, path in sorted(routes - ENTRANCES):
        generic = Write(
            "reviewer", json={} if path.startswith("/api/") else None, form=None if path.startswith("/api/") else {}
        )
        spec = table.get((method, path), generic)
        url = url_of(path, spec.params, ids)
        page = not path.startswith("/api/")
        label = f"{method} {url}"
        if (method, path) in table and spec.role not in controls:  # logged in before the snapshot: a login writes
            controls[spec.role] = login(app, CONTROL[spec.role])
        before = snapshot(store)

        answer = send(anonymous, method, url, spec)
        assert logged_out(answer, page), f"{label} anonymous: {answer.status_code} {answer.text[:200]}"
        answer = send(anonymous, method, url, spec, users["admin"][1], in_form=page)  # a stolen token, no cookie
        assert logged_out(answer, page), f"{label} anonymous with a token: {answer.status_code}"
        for role in ROLE_ORDER[: ROLE_ORDER.index(spec.role)]:  # every role below the one it needs
            c, token = users[role]
            answer = send(c, method, url, spec, token, in_form=page)
            assert answer.status_code == 403, f"{label} as {role}: {answer.status_code} {answer.text[:200]}"
            assert "role" in detail(answer, page), label
        holder = "admin" if spec.role == "admin" else "reviewer"  # has the role: only the token is missing
        c, token = users[holder]
        answer = send(c, method, url, spec)
        assert answer.status_code == 403, f"{label} as {holder} without CSRF token: {answer.status_code}"
        assert "CSRF" in detail(answer, page), label
        other = users["viewer"][1]  # a real token, of another session
        answer = send(c, method, url, spec, other, in_form=page)
        assert answer.status_code == 403, f"{label} as {holder} with another session's token: {answer.status_code}"
        assert "CSRF" in detail(answer, page), label
        after = snapshot(store)
        assert after == before, f"{label}: a refused request changed {changed(before, after)}"

        if (method, path) in table:  # the same request, from its role with its token, is accepted and changes things
            c, token = controls[spec.role]
            answer = send(c, method, url, spec, token, in_form=page)
            assert answer.status_code in (200, 201, 202, 303), f"{label} control: {answer.status_code} {answer.text}"
            assert "error=" not in answer.headers.get("location", ""), f"{label} control: {answer.headers}"
            assert snapshot(store) != after, f"{label} control changed nothing: the test would prove nothing"
            if account(store, c.cookies.get(COOKIE)) is None:  # logged out, or its password changed
                del controls[spec.role]
        checked.append(label)
    assert len(checked) >= len(table)


def test_bodies_are_bounded_before_they_are_read(catalog):
    app = create_app(
        catalog, WebConfig(limits=UploadLimits(file_bytes=1 * MB, request_bytes=2 * MB), start_worker=False)
    )
    c, token = login(app, "reviewer")
    h = {"X-CSRF-Token": token}
    jobs = len(c.get("/api/jobs").json())
    big = c.post(
        "/api/uploads",
        content=json.dumps({"notes": "x" * (MB + 10)}),
        headers={**h, "content-type": "application/json"},
    )
    assert big.status_code == 413 and "too large" in big.json()["detail"]
    assert len(c.get("/api/jobs").json()) == jobs

    job = c.post("/api/uploads", json={"place": "bounded"}, headers=h).json()["id"]
    before = files(catalog)

    def chunks():
        yield b'--x\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n\r\n'
        yield jpeg()
        yield b"\r\n--x--\r\n"

    chunked = c.post(
        f"/api/uploads/{job}/photos", content=chunks(), headers={**h, "content-type": "multipart/form-data; boundary=x"}
    )
    assert chunked.status_code == 411, chunked.text
    assert "Content-Length" in chunked.json()["detail"]
    assert files(catalog) == before


# ------------------------------------------------------------------------------------ 2. the login door


def login_page(c: TestClient, next: str | None = None) -> tuple[str, str]:
    """GET the login page: its CSRF token (also set as the login cookie) and its hidden ``next`` field."""
    page = c.get("/login", params={"next": next} if next is not None else None)
    assert page.status_code == 200, page.text
    token = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    hidden = re.search(r'name="next" value="([^"]*)"', page.text).group(1)
    return token, html.unescape(hidden)


def assert_not_logged_in(answer, c: TestClient, why: str) -> None:
    assert answer.status_code == 303, answer.text
    location = answer.headers["location"]
    assert location.startswith("/login?error="), location
    assert why in MESSAGES[parse_qs(urlsplit(location).query)["error"][0]].lower(), location
    assert COOKIE not in answer.headers.get("set-cookie", "")
    assert c.get("/api/me").status_code == 401


def test_the_login_form_needs_its_own_csrf_token(catalog):
    app = create_app(catalog, NO_WORKER)
    form = {"name": "reviewer", "password": PASSWORD, "next": "/"}
    c = TestClient(app)
    token, _ = login_page(c)
    assert c.cookies.get(LOGIN_COOKIE) == token

    assert_not_logged_in(c.post("/login", data=form, follow_redirects=False), c, "expired")
    wrong = c.post("/login", data={**form, "csrf": f"wrong-{token}"}, follow_redirects=False)
    assert_not_logged_in(wrong, c, "expired")
    # a forged cross-site post carries the attacker's own token but not the victim's (SameSite=Strict) cookie
    victim = TestClient(app)
    assert_not_logged_in(victim.post("/login", data={**form, "csrf": token}, follow_redirects=False), victim, "expired")

    accepted = c.post("/login", data={**form, "csrf": token}, follow_redirects=False)
    assert accepted.status_code == 303 and accepted.headers["location"] == "/", accepted.headers
    assert c.get("/api/me").json()["name"] == "reviewer"


def test_logins_are_rate_limited_per_address_and_per_name(catalog):
    app = create_app(catalog, NO_WORKER)  # at most 5 failed logins per address and per name
    c = TestClient(app)
    for attempt in range(5):
        wrong = c.post("/api/login", json={"name": "reviewer", "password": f"not the password {attempt}"})
        assert wrong.status_code == 401, wrong.text
    right = c.post("/api/login", json={"name": "reviewer", "password": PASSWORD})
    assert right.status_code == 429, right.text
    assert "too many failed logins" in right.json()["detail"]
    assert COOKIE not in right.headers.get("set-cookie", "")
    assert c.get("/api/me").status_code == 401

    token, _ = login_page(c)  # the form is the same door
    form = c.post("/login", data={"name": "reviewer", "password": PASSWORD, "csrf": token}, follow_redirects=False)
    assert_not_logged_in(form, c, "too many failed logins")
    assert c.post("/api/login", json={"name": "admin", "password": PASSWORD}).status_code == 429  # this address
    elsewhere = TestClient(app, client=("203.0.113.7", 40000))
    assert elsewhere.post("/api/login", json={"name": "reviewer", "password": PASSWORD}).status_code == 429  # name
    assert elsewhere.post("/api/login", json={"name": "admin", "password": PASSWORD}).status_code == 200


# ------------------------------------------------------------------------- 3. traversal, open redirects


def raw_request(
    app, method: str, target: str, cookie: str | None = None, body: bytes = b"", headers: dict | None = None
) -> tuple[int, dict, bytes]:
    """``target`` sent exactly as an HTTP server hands it to the app: percent-decoded, dot segments kept
    (an HTTP client would normalise ``/static/../x`` before sending; an attacker's does not)."""
    path, _, query = target.partition("?")
    sent = [(b"host", b"testserver"), (b"content-length", str(len(body)).encode())]
    sent += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    if cookie:
        sent.append((b"cookie", f"{COOKIE}={cookie}".encode()))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": unquote(path),
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": sent,
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    messages: list[dict] = []

    async def exchange() -> None:
        done = asyncio.Event()
        pending = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive() -> dict:
            if pending:
                return pending.pop()
            await done.wait()  # as a server does: the client is gone once the answer is complete
            return {"type": "http.disconnect"}

        async def reply(message: dict) -> None:
            messages.append(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                done.set()

        await asyncio.wait_for(app(scope, receive, reply), timeout=60)

    asyncio.run(exchange())
    start = messages[0]
    answered = {k.decode().lower(): v.decode() for k, v in start["headers"]}
    return start["status"], answered, b"".join(m.get("body", b"") for m in messages[1:])


def stays_on_site(location: str) -> bool:
    """Whether a browser at http://testserver/ stays there: it drops tabs and newlines and leading controls,
    reads ``\\`` as ``/``, and takes any ``//`` (or ``///``...) start as another host."""
    cleaned = re.sub(r"[\t\n\r]", "", location).strip("".join(map(chr, range(33)))).replace("\\", "/")
    return cleaned.startswith("/") and not cleaned.startswith("//")


def test_paths_never_reach_files_outside_the_static_folder(catalog):
    app = create_app(catalog, NO_WORKER)
    admin, token = login(app, "admin")
    cookie = admin.cookies.get(COOKIE)
    db = catalog.dir / "catalog.db"
    up = os.path.relpath(db, STATIC)  # ../../../catalog.db: where a naive join of the static folder lands
    absolute = str(db)
    secrets_ = [
        b"SQLite format 3",
        (STATIC.parent / "server.py").read_bytes()[:80],
        (catalog.dir / "catalog.json").read_bytes()[:30],
    ]
    if Path("/etc/passwd").is_file():
        secrets_.append(Path("/etc/passwd").read_bytes()[:30])
    photo = admin.get("/api/queue").json()[0]["photo"]
    somebody = admin.get("/api/individuals").json()[0]["individual"]

    status, _, body = raw_request(app, "GET", "/static/app.css", cookie)  # the helper does reach real files
    assert status == 200 and body == (STATIC / "app.css").read_bytes()
    assert raw_request(app, "GET", f"/api/individuals/{somebody}", cookie)[0] == 200

    targets = [
        "/static/../server.py",
        "/static/%2e%2e/server.py",
        "/static/..%2fserver.py",
        "/static/%2e%2e%2fserver.py",
        "/static/..%5cserver.py",
        "/static/" + up,
        "/static/" + quote(up, safe=""),
        "/static/" + up.replace("..", "%2e%2e"),
        "/static/" + absolute,
        "/static/" + quote(absolute, safe=""),
        "/static//etc/passwd",
        "/static/%2Fetc%2Fpasswd",
        "/../catalog.db",
        "/%2e%2e/%2e%2e/etc/passwd",
        "/api/docs/../../catalog.db",
        "/api/individuals/..%2F..%2Fcatalog.db",
        "/api/individuals/../../catalog.db",
        "/api/individuals/" + quote(up, safe=""),
        "/api/individuals/" + quote(absolute, safe=""),
        "/individuals/..%2F..%2Fcatalog.db",
        "/individuals/" + quote(absolute, safe=""),
        "/api/photos/../../catalog.db/image",
        "/api/photos/..%2F..%2Fcatalog.db/image",
        f"/api/photos/{photo}/image?size=..%2F..%2Fcatalog.db",
        f"/api/photos/{photo}/image?size=" + quote(absolute, safe=""),
        "/api/export/..%2F..%2Fcatalog.db",
        "/api/export/" + quote(absolute, safe=""),
        "/api/encounters/..%2F..%2Fcatalog.db",
        "/api/jobs/..%2F..%2Fcatalog.db",
        "/review/..%2F..%2Fcatalog.db",
        "/encounters/" + quote(absolute, safe=""),
    ]
    for target in targets:
        status, answered, body = raw_request(app, "GET", target, cookie)
        redirect = 300 <= status < 400 and stays_on_site(answered.get("location", ""))
        assert 400 <= status < 500 or redirect, f"GET {target}: {status} {body[:200]!r}"
        assert not any(s in body for s in secrets_), f"GET {target} answered a file's content: {body[:200]!r}"

    before = snapshot(catalog)
    form = {"content-type": "application/x-www-form-urlencoded"}
    as_json = {"content-type": "application/json", "x-csrf-token": token}
    writes = [
        ("POST", "/api/individuals/..%2F..%2Fcatalog.db/merge", json.dumps({"into": somebody}), as_json),
        ("POST", f"/api/individuals/{somebody}/merge", json.dumps({"into": "../../catalog.db"}), as_json),
        ("POST", "/api/individuals/" + quote(absolute, safe="") + "/merge", json.dumps({"into": somebody}), as_json),
        ("PATCH", "/api/users/..%2F..%2Fcatalog.db", json.dumps({"role": "viewer"}), as_json),
        ("POST", "/users/..%2F..%2Fcatalog.db", f"role=viewer&csrf={token}", form),
        ("POST", "/individuals/..%2F..%2Fcatalog.db/merge", f"into={somebody}&csrf={token}", form),
        ("POST", f"/individuals/{somebody}/merge", f"into=..%2F..%2Fcatalog.db&csrf={token}", form),
    ]
    for method, target, body, headers in writes:
        status, answered, answer = raw_request(app, method, target, cookie, body.encode(), headers)
        redirect = status == 303 and stays_on_site(answered["location"]) and "error=" in answered["location"]
        assert 400 <= status < 500 or redirect, f"{method} {target}: {status} {answered} {answer[:200]!r}"
    assert snapshot(catalog) == before


OFF_SITE = [
    "//evil.example",
    "/\\evil.example",
    "/\t/evil.example",
    "/\n/evil.example",
    "\\\\evil.example",
    "https://evil.example/",
    "///evil.example",
    " //evil.example",
    "//evil.example/login",
    "http:evil.example",
    "javascript:alert(document.cookie)",
    "%2F%2Fevil.example",
]


def a_path(value: str) -> bool:
    """A value the login form may carry back as ``next``: a path of this site, as the server means it."""
    return value.startswith("/") and value[1:2] not in ("/", "\\")


def test_after_login_the_browser_stays_on_this_site(catalog):
    app = create_app(catalog, NO_WORKER)
    c = TestClient(app)
    for target in OFF_SITE:
        _, hidden = login_page(c, target)
        assert a_path(hidden), f"login page for next={target!r} carries next={hidden!r}"
    for target in OFF_SITE[:8]:  # each is a real login (a password hash to check): the likeliest ones
        token, _ = login_page(c)
        form = {"name": "viewer", "password": PASSWORD, "csrf": token, "next": target}
        answer = c.post("/login", data=form, follow_redirects=False)
        assert answer.status_code == 303, answer.text
        assert stays_on_site(answer.headers["location"]), f"next={target!r} sent the browser to {answer.headers}"
    # a page asked for while logged out sends to the login page with itself as `next`: whatever its path
    # smuggles into that address, the login form keeps the browser on this site
    anonymous = TestClient(app)
    answer = anonymous.get("/individuals/x%26next=https:evil.example", follow_redirects=False)
    assert answer.status_code == 303 and stays_on_site(answer.headers["location"]), answer.headers
    page = anonymous.get(answer.headers["location"])
    hidden = html.unescape(re.search(r'name="next" value="([^"]*)"', page.text).group(1))
    assert a_path(hidden), hidden


def test_messages_in_the_address_are_only_the_servers_own(catalog):
    """``?error=`` and ``?note=`` (after a form post) name one of the server's messages: anything else in
    the address, markup or a phishing line, is not shown at all."""
    c = TestClient(create_app(catalog, NO_WORKER))
    script = "<script>alert(document.cookie)</script>"
    image = '"><img src=x onerror=alert(1)>'
    page = c.get("/login", params={"error": script, "note": image})
    assert page.status_code == 200
    assert "alert(" not in page.text and "<img src=x" not in page.text
    known = c.get("/login", params={"error": "login-expired", "note": "logged-out"})
    assert html.escape(MESSAGES["login-expired"]) in known.text and MESSAGES["logged-out"] in known.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY" and page.headers["x-content-type-options"] == "nosniff"


# ------------------------------------------------------------------------------------------- 4. uploads

LIMITS = UploadLimits(file_bytes=1 * MB, request_bytes=2 * MB, pixels=50_000_000, files_per_job=3)


def png_of_zeros(width: int, height: int) -> bytes:
    """A valid 1-bit greyscale PNG, all black, built row by row: a few KB for many megapixels, never held
    decoded in memory here (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = bytes(1 + (width + 7) // 8)  # filter byte 0 and the packed pixels
    packer = zlib.compressobj(9)
    data = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def gif_claiming(width: int, height: int) -> bytes:
    """A tiny real GIF whose logical screen claims ``width`` x ``height`` pixels."""
    data = bytearray(encoded(Image.new("P", (4, 4)), "GIF"))
    data[6:10] = struct.pack("<HH", width, height)
    return bytes(data)


def multipart(name: str, data: bytes, content_type: str = "application/octet-stream") -> tuple[bytes, dict]:
    """One ``file`` part with exactly this file name (no client-side clean-up of it)."""
    boundary = "whaleid-test-boundary-5b1c"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
        f"Content-Type: {content_type}\r\n\r\n"
    ).encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), {
        "content-type": f"multipart/form-data; boundary={boundary}"
    }


def upload(c: TestClient, token: str, job: int, name: str, data: bytes):
    body, headers = multipart(name, data)
    return c.post(f"/api/uploads/{job}/photos", content=body, headers={**headers, "X-CSRF-Token": token})


def staged(store: CatalogStore, job: int) -> list[dict]:
    with store.reader() as session:
        return list(session.get(Job, job).payload["files"])


def heic() -> bytes:
    """A real HEIC photo, or a skip where this pillow_heif cannot encode one."""
    try:
        import pillow_heif

        buffer = io.BytesIO()
        pillow_heif.from_pillow(Image.new("RGB", (64, 48), (20, 90, 160))).save(buffer, format="HEIF")
        return buffer.getvalue()
    except Exception as error:  # no HEVC encoder in this libheif build
        pytest.skip(f"pillow_heif cannot write HEIC here: {error}")


@pytest.fixture
def uploader(catalog):
    app = create_app(catalog, WebConfig(limits=LIMITS, start_worker=False))  # no worker: staged files stay staged
    c, token = login(app, "reviewer")

    def new_job() -> int:
        answer = c.post("/api/uploads", json={"place": "hostile bay"}, headers={"X-CSRF-Token": token})
        assert answer.status_code == 201 and answer.json()["state"] == "receiving", answer.text
        return answer.json()["id"]

    return c, token, new_job


def test_refused_uploads_answer_why_and_leave_nothing_behind(catalog, uploader, fixtures):
    c, token, new_job = uploader
    broken = fixtures / "images"
    big = jpeg(1200)  # a real photo over the 1 MB per-file limit, within the 2 MB request limit
    huge = jpeg(1700)  # over the request limit: refused from its Content-Length, before it is read
    assert LIMITS.file_bytes < len(big) < LIMITS.request_bytes < len(huge)
    pixels = png_of_zeros(8000, 8000)  # 64 Mpx: under Pillow's own guard, over this server's 50 Mpx
    bomb = png_of_zeros(20000, 20000)  # 400 Mpx in about 50 KB: over Pillow's guard
    assert len(bomb) < 64 * 1024
    cases = [  # file name, bytes, status, what the detail must say
        ("big.jpg", big, 413, "larger than 1 MB"),
        ("huge.jpg", huge, 413, "request too large"),
        ("truncated.jpg", (broken / "truncated.jpg").read_bytes(), 422, "truncated"),
        ("truncated.png", (broken / "truncated.png").read_bytes(), 422, "truncated"),
        ("zero_tail.jpg", (broken / "zero_tail.jpg").read_bytes(), 422, "truncated"),
        ("zero_tail.png", (broken / "zero_tail.png").read_bytes(), 422, "truncated"),
        ("not_an_image.jpg", (broken / "not_an_image.jpg").read_bytes(), 415, "not an image"),
        ("notes.jpg", b"field notes, not a photo\n" * 40, 415, "not an image"),
        ("empty.jpg", (broken / "empty.jpg").read_bytes(), 422, "empty"),
        ("fin.gif", encoded(Image.new("RGB", (32, 32), (9, 9, 9)), "GIF"), 415, "GIF photos are not accepted"),
        ("fin.bmp", encoded(Image.new("RGB", (32, 32), (9, 9, 9)), "BMP"), 415, "BMP photos are not accepted"),
        ("pixels.png", pixels, 413, "8000x8000"),
        ("bomb.png", bomb, 413, "decompression bomb"),
        ("bomb.gif", gif_claiming(65535, 65535), 413, "decompression bomb"),
        ("../../evil.jpg", b"#!/bin/sh\necho not a photo\n", 415, "../../evil.jpg: not an image"),
    ]
    job = new_job()
    before = files(catalog)
    for name, data, status, detail in cases:
        answer = upload(c, token, job, name, data)
        assert answer.status_code == status, f"{name}: {answer.status_code} {answer.text[:300]}"
        assert detail in answer.json()["detail"], f"{name}: {answer.json()}"
        assert files(catalog) == before, f"{name} left {files(catalog) - before}"
        assert staged(catalog, job) == [], name

    good = (broken / "rgb.jpg").read_bytes()
    missing = upload(c, token, 10**6, "fin.jpg", good)  # no such upload: refused before anything is written
    assert missing.status_code == 404 and "no upload" in missing.json()["detail"]
    assert files(catalog) == before
    done = new_job()
    assert upload(c, token, done, "a.jpg", good).status_code == 201
    assert c.post(f"/api/uploads/{done}/start", headers={"X-CSRF-Token": token}).status_code == 200
    before = files(catalog)
    late = upload(c, token, done, "late.jpg", good)  # the upload is queued: no more photos
    assert late.status_code == 409 and "queued" in late.json()["detail"]
    assert files(catalog) == before and len(staged(catalog, done)) == 1
    full = new_job()
    for i in range(LIMITS.files_per_job):
        assert upload(c, token, full, f"{i}.jpg", good).status_code == 201
    before = files(catalog)
    over = upload(c, token, full, "one-too-many.jpg", good)
    assert over.status_code == 413 and f"at most {LIMITS.files_per_job} photos" in over.json()["detail"]
    assert files(catalog) == before
    assert len(staged(catalog, full)) == LIMITS.files_per_job


def test_accepted_uploads_get_server_made_names(catalog, uploader, fixtures):
    c, token, new_job = uploader
    photos = [  # the user's file name, bytes, the suffix the server gives it
        ("../../evil.jpg", (fixtures / "images" / "rgb.jpg").read_bytes(), ".jpg"),
        ("/etc/passwd", (fixtures / "images" / "palette.png").read_bytes(), ".png"),
        ("..\\..\\evil.tif", encoded(Image.new("RGB", (40, 30), (200, 10, 10)), "TIFF"), ".tif"),
    ]
    job = new_job()
    passwd = Path("/etc/passwd").read_bytes() if Path("/etc/passwd").is_file() else None
    for i, (name, data, suffix) in enumerate(photos):
        before = files(catalog)
        answer = upload(c, token, job, name, data)
        assert answer.status_code == 201, f"{name}: {answer.text}"
        assert answer.json()["name"] == name  # kept as data...
        new = files(catalog) - before
        assert len(new) == 1, new
        stored = new.pop()
        assert re.fullmatch(rf"uploads/{job}/[0-9a-f]{{24}}\{suffix}", stored), stored  # ...never as a path
        assert (catalog.dir / stored).read_bytes() == data
        entry = staged(catalog, job)[i]
        assert entry == {"file": stored, "name": name, "size": len(data)}
    assert not list(catalog.dir.rglob("evil*")), "a file was written under the user's name"
    for base in (catalog.dir / "uploads" / str(job), catalog.dir, Path.cwd()):  # where a naive join would land
        assert not (base / "../../evil.jpg").resolve().exists()
    if passwd is not None:
        assert Path("/etc/passwd").read_bytes() == passwd
    shown = c.get(f"/api/jobs/{job}")
    assert shown.json()["files"] == len(photos) and "uploads/" not in shown.text  # staged paths stay private

    job = new_job()
    data = heic()
    before = files(catalog)
    answer = upload(c, token, job, "IMG_0001.HEIC", data)
    assert answer.status_code == 201 and answer.json()["format"] == "HEIF", answer.text
    (stored,) = files(catalog) - before
    assert re.fullmatch(rf"uploads/{job}/[0-9a-f]{{24}}\.heic", stored), stored


# ------------------------------------------------------------------------------------------ 5. fuzzing


class FuzzSession:
    """The fuzz's admin session: logged in again (directly, past the login rate limit that fuzzed logins
    trip) whenever a fuzzed request ended it (a logout)."""

    def __init__(self, store: CatalogStore):
        self.store = store
        self.renew()

    def renew(self) -> None:
        found = log_in(self.store, FUZZER, PASSWORD, 1.0)
        assert found is not None
        self.token, self.csrf = found[0], found[1].csrf

    def credentials(self) -> tuple[dict, dict]:
        if account(self.store, self.token) is None:
            self.renew()
        return {"X-CSRF-Token": self.csrf}, {COOKIE: self.token}


@pytest.fixture(scope="module")
def fuzzed(pristine, tmp_path_factory):
    store = copy_of(pristine, tmp_path_factory.mktemp("fuzz") / "catalog")
    return create_app(store, NO_WORKER), FuzzSession(store)  # no worker: fuzzed uploads are never embedded


def test_fuzzed_api_requests_never_get_a_server_error(fuzzed):
    """Every operation of the OpenAPI schema, with data that fits it and data that does not, as an admin."""
    app, session = fuzzed
    schema = schemathesis.openapi.from_asgi("/api/openapi.json", app)
    operations = list(schema.get_all_operations())
    assert all(isinstance(o, Ok) for o in operations), [o.err() for o in operations if not isinstance(o, Ok)]
    operations = [o.ok() for o in operations]
    assert len(operations) >= 20, [o.label for o in operations]
    errors, sent = [], []  # failures; (operation, status) of every request
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @settings(
                max_examples=FUZZ_EXAMPLES,
                deadline=None,
                derandomize=True,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy(mode))
            def fuzz(case):
                headers, cookies = session.credentials()
                response = case.call(headers=headers, cookies=cookies)
                sent.append((case.operation.label, response.status_code))
                assert response.status_code < 500, f"{response.status_code} {response.text[:500]}"
                case.validate_response(response, checks=[not_a_server_error], headers=headers)

            try:
                fuzz()
            except Unsatisfiable:  # nothing to make invalid: no parameters and no body
                assert mode is GenerationMode.NEGATIVE and not operation.body and not list(operation.iter_parameters())
            except Exception as error:  # every operation is fuzzed, then every failure reported
                errors.append(f"{operation.label} ({mode.value}): {''.join(traceback.format_exception_only(error))}")
    assert not errors, "\n\n".join(errors)
    assert {label for label, _ in sent} == {o.label for o in operations}
    unauthorised = {label for label, status in sent if status == 401}
    assert unauthorised <= {"POST /api/login"}, f"the fuzz was not logged in for {unauthorised}"
