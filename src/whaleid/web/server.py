"""The application: the catalog, its job worker, the API and the pages, and `serve` to run them."""

from __future__ import annotations

import logging
import os
from contextlib import asynccontextmanager
from pathlib import Path

import fastapi_offline
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from filelock import FileLock, Timeout
from starlette.exceptions import HTTPException

from whaleid.errors import UserError
from whaleid.store.catalog import CatalogStore
from whaleid.store.errors import ConflictError, NotFound
from whaleid.web import api, pages
from whaleid.web.config import WebConfig
from whaleid.web.jobs import Jobs, Refused, public
from whaleid.web.security import Guard, LoginRequired
from whaleid.web.users import LoginLimiter, first_admin

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
SWAGGER_UI = Path(fastapi_offline.__file__).parent / "static"  # Swagger UI's files, vendored in a wheel
ADMIN_ENV = "WHALEID_ADMIN_PASSWORD"
STATUS = ((ConflictError, 409), (NotFound, 404))  # the store's refusals; any other UserError is a 400


def create_app(store: CatalogStore, config: WebConfig | None = None) -> FastAPI:
    """The web app over one catalog (its worker thread runs while the app runs, unless config says not)."""
    config = config or WebConfig()
    jobs = Jobs(store, config.limits)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        if config.start_worker:
            jobs.start_worker()
        try:
            yield
        finally:
            jobs.stop_worker()

    app = FastAPI(
        title="whaleid",
        summary="Review photo-identification matches and grow the catalog.",
        version="1",
        lifespan=lifespan,
        docs_url=None,  # served by pages.api_docs from local assets, not FastAPI's CDN page
        redoc_url=None,
        openapi_url="/api/openapi.json",
    )
    app.state.store, app.state.jobs, app.state.config = store, jobs, config
    app.state.limiter = LoginLimiter(config.login_attempts)
    app.include_router(api.router)
    app.include_router(pages.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.mount("/api/docs-assets", StaticFiles(directory=SWAGGER_UI), name="docs-assets")
    app.add_middleware(Guard, upload_bytes=config.limits.request_bytes, upload_paths=("/photos",))
    _handlers(app)
    return app


def _handlers(app: FastAPI) -> None:
    @app.exception_handler(LoginRequired)
    async def to_login(request: Request, _error: LoginRequired):
        return pages.to_login(request)

    @app.exception_handler(UserError)
    async def user_error(request: Request, error: UserError):
        typed = next((status for kind, status in STATUS if isinstance(error, kind)), 400)
        status = error.status if isinstance(error, Refused) else typed
        return _refusal(request, status, public(request.app.state.store, str(error)))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError):
        first = error.errors()[0] if error.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return _refusal(request, 422, f"{where}: {first.get('msg', 'invalid')}")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException):
        if error.status_code == 401 and not _api(request):
            return pages.to_login(request)  # a form sent after the session ended
        return _refusal(request, error.status_code, error.detail, error.headers)


def _api(request: Request) -> bool:
    return request.url.path.startswith("/api/")


def _refusal(request: Request, status: int, message: str, headers: dict | None = None) -> Response:
    """The API answers JSON for its scripts; a page answers a page, since a browser shows it."""
    if _api(request):
        return JSONResponse({"detail": message}, status_code=status, headers=headers)
    return pages.error_page(request, status, message, headers)


def admin_account(store: CatalogStore) -> None:
    """The first admin (see :func:`first_admin`): the password from the environment, or printed once."""
    password = first_admin(store, os.environ.get("WHALEID_ADMIN", "admin"), os.environ.get(ADMIN_ENV) or None)
    if password is not None:
        print(
            f"first start: user 'admin' created with the one-time password  {password}\n"
            f"(it must be changed at first login; set {ADMIN_ENV} to choose it instead)",
            flush=True,
        )


def serve(directory: Path, host: str, port: int, config: WebConfig, db: str | None = None) -> None:
    """Run the app on uvicorn until stopped; one server per catalog (a lock file says so)."""
    import uvicorn

    store = CatalogStore(directory, db)  # not a catalog: one clear line, before anything else
    lock = FileLock(directory / ".serve.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise UserError(f"another `whaleid serve` is running on {directory}: stop it first") from None
    try:
        admin_account(store)
        print(f"whaleid: serving {directory} on http://{host}:{port}/  (API docs: /api/docs)", flush=True)
        uvicorn.run(
            create_app(store, config),
            host=host,
            port=port,
            log_level="warning",
            access_log=False,
            proxy_headers=config.proxy is not None,  # uvicorn's default believes X-Forwarded-For from 127.0.0.1
            forwarded_allow_ips=config.proxy,
        )
    finally:
        lock.release()
