"""Engines and migrations: SQLite by default (WAL, foreign keys, a busy timeout), PostgreSQL by URL, one code path.

Failures a person can act on (a server that does not answer, a read-only folder, a full disk, a file
that is not a database) become one :class:`UserError` line naming the database, wherever they happen.
"""

from __future__ import annotations

import functools
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event, func, inspect, select
from sqlalchemy.orm import Session

from whaleid.errors import UserError
from whaleid.files import is_disk_full
from whaleid.store.schema import Model

MIGRATIONS = Path(__file__).parent / "migrations"
BUSY_MS = 30_000  # a second writer waits this long for the first, rather than failing at once
#: What the database driver says (lower-cased), and the line to show instead (checked in this order).
REASONS = (
    (("readonly database",), "{db} is read-only: make it and its folder writable (SQLite keeps a journal beside it)"),
    (("database or disk is full",), "disk full while writing {db}: free space and re-run"),
    (("disk i/o error",), "disk I/O error on {db} (a full or failing disk?): free space, check the disk and re-run"),
    (
        ("file is not a database", "malformed"),
        "{db} is damaged or not a database: restore the catalog's database from a backup, or give the right one",
    ),
    (("unable to open database file",), "{db} cannot be opened: check that its folder exists and is writable"),
    (
        ("database is locked",),
        "{db} stayed locked by another writer (a long `catalog` command or the web app's job) past the wait: "
        "re-run when it has finished",
    ),
)


class Database:
    """A catalog's database: sessions for writing, and for reading that on SQLite never wait for a writer."""

    def __init__(self, url: str):
        self.engine = open_engine(url)
        self.read_engine = reading(self.engine)

    def session(self) -> Session:
        """A session for writing, whose objects stay readable after its transaction commits (they are returned)."""
        return Session(self.engine, expire_on_commit=False)

    def reader(self) -> Session:
        """A session for reading only: on SQLite it never waits for, nor blocks, a writer."""
        return Session(self.read_engine, expire_on_commit=False)


def sqlite_url(directory: Path) -> str:
    return f"sqlite:///{(directory / 'catalog.db').resolve()}"


def open_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite connections get WAL, foreign keys and the busy timeout."""
    try:
        engine = create_engine(url, future=True)
    except Exception as error:  # a malformed URL or a driver that is not installed
        raise UserError(f"cannot use the database {url!r}: {error}") from None
    event.listen(engine, "handle_error", functools.partial(_as_user_error, where(engine)))
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
    return engine


def where(engine: Engine) -> str:
    """The database as a person knows it: its file for SQLite, else its URL without the password."""
    file = database_file(engine)
    return str(file) if file is not None else engine.url.render_as_string(hide_password=True)


def database_file(engine: Engine) -> Path | None:
    """The SQLite file of ``engine`` (None for a server, or an in-memory database)."""
    name = engine.url.database
    if engine.dialect.name != "sqlite" or not name or name == ":memory:" or name.startswith("file:"):
        return None
    return Path(name)


def _as_user_error(database: str, context) -> None:
    """A driver failure a person can act on, as one line naming the database (others pass unchanged)."""
    error = context.original_exception
    text = str(error).lower()
    if is_disk_full(error):
        raise UserError(REASONS[1][1].format(db=database)) from error
    for needles, line in REASONS:
        if any(needle in text for needle in needles):
            raise UserError(line.format(db=database)) from error
    if context.connection is None and context.dialect.name != "sqlite":  # failed while connecting to a server
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(
            f"cannot connect to the database {database}: {first}: check the server runs and the URL"
        ) from error


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


def open_catalog(engine: Engine) -> None:
    """Check that the database holds a catalog, and bring one made by an older whaleid up to date.

    A missing SQLite file is not created, and an empty database (0 bytes, or another program's) is
    not read as an empty catalog: either means the catalog's rows are gone, which must be said.
    """
    file = database_file(engine)
    if file is not None and not file.is_file():
        raise UserError(f"{file} is missing: the catalog's database is gone; restore it from a backup")
    empty = file is not None and file.stat().st_size == 0  # (opening it would write a header into it)
    revision = None if empty else _revision(engine)
    scripts = ScriptDirectory.from_config(alembic_config())
    if revision is None:
        raise UserError(
            f"{where(engine)} holds no whaleid catalog (empty, or another program's database): restore it from a backup"
        )
    if revision not in {script.revision for script in scripts.walk_revisions()}:
        raise UserError(f"{where(engine)} was made by a newer whaleid (schema {revision}): upgrade whaleid")
    if revision != scripts.get_current_head():
        migrate(engine)


def _revision(engine: Engine) -> str | None:
    """The database's schema revision; None when it holds no whaleid tables."""
    with engine.connect() as connection:
        if not inspect(connection).has_table("alembic_version"):
            return None
        return MigrationContext.configure(connection).get_current_revision()


def check_new(engine: Engine) -> None:
    """Refuse a database `init` must not use: one that holds a catalog already, or another program's tables."""
    file = database_file(engine)
    if file is not None and not file.parent.is_dir():
        raise UserError(f"{file.parent} does not exist: make that folder first, or give another --db")
    with engine.connect() as connection:
        tables = set(inspect(connection).get_table_names())
        models = connection.scalar(select(func.count()).select_from(Model.__table__)) if "models" in tables else 0
    if models:
        raise UserError(f"{where(engine)} already holds a catalog: give each catalog a new, empty database")
    if tables and "alembic_version" not in tables:
        raise UserError(f"{where(engine)} holds another program's tables: give the catalog a new, empty database")
