"""The HTML pages: server-rendered, each a thin view over the same functions as the API."""

from __future__ import annotations

import secrets
from datetime import date
from pathlib import Path
from typing import Annotated
from urllib.parse import quote, urlencode, urlsplit

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates

from whaleid.errors import UserError
from whaleid.store import browse
from whaleid.store.edits import MAX_NAME
from whaleid.store.errors import ConflictError
from whaleid.store.users import users as listed_users
from whaleid.web.api import PhotoId, Text, login_response, password_is
from whaleid.web.jobs import Refused
from whaleid.web.security import COOKIE, LOGIN_COOKIE, current, login_csrf_ok, page_reader, writer
from whaleid.web.users import MIN_PASSWORD, Account, add_user, change_user, log_out

templates = Jinja2Templates(directory=Path(__file__).parent / "templates")
router = APIRouter(include_in_schema=False)
Viewer = Annotated[Account, Depends(page_reader)]
Reviewer = Annotated[Account, Depends(writer("reviewer"))]
Admin = Annotated[Account, Depends(writer("admin"))]
AnyUser = Annotated[Account, Depends(writer("viewer"))]

# What a page's banner may say. The address names a message by its code: a link cannot make a page say
# anything of its own (a phishing line in a trusted banner), so an unknown code shows nothing.
MESSAGES = {
    "login-expired": "The login form expired: try again.",
    "login-failed": "Wrong name or password.",
    "login-throttled": "Too many failed logins: wait a minute, then try again.",
    "session-ended": "Your session has ended: log in again, then send the form again.",
    "logged-out": "Logged out.",
    "password-changed": "Password changed: log in with the new one.",
    "password-wrong": "The current password is wrong.",
    "password-refused": f"Password not changed: a password is {MIN_PASSWORD}-200 characters.",
    "merged": "Merged: the other id is now an alias of this individual.",
    "merge-refused": "Not merged: give the catalog id of another individual of the catalog.",
    "undone": "Decision undone.",
    "undo-refused": "Not undone: that decision is already undone, or is itself an undo.",
    "undo-conflict": "Not undone: what it changed was changed again since; undo that later change first.",
    "named": "Name saved: the dashboard's decisions can undo it.",
    "name-refused": f"Name not saved: a name is at most {MAX_NAME} characters and differs from the current one.",
    "edited": "Encounter saved: the dashboard's decisions can undo the change.",
    "edit-refused": (
        "Encounter not saved: a date is ISO 8601 (2026-07-01 or 2026-07-01T14:30), a latitude -90 to 90, "
        "a longitude -180 to 180, a place at most 300 characters, and something must change."
    ),
    "user-added": "User added.",
    "user-refused": (
        f"User not added: a name is new and 1-64 letters, digits, '.', '_', '-' or '@'; "
        f"a password is {MIN_PASSWORD}-200 characters."
    ),
    "role-changed": "Role changed.",
    "role-refused": "Role not changed: no such user, or the last admin would lose the admin role.",
    "reindex-queued": "Reindex queued: the dashboard shows its progress.",
    "reindex-refused": "Reindex not queued: that model is not in the catalog.",
    "retrain-queued": "Training queued: the dashboard shows its progress; the new version appears here with its report.",
    "retrain-refused": (
        "Training not queued: the catalog is too small to train on (it needs individuals with 2+ confirmed photos, "
        "some to train on and some held out to judge by); the current model stays."
    ),
}


def render(request: Request, name: str, user: Account | None, status_code: int = 200, **context) -> HTMLResponse:
    return templates.TemplateResponse(
        request,
        name,
        {
            "user": user,
            "error": MESSAGES.get(request.query_params.get("error", "")),
            "note": MESSAGES.get(request.query_params.get("note", "")),
            **context,
        },
        status_code=status_code,
    )


def back(url: str, **query: str) -> RedirectResponse:
    """A redirect after a form post; ``error`` or ``note`` name a message of MESSAGES for the next page."""
    return RedirectResponse(f"{url}?{urlencode(query)}" if query else url, status_code=303)


