"""Alembic environment: run by whaleid.store.db.migrate on the connection it passes (no alembic.ini)."""

from alembic import context

from whaleid.store.schema import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
