"""People: argon2 password hashes, roles, login sessions (their rows: ``store.users``), a login rate limit."""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from whaleid.errors import UserError
from whaleid.store import users
from whaleid.store.db import Database
from whaleid.store.queries import now
from whaleid.store.schema import User
from whaleid.web.jobs import Refused

ROLES = ("viewer", "reviewer", "admin")  # each may do what the ones before it may
NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-@")
MIN_PASSWORD = 10
T = TypeVar("T")  # what a rate-limited password check answers
_hasher = PasswordHasher()
_DUMMY = _hasher.hash("not a password")  # verified against when the name is unknown: same time either way


@dataclass(frozen=True)
class Account:
    """Who is logged in, as the pages and the API see it."""

    id: int
    name: str
    role: str
    csrf: str
    must_change: bool = False

    def may(self, role: str) -> bool:
        return ROLES.index(self.role) >= ROLES.index(role)


def check_name(name: str) -> str:
    if not 1 <= len(name) <= 64 or not set(name) <= NAME_CHARS:
        raise UserError("a user name is 1-64 letters, digits, '.', '_', '-' or '@'")
    return name


def check_password(password: str) -> str:
    if not MIN_PASSWORD <= len(password) <= 200:
        raise UserError(f"a password is {MIN_PASSWORD}-200 characters")
    return password


def check_role(role: str) -> str:
    if role not in ROLES:
        raise UserError(f"unknown role {role!r}; valid: {', '.join(ROLES)}")
    return role


def add_user(store: Database, name: str, password: str, role: str = "reviewer", must_change: bool = False) -> None:
    check_name(name)
    check_password(password)
    check_role(role)
    users.create_user(store, name, _hasher.hash(password), role, must_change)


def change_user(store: Database, name: str, *, role: str | None = None, password: str | None = None) -> None:
    """A new role or password; either ends the user's sessions, so a demoted user keeps no old rights."""
    role = None if role is None else check_role(role)
    hashed = None if password is None else _hasher.hash(check_password(password))
    users.change_user(store, name, role=role, password_hash=hashed)


def first_admin(store: Database, name: str, password: str | None) -> str | None:
    """The first admin, when the catalog has no users: with ``password`` (from the environment), or a
    random one-time password that is returned to be printed once and must be changed at first login."""
    if users.has_users(store):
        return None
    one_time = password is None
    password = password or secrets.token_urlsafe(12)
    add_user(store, name, password, "admin", must_change=one_time)
    return password if one_time else None


def verified(store: Database, name: str, password: str) -> User | None:
    """The user when ``password`` is theirs, else None (an unknown name costs the same time)."""
    user = users.user_named(store, name)  # the (slow, on purpose) hash check holds no write lock
    try:
        _hasher.verify(user.password_hash if user else _DUMMY, password)
    except (VerificationError, InvalidHashError):
        return None
    return user


def log_in(store: Database, name: str, password: str, hours: float) -> tuple[str, Account] | None:
    """A new session token and its account, or None when the name or password is wrong."""
    user = verified(store, name, password)
    if user is None:
        return None
    token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    users.open_login(store, user, _digest(token), csrf, now() + timedelta(hours=hours))
    return token, Account(user.id, user.name, user.role, csrf, user.must_change)


def account(store: Database, token: str | None) -> Account | None:
    """The account a session cookie stands for, or None (no cookie, unknown, expired)."""
    found = users.logged_in(store, _digest(token)) if token else None
    if found is None:
        return None
    user, csrf = found
    return Account(user.id, user.name, user.role, csrf, user.must_change)


def log_out(store: Database, token: str | None) -> None:
    if token:
        users.close_login(store, _digest(token))


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class LoginLimiter:
    """At most ``attempts`` failed password checks per ``window`` seconds from one address, and for one name.

    A check takes a place before it runs, under one lock, and a key never has more places taken than
    failures it may still have: concurrent guesses cannot all pass the count before any is recorded,
    and right passwords beyond the places (a team behind one address) wait a moment rather than being
    refused. The slow hash check runs outside the lock."""

    def __init__(self, attempts: int = 5, window: float = 300.0, patience: float = 30.0):
        self.attempts, self.window, self.patience = attempts, window, patience
        self._failures: dict[str, deque] = defaultdict(deque)
        self._running: dict[str, int] = defaultdict(int)
        self._turn = threading.Condition()

    def checked(self, keys: tuple[str, ...], check: Callable[[], T | None]) -> T | None:
        """What ``check()`` answers (None: a wrong password); refused with 429 when a key has had its fill."""
        self._take(keys)
        failed = False  # a check that broke (not a wrong password) gives its place back uncounted
        try:
            found = check()
            failed = found is None
        finally:
            with self._turn:
                for key in keys:
                    self._running[key] -= 1
                    if not self._running[key]:
                        del self._running[key]
                    if failed:
                        self._failures[key].append(time.monotonic())
                self._turn.notify_all()
        return found

    def _take(self, keys: tuple[str, ...]) -> None:
        deadline = time.monotonic() + self.patience
        with self._turn:
            while True:
                wait = max((self._wait(k) for k in keys), default=0.0)
                if wait:
                    raise Refused(429, f"too many failed logins: try again in {int(wait) + 1} s")
                if all(len(self._failures.get(k, ())) + self._running.get(k, 0) < self.attempts for k in keys):
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    raise Refused(429, "too many logins at once: try again in a few seconds")
                self._turn.wait(left)
            for key in keys:
                self._running[key] += 1

    def _wait(self, key: str) -> float:
        times = self._failures.get(key)
        if times is None:
            return 0.0
        while times and times[0] < time.monotonic() - self.window:
            times.popleft()
        if not times:
            del self._failures[key]  # names and addresses tried once do not pile up
            return 0.0
        if len(times) < self.attempts:
            return 0.0
        return max(times[0] + self.window - time.monotonic(), 0.001)
