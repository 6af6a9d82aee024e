"""The web's people in the database: users with their roles and password hashes, and login sessions (the
hashing, the tokens and the rate limit are the web's)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, func, select

from whaleid.errors import UserError
from whaleid.store.db import Database
from whaleid.store.errors import NotFound
from whaleid.store.queries import now
from whaleid.store.schema import LoginSession, User


def create_user(db: Database, name: str, password_hash: str, role: str, must_change: bool = False) -> None:
    with db.session() as session, session.begin():
        if session.scalar(select(User.id).where(User.name == name)) is not None:
            raise UserError(f"there is already a user {name!r}")
        session.add(User(name=name, password_hash=password_hash, role=role, created_at=now(), must_change=must_change))


def change_user(db: Database, name: str, *, role: str | None = None, password_hash: str | None = None) -> None:
    """A new role or password hash; either ends the user's sessions, so a demoted user keeps no old rights."""
    with db.session() as session, session.begin():
        user = session.scalar(select(User).where(User.name == name))
        if user is None:
            raise NotFound(f"no user {name!r}")
        if role is not None:
            admins = session.scalar(select(func.count()).where(User.role == "admin"))
            if user.role == "admin" and role != "admin" and admins <= 1:
                raise UserError("the last admin cannot lose the admin role")
            user.role = role
        if password_hash is not None:
            user.password_hash, user.must_change = password_hash, False
        session.execute(delete(LoginSession).where(LoginSession.user_id == user.id))


def users(db: Database) -> list[dict]:
    """Every user by name, with role and creation time (never the hash)."""
    with db.reader() as session:
        return [
            {"name": u.name, "role": u.role, "created_at": u.created_at.isoformat(timespec="seconds")}
            for u in session.scalars(select(User).order_by(User.name))
        ]


def has_users(db: Database) -> bool:
    with db.reader() as session:
        return bool(session.scalar(select(func.count()).select_from(User)))


def user_named(db: Database, name: str) -> User | None:
    with db.reader() as session:
        return session.scalar(select(User).where(User.name == name))


def open_login(db: Database, user: User, token_hash: str, csrf: str, expires_at: datetime) -> None:
    """A new login session (the expired ones are cleared on the way)."""
    with db.session() as session, session.begin():
        session.execute(delete(LoginSession).where(LoginSession.expires_at < now()))
        session.add(
            LoginSession(token_hash=token_hash, user_id=user.id, csrf=csrf, created_at=now(), expires_at=expires_at)
        )


def logged_in(db: Database, token_hash: str) -> tuple[User, str] | None:
    """The user of a login session that has not expired, and its CSRF token."""
    with db.reader() as session:
        row = session.execute(
            select(User, LoginSession.csrf)
            .join(LoginSession, LoginSession.user_id == User.id)
            .where(LoginSession.token_hash == token_hash, LoginSession.expires_at > now())
        ).first()
    return None if row is None else (row[0], row[1])


def close_login(db: Database, token_hash: str) -> None:
    with db.session() as session, session.begin():
        session.execute(delete(LoginSession).where(LoginSession.token_hash == token_hash))
