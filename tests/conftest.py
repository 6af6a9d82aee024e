import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
# The broken files in fixtures/images (and one absent one) with the reason each must give.
BROKEN = {
    "truncated.jpg": "truncated JPEG",
    "truncated.png": "truncated PNG",
    "zero_tail.jpg": "truncated JPEG (zeroed or cut tail)",
    "zero_tail.png": "truncated PNG (zeroed or cut tail)",
    "not_an_image.jpg": "not an image",
    "empty.jpg": "empty file",
    "no_such_photo.jpg": "missing file",
}
SHARED_DATA = Path(os.environ.get("WHALEID_SHARED_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session", autouse=True)
def _export_cache(tmp_path_factory):
    """ONNX exports of weights without a checkpoint folder go to a throwaway folder, not ~/.cache."""
    os.environ["WHALEID_CACHE"] = str(tmp_path_factory.mktemp("whaleid-cache"))


@pytest.fixture
def fixtures() -> Path:
    return FIXTURES


@pytest.fixture
def shared_data() -> Path:
    """The real photos in ../shared/data; tests that need them skip where absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (set WHALEID_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def synth_csv(tmp_path_factory) -> Path:
    """A small synthetic fin catalog shared by the pipeline tests."""
    from whaleid.data.synth import make_catalog

    return make_catalog(
        tmp_path_factory.mktemp("synth"), n_individuals=16, photos_per_individual=(4, 6), size=128, seed=0
    )


def centre_blob_masks(images, batch_size=8, clahe=False):
    """Stand-in for the saliency model: the middle half of each photo is the animal, so boxes are known exactly."""
    masks = []
    for im in images:
        w, h = im.size
        m = np.zeros((h, w), dtype=np.float32)
        m[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = 0.9
        masks.append(m)
    return masks


@pytest.fixture(scope="session")
def postgres_url():
    """A throwaway PostgreSQL server for the whole session (tests/postgres.py), started only when a test asks.

    Yields the SQLAlchemy URL of its `whaleid` database; skips, saying why, where no server can be started.
    """
    from postgres import PostgresUnavailable, start

    try:
        server = start()
    except PostgresUnavailable as e:
        pytest.skip(f"PostgreSQL not available: {e}")
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    """A catalog database URL, once per backend: a fresh SQLite file, or a fresh empty PostgreSQL database.

    Each PostgreSQL test gets its own `test_<random>` database on the session's server, dropped afterwards,
    so tests never see each other's rows.
    """
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'catalog.db'}"
        return
    import uuid

    from sqlalchemy import create_engine, make_url, text
    from sqlalchemy.pool import NullPool

    base = make_url(request.getfixturevalue("postgres_url"))
    name = f"test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base.set(database="postgres"), isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        yield base.set(database=name).render_as_string(hide_password=False)
        with admin.connect() as conn:
            # WITH (FORCE), PostgreSQL 13+, closes connections that a test left open.
            force = " WITH (FORCE)" if conn.dialect.server_version_info >= (13,) else ""
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"{force}'))
    finally:
        admin.dispose()


@pytest.fixture(scope="session")
def model(tmp_path_factory):
    """ImageNet features (offline lite0 weights) at 64 px, saved as a checkpoint: real enough that
    near-copies find each other; the catalog and web tests build their catalogs on it."""
    from whaleid.model.checkpoint import save_checkpoint
    from whaleid.model.network import EmbeddingModel, ModelConfig

    folder = tmp_path_factory.mktemp("model")
    network = EmbeddingModel(ModelConfig(backbone="tf_efficientnet_lite0", embedding_dim=0, img_size=64))
    return save_checkpoint(network.eval(), folder / "model", ["x"])
