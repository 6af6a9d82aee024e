"""Engines and migrations: SQLite by default (WAL, foreign keys, a busy timeout), PostgreSQL by URL, one code path."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event

from whaleid.errors import UserError

MIGRATIONS = Path(__file__).parent / "migrations"
BUSY_MS = 30_000  # a second writer waits this long for the first, rather than failing at once


def sqlite_url(directory: Path) -> str:
    return f"sqlite:///{(directory / 'catalog.db').resolve()}"


def open_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite connections get WAL, foreign keys and the busy timeout."""
    try:
        engine = create_engine(url, future=True)
    except Exception as error:  # a malformed URL or a driver that is not installed
        raise UserError(f"cannot use the database {url!r}: {error}") from None
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
    return engine


def reading(engine: Engine) -> Engine:
    """The same engine for read-only work: on SQLite its transactions take no write lock, so pages and
    exports never wait behind an ``add`` (writers still begin IMMEDIATE and queue behind each other)."""
    return engine.execution_options(whaleid_read_only=True)


def _sqlite_begin(connection) -> None:
    read_only = connection.get_execution_options().get("whaleid_read_only", False)
    connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    dbapi_connection.isolation_level = None  # transactions are begun explicitly (BEGIN IMMEDIATE)
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={BUSY_MS}")
    cursor.close()


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest migration (from empty, or from an older whaleid)."""
    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def is_current(engine: Engine) -> bool:
    """Whether the database is at the newest migration (an older one needs `migrate`)."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision() == head
