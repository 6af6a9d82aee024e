"""The ``whaleid`` command (and ``python -m whaleid``): the app's commands plus the experiments' ones."""

from whaleid.app import (
    catalog,  # noqa: F401  (registers `whaleid catalog ...`)
    cli,  # noqa: F401  (registers the search and catalog-file commands)
    serve,  # noqa: F401  (registers `whaleid serve`)
)
from whaleid.app.command import app
from whaleid.experiments import commands  # noqa: F401  (registers train, pseudo-label, run and demo on the app)

__all__ = ["app", "main"]


def main() -> None:
    app()


if __name__ == "__main__":
    main()