def error_page(request: Request, status: int, message: str, headers: dict | None = None) -> HTMLResponse:
    """A refusal or a missing page as a page: a browser shows it (the API answers JSON instead)."""
    response = render(request, "error.html", current(request), status, status=status, message=message)
    response.headers.update(headers or {})
    return response


def to_login(request: Request) -> RedirectResponse:
    """Someone not logged in (or no longer) to the login page, which then comes back: to the page asked
    for, or, for a form sent after the session ended, to the page the form was on (its action takes posts only)."""
    if request.method == "GET":
        return back("/login", next=request.url.path)
    referer = urlsplit(request.headers.get("referer", ""))
    target = referer.path if referer.netloc == request.url.netloc else "/"
    return back("/login", next=safe_next(target), error="session-ended")


def safe_next(target: str | None) -> str:
    """Only a path on this site (never //other.host or a scheme): no open redirect after login."""
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/"


@router.get("/api/docs")
def api_docs(request: Request) -> HTMLResponse:
    """The API's interactive documentation (Swagger UI from local files: no CDN)."""
    return templates.TemplateResponse(request, "api_docs.html", {})


@router.get("/login")
def login_page(request: Request, next: Text | None = None) -> HTMLResponse:
    token = secrets.token_urlsafe(24)
    response = render(request, "login.html", None, login_csrf=token, next=safe_next(next))
    response.set_cookie(
        LOGIN_COOKIE,
        token,
        httponly=True,
        samesite="strict",
        path="/login",
        secure=request.app.state.config.secure_cookies,
    )
    return response


@router.post("/login")
def login_form(
    request: Request,
    name: Annotated[str, Form(max_length=64)],
    password: Annotated[str, Form(max_length=200)],
    csrf: Annotated[str, Form(max_length=100)] = "",
    next: Annotated[str, Form(max_length=500)] = "/",
):
    if not login_csrf_ok(request, csrf):
        return back("/login", error="login-expired", next=safe_next(next))
    response = RedirectResponse(safe_next(next), status_code=303)
    try:
        user = login_response(request, name, password, response)
    except Refused as error:
        return back("/login", error="login-throttled" if error.status == 429 else "login-failed", next=safe_next(next))
    if user.must_change:
        response.headers["location"] = "/account"
    return response


@router.post("/logout")
def logout_form(request: Request, _: AnyUser):
    log_out(request.app.state.store, request.cookies.get(COOKIE))
    response = back("/login", note="logged-out")
    response.delete_cookie(COOKIE, path="/")
    return response


@router.get("/")
def dashboard(request: Request, user: Viewer) -> HTMLResponse:
    store = request.app.state.store
    curve = browse.discovery_curve(store)
    jobs = request.app.state.jobs.recent(8)
    return render(
        request,
        "dashboard.html",
        user,
        stats=store.exports.stats(),
        pending=browse.pending_by_encounter(store),
        decisions=browse.latest_decisions(store, 15),
        jobs=jobs,
        curve=curve,
        curve_svg=_curve_points(curve),
        sightings=_sightings_bars(store.exports.capture_histories("month")),
    )


def _curve_points(curve: list[tuple[int, int]], width: int = 560, height: int = 180) -> str:
    """The discovery curve as an SVG polyline's points (x: photos identified, y: individuals known)."""
    max_x = max(curve[-1][0], 1)
    max_y = max(max(y for _, y in curve), 1)
    return " ".join(f"{x * width / max_x:.1f},{height - y * height / max_y:.1f}" for x, y in curve)


def _sightings_bars(histories, width: int = 560, height: int = 150) -> list[dict]:
    """Individuals seen per month (confirmed photos only) as SVG bars: x, y, width, height, label, count."""
    counts = histories.matrix.sum(axis=0)
    if counts.empty:
        return []
    step, top = width / len(counts), max(int(counts.max()), 1)
    return [
        {"x": i * step, "w": step * 0.8, "h": n * height / top, "y": height - n * height / top, "month": m, "n": int(n)}
        for i, (m, n) in enumerate(counts.items())
    ]


