"""The living catalog: photos come in, the model proposes, a reviewer decides, the gallery grows.

A catalog is a folder: ``catalog.json`` (which database), ``catalog.db`` (the SQLite default),
``photos/`` (content-addressed copies, named by sha256), ``models/v<N>/`` (the models that
embedded them) and ``index/`` (a cache of gallery vectors, rebuilt from the database when
missing). Every command is one transaction. The work is done by the parts a store is made of:
``models``, ``gallery``, ``intake``, ``review``, ``edits``, ``exports``, ``matches`` and ``retrain``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from whaleid.errors import UserError
from whaleid.files import atomic_path
from whaleid.store.db import Database, check_new, database_file, migrate, open_catalog, open_engine, sqlite_url
from whaleid.store.edits import Edits
from whaleid.store.exports import Exports
from whaleid.store.gallery import Gallery
from whaleid.store.intake import Intake
from whaleid.store.matches import Matches
from whaleid.store.models import Models, model_source
from whaleid.store.retrain import Retrain
from whaleid.store.review import Review
from whaleid.store.vectors import VectorCache

CONFIG = "catalog.json"


class CatalogStore(Database):
    """One catalog folder and its database; the web app and the CLI both work through its parts."""

    def __init__(self, directory: str | os.PathLike, db: str | None = None):
        """The catalog in ``directory``, on its own database or on ``db`` (a URL) when given."""
        self.dir = Path(directory)
        if self.dir.exists() and not self.dir.is_dir():
            raise UserError(f"{self.dir} is a file, not a catalog folder: give the folder `whaleid catalog init` made")
        config_path = self.dir / CONFIG
        if not config_path.is_file():
            raise UserError(f"{self.dir} is not a whaleid catalog (no {CONFIG}): make one with `whaleid catalog init`")
        self.config = _read_config(config_path)
        super().__init__(db or self.config.get("db") or sqlite_url(self.dir))
        open_catalog(self.engine)
        self.models = Models(self.dir, self)
        vectors = VectorCache(self.dir)
        self.gallery = Gallery(self, self.models, vectors)
        self.intake = Intake(self.dir, self, self.models, self.gallery)
        self.review = Review(self.dir, self)
        self.edits = Edits(self)
        self.exports = Exports(self.dir, self)
        self.matches = Matches(self.dir, self, self.models)
        self.retrain = Retrain(self.dir, self, self.models, vectors)

    @classmethod
    def create(cls, directory: str | os.PathLike, model: str | os.PathLike, db: str | None = None) -> CatalogStore:
        """A new catalog folder with its database (SQLite in the folder unless ``db`` is a URL) and first model.

        A database that holds a catalog already is refused (two catalogs on one database would change
        each other's model), and a failed ``init`` removes what it made, so that it can simply be re-run.
        """
        directory = Path(directory)
        if directory.exists() and not directory.is_dir():
            raise UserError(f"{directory} is a file: give `whaleid catalog init` a new folder")
        if (directory / CONFIG).exists():
            raise UserError(f"{directory} is already a catalog")
        source = model_source(Path(model))  # a bad model path fails here, before anything is written
        engine = open_engine(db or sqlite_url(directory))
        with _undone_on_failure(directory, database_file(engine)):
            try:
                directory.mkdir(parents=True, exist_ok=True)
                (directory / "photos").mkdir(exist_ok=True)
            except PermissionError as error:
                raise UserError(
                    f"cannot make {directory} ({error.strerror}): choose a folder you can write to"
                ) from None
            try:
                check_new(engine)
                migrate(engine)
            finally:
                engine.dispose()
            with atomic_path(directory / CONFIG) as tmp:
                tmp.write_text(json.dumps({"format": "whaleid.catalog/1", "db": db}, indent=2), encoding="utf-8")
            store = cls(directory, db)
            with store.session() as session, session.begin():
                store.models.activate(session, store.models.register(session, *source))
        return store


def _read_config(path: Path) -> dict:
    """``catalog.json``, or one line saying it is damaged and what it should hold."""
    fix = 'restore it, or write {"format": "whaleid.catalog/1", "db": null} in it for a catalog on its own catalog.db'
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"{path} is damaged (not UTF-8 text): {fix}") from None
    except json.JSONDecodeError as error:
        raise UserError(f"{path} is damaged (not JSON: {error.msg}, line {error.lineno}): {fix}") from None
    except OSError as error:
        raise UserError(f"cannot read {path}: {error.strerror or error}") from None
    if not isinstance(config, dict) or not isinstance(config.get("db"), str | None):
        raise UserError(f"{path} is damaged (not a catalog's settings): {fix}")
    return config


@contextlib.contextmanager
def _undone_on_failure(directory: Path, database: Path | None) -> Iterator[None]:
    """Remove what a failed ``init`` made (folders, its SQLite files), never what was there before it."""
    top = directory.absolute()
    while not top.parent.exists():  # the first folder `init` will make, when it makes the catalog's folder
        top = top.parent
    made = [top] if not top.exists() else [directory / n for n in ("photos", "models", "index", "cache", CONFIG)]
    if database is not None:
        made += [database.with_name(database.name + suffix) for suffix in ("", "-wal", "-shm", "-journal")]
    made = [path for path in made if not path.exists()]
    try:
        yield
    except BaseException:
        for path in made:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
        raise
