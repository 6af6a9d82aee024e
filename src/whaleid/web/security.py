"""Who may do what: the session cookie, roles, CSRF tokens, body size limits and security headers."""

from __future__ import annotations

import hmac
import json
from typing import Annotated

from fastapi import HTTPException, Request, Security
from fastapi.security import APIKeyHeader
from starlette.types import ASGIApp, Receive, Scope, Send

from whaleid.web.users import Account, account

COOKIE = "whaleid_session"
LOGIN_COOKIE = "whaleid_login"  # the login form's CSRF token (double submit: no session exists yet)
UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}
SMALL_BODY = 1 * 2**20  # every write but a photo upload
CSRF_HEADER = APIKeyHeader(  # declared, so the OpenAPI spec (and its clients) show it on every write
    name="X-CSRF-Token",
    scheme_name="csrf",
    description="The `csrf` value that POST /api/login answered; every write sends it (with the session cookie).",
    auto_error=False,
)
CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "object-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


class LoginRequired(Exception):
    """A page asked for by someone not logged in: answered with a redirect to the login page."""


def current(request: Request) -> Account | None:
    if not hasattr(request.state, "account"):
        request.state.account = account(request.app.state.store, request.cookies.get(COOKIE))
    return request.state.account


def reader(request: Request) -> Account:
    """Any logged-in user (an API read)."""
    user = current(request)
    if user is None:
        raise HTTPException(401, "log in first")
    return user


def page_reader(request: Request) -> Account:
    """Any logged-in user (a page): others are sent to the login page."""
    user = current(request)
    if user is None:
        raise LoginRequired()
    return user


def writer(role: str):
    """A dependency: a logged-in user with at least ``role`` and the session's CSRF token (header or form)."""

    async def check(request: Request, token: Annotated[str | None, Security(CSRF_HEADER)]) -> Account:
        user = current(request)
        if user is None:
            raise HTTPException(401, "log in first")
        await _check_csrf(request, token, user.csrf)
        if user.must_change and request.url.path not in (
            "/api/me/password",
            "/account/password",
            "/logout",
            "/api/logout",
        ):
            raise HTTPException(403, "change your one-time password first")
        if not user.may(role):
            raise HTTPException(403, f"this needs the {role} role (you are {user.role})")
        return user

    return check


async def _check_csrf(request: Request, token: str | None, expected: str) -> None:
    """The token from the header or, for a page's form, its ``csrf`` field."""
    if token is None and request.headers.get("content-type", "").startswith(
        ("application/x-www-form-urlencoded", "multipart/form-data")
    ):
        token = (await request.form()).get("csrf")
    if not isinstance(token, str) or not hmac.compare_digest(token.encode(), expected.encode()):
        raise HTTPException(403, "missing or wrong CSRF token: reload the page")


def login_csrf_ok(request: Request, token: str | None) -> bool:
    cookie = request.cookies.get(LOGIN_COOKIE)
    return bool(cookie and token) and hmac.compare_digest(cookie.encode(), token.encode())


class Guard:
    """Bodies bounded before they are read (413, or 411 without a length), and security headers on every answer."""

    def __init__(self, app: ASGIApp, upload_bytes: int, upload_paths: tuple[str, ...]):
        self.app, self.upload_bytes, self.upload_paths = app, upload_bytes, upload_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if scope["method"] in UNSAFE:
            refusal = self._refusal(scope)
            if refusal is not None:
                return await _plain(send, *refusal)

        async def with_headers(message) -> None:
            if message["type"] == "http.response.start":
                headers = message.setdefault("headers", [])
                for name, value in (
                    (b"x-content-type-options", b"nosniff"),
                    (b"x-frame-options", b"DENY"),
                    (b"referrer-policy", b"same-origin"),
                    (b"content-security-policy", CSP.encode()),
                ):
                    headers.append((name, value))
            await send(message)

        await self.app(scope, receive, with_headers)

    def _refusal(self, scope: Scope) -> tuple[int, str] | None:
        headers = dict(scope["headers"])
        limit = self.upload_bytes if scope["path"].endswith(self.upload_paths) else SMALL_BODY
        length = headers.get(b"content-length")
        if length is None:
            return (411, "a request body needs a Content-Length") if b"transfer-encoding" in headers else None
        if not length.isdigit():
            return 400, "bad Content-Length"
        if int(length) > limit:
            return 413, f"request too large: at most {limit / 2**20:g} MB"
        return None


async def _plain(send: Send, status: int, message: str) -> None:
    body = json.dumps({"detail": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
