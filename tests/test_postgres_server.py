"""The test databases themselves: both backends work, PostgreSQL tests are isolated, the server cleans up."""

import os
from pathlib import Path

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, create_engine, func, insert, inspect, select
from sqlalchemy.pool import NullPool

from postgres import PostgresUnavailable, postgres_server

metadata = MetaData()
fins = Table("fins", metadata, Column("id", Integer, primary_key=True), Column("name", String(64), nullable=False))


def _engine(url: str):
    # NullPool: no connection outlives the test, so the per-test PostgreSQL database can be dropped.
    return create_engine(url, poolclass=NullPool)


def test_database_url_gives_a_working_engine(database_url):
    engine = _engine(database_url)
    try:
        metadata.create_all(engine)
        with engine.begin() as conn:
            conn.execute(insert(fins), [{"name": "Notch"}, {"name": "Scar"}])
        with engine.connect() as conn:
            assert conn.execute(select(fins.c.name).order_by(fins.c.id)).scalars().all() == ["Notch", "Scar"]
        assert engine.dialect.name == ("sqlite" if database_url.startswith("sqlite") else "postgresql")
    finally:
        engine.dispose()


@pytest.mark.parametrize("round_", [1, 2])
def test_each_test_gets_an_empty_database(database_url, round_):
    """Both rounds write the same row; each starts from an empty database, whichever runs first."""
    engine = _engine(database_url)
    try:
        assert inspect(engine).get_table_names() == []
        metadata.create_all(engine)
        with engine.begin() as conn:
            conn.execute(insert(fins), [{"name": f"round {round_}"}])
            assert conn.execute(select(func.count()).select_from(fins)).scalar_one() == 1
    finally:
        engine.dispose()


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_postgres_test_database_is_not_the_shared_one(database_url, postgres_url):
    """Rows written through database_url stay out of the session's shared database (and so out of other tests)."""
    assert database_url != postgres_url
    engine, shared = _engine(database_url), _engine(postgres_url)
    try:
        metadata.create_all(engine)
        with engine.begin() as conn:
            conn.execute(insert(fins), [{"name": "private"}])
        assert "fins" not in inspect(shared).get_table_names()
    finally:
        engine.dispose()
        shared.dispose()


def test_server_stops_and_removes_its_dir(postgres_url):
    """A second, private server (postgres_url is requested only to skip where PostgreSQL is unavailable)."""
    with postgres_server() as server:
        root, pid = server.root, server.process.pid
        assert (root / "data" / "PG_VERSION").is_file()
        engine = _engine(server.url)
        with engine.connect() as conn:
            assert conn.execute(select(func.current_database())).scalar_one() == "whaleid"
        engine.dispose()
    assert not root.exists()
    assert server.process.returncode is not None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_server_stops_when_the_block_fails(postgres_url):
    with pytest.raises(RuntimeError, match="boom"), postgres_server() as server:
        raise RuntimeError("boom")
    assert not server.root.exists()
    assert server.process.returncode is not None


def test_missing_binaries_raise_a_clear_reason(tmp_path: Path):
    with pytest.raises(PostgresUnavailable, match="initdb is missing"), postgres_server(bin_dir=tmp_path):
        pass
