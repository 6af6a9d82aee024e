"""The HTML pages: server-rendered, each a thin view over the same functions as the API."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Annotated
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates

from whaleid.errors import UserError
from whaleid.web import views
from whaleid.web.api import PhotoId, Text, login_response
from whaleid.web.security import COOKIE, LOGIN_COOKIE, login_csrf_ok, page_reader, writer
from whaleid.web.users import Account, add_user, change_user, list_users, log_out, verified

templates = Jinja2Templates(directory=Path(__file__).parent / "templates")
router = APIRouter(include_in_schema=False)
Viewer = Annotated[Account, Depends(page_reader)]
Reviewer = Annotated[Account, Depends(writer("reviewer"))]
Admin = Annotated[Account, Depends(writer("admin"))]
AnyUser = Annotated[Account, Depends(writer("viewer"))]


def render(request: Request, name: str, user: Account | None, **context) -> HTMLResponse:
    return templates.TemplateResponse(
        request,
        name,
        {
            "user": user,
            "error": request.query_params.get("error"),
            "note": request.query_params.get("note"),
            **context,
        },
    )


def back(url: str, **message: str) -> RedirectResponse:
    """A redirect after a form post, with a short message for the next page."""
    return RedirectResponse(f"{url}?{urlencode(message)}" if message else url, status_code=303)


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
        return back("/login", error="the login form expired: try again")
    response = RedirectResponse(safe_next(next), status_code=303)
    try:
        user = login_response(request, name, password, response)
    except UserError as error:
        return back("/login", error=str(error))
    if user.must_change:
        response.headers["location"] = "/account"
    return response


@router.post("/logout")
def logout_form(request: Request, _: AnyUser):
    log_out(request.app.state.store, request.cookies.get(COOKIE))
    response = back("/login", note="logged out")
    response.delete_cookie(COOKIE, path="/")
    return response


@router.get("/")
def dashboard(request: Request, user: Viewer) -> HTMLResponse:
    store = request.app.state.store
    curve = views.discovery_curve(store)
    return render(
        request,
        "dashboard.html",
        user,
        stats=store.stats(),
        pending=views.pending_by_encounter(store),
        decisions=views.decisions(store, 15),
        jobs=request.app.state.jobs.recent(8),
        curve=curve,
        curve_svg=_curve_points(curve),
    )


def _curve_points(curve: list[tuple[int, int]], width: int = 560, height: int = 180) -> str:
    """The discovery curve as an SVG polyline's points (x: photos identified, y: individuals known)."""
    max_x = max(curve[-1][0], 1)
    max_y = max(max(y for _, y in curve), 1)
    return " ".join(f"{x * width / max_x:.1f},{height - y * height / max_y:.1f}" for x, y in curve)


@router.get("/upload")
def upload_page(request: Request, user: Viewer) -> HTMLResponse:
    return render(request, "upload.html", user, limits=request.app.state.jobs.limits)


@router.get("/review")
def review_next(request: Request, user: Viewer, encounter: PhotoId | None = None):
    first = views.first_pending(request.app.state.store, encounter)
    if first is None:
        return render(request, "review_done.html", user)
    return RedirectResponse(f"/review/{first}", status_code=303)


@router.get("/review/{photo_id}")
def review(photo_id: PhotoId, request: Request, user: Viewer) -> HTMLResponse:
    return render(request, "review.html", user, item=views.review(request.app.state.store, photo_id))


@router.get("/individuals")
def individuals(request: Request, user: Viewer) -> HTMLResponse:
    return render(request, "individuals.html", user, individuals=views.individuals(request.app.state.store, 1000))


@router.get("/individuals/{catalog_id}")
def individual(catalog_id: Text, request: Request, user: Viewer) -> HTMLResponse:
    return render(request, "individual.html", user, item=views.individual(request.app.state.store, catalog_id))


@router.post("/individuals/{catalog_id}/merge")
def merge_form(
    catalog_id: Text, request: Request, user: Reviewer, into: Annotated[str, Form(max_length=200)]
) -> RedirectResponse:
    try:
        request.app.state.store.merge(catalog_id, into.strip(), reviewer=user.name)
    except UserError as error:
        return back(f"/individuals/{_quoted(catalog_id)}", error=str(error))
    return back(f"/individuals/{_quoted(into.strip())}", note=f"{catalog_id} merged into {into.strip()}")


def _quoted(catalog_id: str) -> str:
    return quote(catalog_id, safe="")


@router.get("/encounters")
def encounters(request: Request, user: Viewer) -> HTMLResponse:
    return render(request, "encounters.html", user, encounters=views.encounters(request.app.state.store))


@router.get("/encounters/{encounter_id}")
def encounter(encounter_id: PhotoId, request: Request, user: Viewer) -> HTMLResponse:
    return render(request, "encounter.html", user, item=views.encounter(request.app.state.store, encounter_id))


@router.get("/export")
def export(request: Request, user: Viewer) -> HTMLResponse:
    return render(request, "export.html", user, stats=request.app.state.store.stats())


@router.get("/users")
def users(request: Request, user: Viewer) -> HTMLResponse:
    if not user.may("admin"):
        return render(request, "forbidden.html", user, needed="admin")
    store = request.app.state.store
    return render(request, "users.html", user, users=list_users(store), models=store.models())


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
    except UserError as error:
        return back("/users", error=str(error))
    return back("/users", note=f"user {name.strip()} added ({role})")


@router.post("/users/{name}")
def change_user_form(
    name: Text, request: Request, _: Admin, role: Annotated[str, Form(max_length=20)]
) -> RedirectResponse:
    try:
        change_user(request.app.state.store, name, role=role)
    except UserError as error:
        return back("/users", error=str(error))
    return back("/users", note=f"{name} is now {role}")


@router.post("/models/{version}/activate")
def activate_form(version: PhotoId, request: Request, user: Admin) -> RedirectResponse:
    try:
        job = request.app.state.jobs.create_reindex(version, user.name)
    except UserError as error:
        return back("/users", error=str(error))
    return back("/users", note=f"reindex with model v{version} queued (job {job['id']})")


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
    store = request.app.state.store
    if verified(store, user.name, current_password) is None:
        return back("/account", error="the current password is wrong")
    try:
        change_user(store, user.name, password=new_password)
    except UserError as error:
        return back("/account", error=str(error))
    response = back("/login", note="password changed: log in with the new one")
    response.delete_cookie(COOKIE, path="/")
    return response