@router.get("/upload")
def upload_page(request: Request, user: Viewer) -> HTMLResponse:
    return render(request, "upload.html", user, limits=request.app.state.jobs.limits)


@router.get("/review")
def review_next(request: Request, user: Viewer, encounter: PhotoId | None = None):
    first = browse.first_pending(request.app.state.store, encounter)
    if first is None:
        return render(request, "review_done.html", user)
    return RedirectResponse(f"/review/{first}", status_code=303)


@router.get("/review/{photo_id}")
def review(photo_id: PhotoId, request: Request, user: Viewer) -> HTMLResponse:
    return render(request, "review.html", user, item=browse.review_page(request.app.state.store, photo_id))


@router.get("/individuals")
def individuals(request: Request, user: Viewer) -> HTMLResponse:
    return render(request, "individuals.html", user, individuals=browse.individuals(request.app.state.store, 1000))


@router.get("/individuals/{catalog_id}")
def individual(catalog_id: Text, request: Request, user: Viewer) -> HTMLResponse:
    item = browse.individual_page(request.app.state.store, catalog_id)
    return render(request, "individual.html", user, item=item, sightings=_sightings_plot(item["photos"]))


def _sightings_plot(photos: list[dict], width: int = 560, row: int = 28) -> dict | None:
    """An individual's dated sightings as SVG dots: across by date, one row per place (None: none dated)."""
    seen = set()
    for photo in photos:
        try:
            day = date.fromisoformat((photo["seen"] or "")[:10])
        except ValueError:
            continue  # date unknown
        seen.add((day, photo["encounter_place"] or "place unknown"))
    if not seen:
        return None
    places = sorted({place for _, place in seen})
    first, last = min(d for d, _ in seen), max(d for d, _ in seen)
    span = max((last - first).days, 1)
    dots = [
        {"x": (d - first).days * width / span, "y": (places.index(p) + 0.5) * row, "title": f"{d} {p}"}
        for d, p in sorted(seen)
    ]
    rows = [{"y": (i + 0.5) * row, "name": p} for i, p in enumerate(places)]
    return {"dots": dots, "places": rows, "height": len(places) * row, "first": str(first), "last": str(last)}


@router.post("/individuals/{catalog_id}/merge")
def merge_form(
    catalog_id: Text, request: Request, user: Reviewer, into: Annotated[str, Form(max_length=200)]
) -> RedirectResponse:
    try:
        request.app.state.store.review.merge(catalog_id, into.strip(), reviewer=user.name)
    except UserError:
        return back(f"/individuals/{_quoted(catalog_id)}", error="merge-refused")
    return back(f"/individuals/{_quoted(into.strip())}", note="merged")


@router.post("/individuals/{catalog_id}/name")
def name_form(
    catalog_id: Text, request: Request, user: Reviewer, name: Annotated[str, Form(max_length=1000)] = ""
) -> RedirectResponse:
    """Name the individual (an empty name clears it): an event in its history, undone from the dashboard."""
    page = f"/individuals/{_quoted(catalog_id)}"
    try:
        request.app.state.store.edits.rename(catalog_id, name, reviewer=user.name)
    except UserError:
        return back(page, error="name-refused")
    return back(page, note="named")


@router.post("/decisions/{decision_id}/undo")
def undo_form(decision_id: PhotoId, request: Request, user: Reviewer) -> RedirectResponse:
    """Undo a decision from the dashboard's list (merges, renames, edits: the review page's Z undoes a photo's)."""
    try:
        request.app.state.store.review.undo(decision_id, reviewer=user.name)
    except ConflictError:
        return back("/", error="undo-conflict")
    except UserError:
        return back("/", error="undo-refused")
    return back("/", note="undone")


def _quoted(catalog_id: str) -> str:
    return quote(catalog_id, safe="")


@router.get("/encounters")
def encounters(request: Request, user: Viewer) -> HTMLResponse:
    return render(request, "encounters.html", user, encounters=browse.encounters(request.app.state.store))


