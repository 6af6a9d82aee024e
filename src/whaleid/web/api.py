"""The JSON API under /api: what the pages' scripts call, and what scripts and tests may call."""

from __future__ import annotations

import io
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, File, Query, Request, Response, UploadFile
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile as StarletteUpload

from whaleid.store import browse
from whaleid.store.intake import EncounterInfo
from whaleid.store.users import users as listed_users
from whaleid.web import images
from whaleid.web.jobs import Refused
from whaleid.web.security import COOKIE, reader, writer
from whaleid.web.users import Account, add_user, change_user, log_in, log_out, verified

router = APIRouter(prefix="/api")
Reader = Annotated[Account, Depends(reader)]
Reviewer = Annotated[Account, Depends(writer("reviewer"))]
Admin = Annotated[Account, Depends(writer("admin"))]
AnyUser = Annotated[Account, Depends(writer("viewer"))]
Text = Annotated[str, Field(max_length=200)]
PhotoId = Annotated[int, Field(ge=1, le=2**62)]


class LoginBody(BaseModel):
    name: Annotated[str, Field(max_length=64)]
    password: Annotated[str, Field(max_length=200)]


class DecisionBody(BaseModel):
    kind: Literal["confirm", "new", "unsure"]
    individual: Text | None = None  # confirm: the individual's catalog id
    name: Text | None = None  # new: an optional name
    version: int | None = None  # the photo's version as shown: a decision made meanwhile by someone else wins


class MergeBody(BaseModel):
    into: Text


class NameBody(BaseModel):
    name: Annotated[str | None, Field(max_length=1000)]  # null or "": no name (the store refuses over 200)


class EncounterBody(BaseModel):
    date: Annotated[str | None, Field(max_length=40)] = None
    place: Annotated[str | None, Field(max_length=300)] = None
    latitude: Annotated[float | None, Field(ge=-90, le=90)] = None
    longitude: Annotated[float | None, Field(ge=-180, le=180)] = None
    observer: Text | None = None
    notes: Annotated[str | None, Field(max_length=5000)] = None


class NewUser(BaseModel):
    name: Annotated[str, Field(max_length=64)]
    password: Annotated[str, Field(max_length=200)]
    role: Literal["viewer", "reviewer", "admin"] = "reviewer"


class UserChange(BaseModel):
    role: Literal["viewer", "reviewer", "admin"] | None = None
    password: Annotated[str | None, Field(max_length=200)] = None


class PasswordBody(BaseModel):
    current: Annotated[str, Field(max_length=200)]
    new: Annotated[str, Field(max_length=200)]


def guess_keys(request: Request, name: str) -> tuple[str, str]:
    """The keys a password guess is counted under: the address it came from and the name it tries."""
    return f"ip:{request.client.host if request.client else '?'}", f"name:{name}"


def login_response(request: Request, name: str, password: str, response: Response) -> Account:
    """Log in (rate limited per address and per name) and set the session cookie on ``response``."""
    state = request.app.state
    found = state.limiter.checked(
        guess_keys(request, name), lambda: log_in(state.store, name, password, state.config.session_hours)
    )
    if found is None:
        raise Refused(401, "wrong name or password")
    token, user = found
    response.set_cookie(
        COOKIE,
        token,
        max_age=int(state.config.session_hours * 3600),
        httponly=True,
        samesite="strict",
        secure=state.config.secure_cookies,
        path="/",
    )
    return user


@router.post("/login")
def login(body: LoginBody, request: Request, response: Response) -> dict:
    """Log in; the answer holds the CSRF token that every write must send as ``X-CSRF-Token``."""
    user = login_response(request, body.name, body.password, response)
    return {"name": user.name, "role": user.role, "csrf": user.csrf, "must_change": user.must_change}


@router.post("/logout")
def logout(request: Request, response: Response, user: AnyUser) -> dict:
    log_out(request.app.state.store, request.cookies.get(COOKIE))
    response.delete_cookie(COOKIE, path="/")
    return {"logged_out": user.name}


@router.get("/me")
def me(user: Reader) -> dict:
    return {"name": user.name, "role": user.role, "must_change": user.must_change}


def password_is(request: Request, name: str, password: str) -> bool:
    """Whether ``password`` is ``name``'s, counted against the same limit as a login (429 past it)."""
    store = request.app.state.store
    return (
        request.app.state.limiter.checked(guess_keys(request, name), lambda: verified(store, name, password))
        is not None
    )