@router.get("/encounters/{encounter_id}")
def encounter(encounter_id: PhotoId, request: Request, user: Viewer) -> HTMLResponse:
    return render(request, "encounter.html", user, item=browse.encounter_page(request.app.state.store, encounter_id))


@router.post("/encounters/{encounter_id}/edit")
def edit_encounter_form(
    encounter_id: PhotoId,
    request: Request,
    user: Reviewer,
    date: Annotated[str, Form(max_length=100)] = "",
    place: Annotated[str, Form(max_length=1000)] = "",
    latitude: Annotated[str, Form(max_length=100)] = "",
    longitude: Annotated[str, Form(max_length=100)] = "",
    observer: Annotated[str, Form(max_length=1000)] = "",
    notes: Annotated[str, Form(max_length=5000)] = "",
) -> RedirectResponse:
    """The encounter's details as the form shows them (a blank field clears it); the fields that changed are
    one event in its history, undone from the dashboard."""
    page = f"/encounters/{encounter_id}"
    fields = {"date": date, "place": place, "observer": observer, "notes": notes}
    try:
        request.app.state.store.edits.edit_encounter(
            encounter_id, user.name, **fields, latitude=_number(latitude), longitude=_number(longitude)
        )
    except UserError:
        return back(page, error="edit-refused")
    return back(page, note="edited")


def _number(text: str) -> float | str | None:
    """A form's number field: blank is None; what is no number goes on as it is, for the store to refuse."""
    try:
        return float(text) if text.strip() else None
    except ValueError:
        return text


@router.get("/export")
def export(request: Request, user: Viewer) -> HTMLResponse:
    return render(request, "export.html", user, stats=request.app.state.store.exports.stats())


@router.get("/users")
def users(request: Request, user: Viewer) -> HTMLResponse:
    if not user.may("admin"):
        return render(request, "forbidden.html", user, needed="admin")
    store = request.app.state.store
    return render(request, "users.html", user, users=listed_users(store), models=store.models.listed())


@router.post("/users")
def new_user_form(
    request: Request,
    _: Admin,
    name: Annotated[str, Form(max_length=64)],
    password: Annotated[str, Form(max_length=200)],
    role: Annotated[str, Form(max_length=20)] = "reviewer",
) -> RedirectResponse:
    try:
        add_user(request.app.state.store, name.strip(), password, role)
    except UserError:
        return back("/users", error="user-refused")
    return back("/users", note="user-added")


@router.post("/users/{name}")
def change_user_form(
    name: Text, request: Request, _: Admin, role: Annotated[str, Form(max_length=20)]
) -> RedirectResponse:
    try:
        change_user(request.app.state.store, name, role=role)
    except UserError:
        return back("/users", error="role-refused")
    return back("/users", note="role-changed")


@router.post("/models/{version}/activate")
def activate_form(version: PhotoId, request: Request, user: Admin) -> RedirectResponse:
    try:
        request.app.state.jobs.create_reindex(version, user.name)
    except UserError:
        return back("/users", error="reindex-refused")
    return back("/users", note="reindex-queued")


@router.post("/models/retrain")
def retrain_form(request: Request, user: Admin) -> RedirectResponse:
    try:
        request.app.state.jobs.create_retrain(user.name)
    except UserError:
        return back("/users", error="retrain-refused")
    return back("/users", note="retrain-queued")


@router.get("/account")
def account_page(request: Request, user: Viewer) -> HTMLResponse:
    return render(request, "account.html", user)


@router.post("/account/password")
def password_form(
    request: Request,
    user: AnyUser,
    current_password: Annotated[str, Form(max_length=200)],
    new_password: Annotated[str, Form(max_length=200)],
) -> RedirectResponse:
    try:
        if not password_is(request, user.name, current_password):
            return back("/account", error="password-wrong")
    except Refused:
        return back("/account", error="login-throttled")
    try:
        change_user(request.app.state.store, user.name, password=new_password)
    except UserError:
        return back("/account", error="password-refused")
    response = back("/login", note="password-changed")
    response.delete_cookie(COOKIE, path="/")
    return response