@router.post("/me/password")
def my_password(body: PasswordBody, request: Request, user: AnyUser) -> dict:
    """A new password (the old one proves it is you); every session of yours ends, this one included."""
    if not password_is(request, user.name, body.current):
        raise Refused(403, "the current password is wrong")
    change_user(request.app.state.store, user.name, password=body.new)
    return {"changed": user.name}


@router.get("/stats")
def stats(request: Request, _: Reader) -> dict:
    store = request.app.state.store
    return {
        **store.exports.stats(),
        "pending_by_encounter": browse.pending_by_encounter(store),
        "discovery_curve": browse.discovery_curve(store),
    }


@router.get("/queue")
def queue(request: Request, _: Reader, limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> list[dict]:
    return [vars(item) for item in request.app.state.store.review.queue(limit)]


@router.get("/photos/{photo_id}")
def photo(photo_id: PhotoId, request: Request, _: Reader) -> dict:
    return browse.review_page(request.app.state.store, photo_id)


@router.get("/photos/{photo_id}/image")
def photo_image(
    photo_id: PhotoId, request: Request, _: Reader, size: Literal["thumb", "medium", "full", "crop"] = "medium"
) -> FileResponse:
    path = images.rendition(request.app.state.store, request.app.state.jobs.budget, photo_id, size)
    return FileResponse(path, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=86400"})


@router.get("/photos/{photo_id}/matches/{other_id}")
def photo_matches(photo_id: PhotoId, other_id: PhotoId, request: Request, _: Reader) -> dict:
    """The keypoint matches the second stage verifies between two photos (``matcher`` null: the model does
    not re-rank); a pair is matched once, then read from the catalog's cache."""
    jobs = request.app.state.jobs
    with jobs.budget.hold(jobs.limits.pixels):  # keypoints lost from the catalog are extracted again: a photo decoded
        return request.app.state.store.matches.between(photo_id, other_id)


@router.post("/photos/{photo_id}/decision")
def decide(photo_id: PhotoId, body: DecisionBody, request: Request, user: Reviewer) -> dict:
    """Confirm a candidate, make a new individual, or say you can't tell; 409 when decided meanwhile."""
    if body.kind == "confirm" and not body.individual:
        raise Refused(422, "confirm needs the individual's catalog id")
    store = request.app.state.store
    event = store.review.decide(
        photo_id,
        confirm=body.individual if body.kind == "confirm" else None,
        new=body.kind == "new",
        unsure=body.kind == "unsure",
        name=body.name,
        reviewer=user.name,
        expected_version=body.version,
    )
    individual = browse.catalog_id(store, event.individual_id)
    return {"decision": event.id, "kind": event.kind, "photo": photo_id, "individual": individual}


@router.post("/decisions/{decision_id}/undo")
def undo(decision_id: PhotoId, request: Request, user: Reviewer) -> dict:
    event = request.app.state.store.review.undo(decision_id, reviewer=user.name)
    return {"decision": event.id, "undoes": decision_id}


@router.get("/decisions")
def decisions(request: Request, _: Reader, limit: Annotated[int, Query(ge=1, le=500)] = 20) -> list[dict]:
    return browse.latest_decisions(request.app.state.store, limit)


@router.get("/individuals")
def individuals(
    request: Request,
    _: Reader,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
) -> list[dict]:
    return browse.individuals(request.app.state.store, limit, offset)


@router.get("/individuals/{catalog_id}")
def individual(catalog_id: Text, request: Request, _: Reader) -> dict:
    return browse.individual_page(request.app.state.store, catalog_id)


@router.post("/individuals/{catalog_id}/merge")
def merge(catalog_id: Text, body: MergeBody, request: Request, user: Reviewer) -> dict:
    """This individual is ``into``: its photos join that one's (undoable)."""
    event = request.app.state.store.review.merge(catalog_id, body.into, reviewer=user.name)
    return {"decision": event.id, "merged": catalog_id, "into": body.into}


@router.patch("/individuals/{catalog_id}")
def rename(catalog_id: Text, body: NameBody, request: Request, user: Reviewer) -> dict:
    """Name the individual (merges followed; null or "" clears the name): an event, undone as a decision is."""
    store = request.app.state.store
    event = store.edits.rename(catalog_id, body.name, reviewer=user.name)
    individual = browse.catalog_id(store, event.individual_id)
    return {"decision": event.id, "individual": individual, "name": event.details["name"]["after"]}


@router.get("/encounters")
def encounters(request: Request, _: Reader) -> list[dict]:
    return browse.encounters(request.app.state.store)


@router.get("/encounters/{encounter_id}")
def encounter(encounter_id: PhotoId, request: Request, _: Reader) -> dict:
    return browse.encounter_page(request.app.state.store, encounter_id)


@router.patch("/encounters/{encounter_id}")
def edit_encounter(encounter_id: PhotoId, body: EncounterBody, request: Request, user: Reviewer) -> dict:
    """Change the details given (null clears one): an event recording the fields that changed, before and
    after, undone as a decision is; a change that changes nothing is refused."""
    fields = body.model_dump(exclude_unset=True)
    event = request.app.state.store.edits.edit_encounter(encounter_id, user.name, **fields)
    return {"decision": event.id, "encounter": encounter_id, "changed": event.details}


@router.post("/uploads", status_code=201)
def new_upload(body: EncounterBody, request: Request, user: Reviewer) -> dict:
    """An encounter and an upload job; send its photos one per request, then start it."""
    return request.app.state.jobs.create_upload(EncounterInfo(**body.model_dump()), user.name)


@router.post("/uploads/{job_id}/photos", status_code=201)
async def upload_photo(job_id: PhotoId, request: Request, _: Reviewer, file: UploadFile = File(...)) -> dict:
    """One photo (JPEG, PNG, TIFF or HEIC) of an upload; refused with nothing stored when it cannot be used,
    or when the request holds more than one file (each photo is answered for on its own)."""
    sent = sum(isinstance(value, StarletteUpload) for _, value in (await request.form()).multi_items())
    if sent > 1:
        raise Refused(413, f"one photo per request, not {sent}: send each in its own request")
    jobs = request.app.state.jobs
    data = await file.read(jobs.limits.file_bytes + 1)
    return await run_in_threadpool(jobs.stage, job_id, data, file.filename or "")


@router.post("/uploads/{job_id}/start")
def start_upload(job_id: PhotoId, request: Request, _: Reviewer) -> dict:
    return request.app.state.jobs.start(job_id)


@router.get("/jobs")
def jobs(request: Request, _: Reader) -> list[dict]:
    return request.app.state.jobs.recent()


@router.get("/jobs/{job_id}")
def job(job_id: PhotoId, request: Request, _: Reader) -> dict:
    return request.app.state.jobs.get(job_id)


@router.get("/export/{kind}")
def export(kind: Literal["happywhale", "decisions", "dwc"], request: Request, _: Reader) -> Response:
    """The catalog as CSV: ``happywhale`` (train the next model on it), ``decisions`` or ``dwc`` (Darwin Core)."""
    buffer = io.StringIO()
    request.app.state.store.exports.table(kind).to_csv(buffer, index=False)
    return Response(
        buffer.getvalue(),
        media_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="whaleid-{kind}.csv"'},
    )


@router.get("/users")
def users(request: Request, _: Admin) -> list[dict]:
    return listed_users(request.app.state.store)


@router.post("/users", status_code=201)
def new_user(body: NewUser, request: Request, _: Admin) -> dict:
    add_user(request.app.state.store, body.name, body.password, body.role)
    return {"name": body.name, "role": body.role}


@router.patch("/users/{name}")
def edit_user(name: Text, body: UserChange, request: Request, _: Admin) -> dict:
    change_user(request.app.state.store, name, role=body.role, password=body.password)
    return {"name": name, "role": body.role}


@router.get("/models")
def models(request: Request, _: Reader) -> list[dict]:
    return request.app.state.store.models.listed()


@router.post("/models/{version}/activate", status_code=202)
def activate(version: PhotoId, request: Request, user: Admin) -> dict:
    """Embed every photo with this model and make it the one that proposes matches (a background job)."""
    return request.app.state.jobs.create_reindex(version, user.name)


class RetrainBody(BaseModel):
    holdout: Annotated[float, Field(gt=0, lt=1)] = 0.3  # the share of individuals held out to judge by
    seed: Annotated[int, Field(ge=0, le=2**31)] = 0


@router.post("/models/retrain", status_code=202)
def retrain(request: Request, user: Admin, body: RetrainBody | None = None) -> dict:
    """Train the next model on the confirmed photos, judge it on held-out individuals and register it with its
    report (a background job; it is not made active). A catalog too small to train on is refused."""
    options = body or RetrainBody()
    return request.app.state.jobs.create_retrain(user.name, options.holdout, options.seed)
