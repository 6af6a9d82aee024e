"""the gallery record in its own columns: image size, flip TTA, ranking stages, fusion (threshold keeps its value)

Catalogs made before kept the re-ranking settings and fusion inside the threshold's JSON
(``{"value", "rerank", "fusion"}``); they move to their own columns, and back on downgrade.

Revision ID: 0003
Revises: 0002
"""

import json

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

MODELS = sa.table(
    "models",
    sa.column("id", sa.Integer),
    sa.column("threshold", sa.JSON),
    sa.column("scoring", sa.JSON),
    sa.column("fusion", sa.JSON),
)


def _rows(connection) -> list:
    return connection.execute(sa.select(MODELS.c.id, MODELS.c.threshold, MODELS.c.scoring, MODELS.c.fusion)).all()


def _json(value):
    return json.loads(value) if isinstance(value, str) else value  # some drivers hand JSON back as text


def upgrade() -> None:
    with op.batch_alter_table("models", recreate="never") as batch:
        batch.add_column(sa.Column("img_size", sa.Integer(), nullable=True))  # null: as the model file says
        batch.add_column(sa.Column("tta_flip", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("scoring", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("fusion", sa.JSON(), nullable=True))
    connection = op.get_bind()
    for id_, threshold, _, _ in _rows(connection):
        threshold = _json(threshold) or {}
        rerank, fusion = threshold.pop("rerank", None), threshold.pop("fusion", None)
        connection.execute(
            MODELS.update()
            .where(MODELS.c.id == id_)
            .values(
                threshold={"value": threshold["value"]} if "value" in threshold else None,
                scoring={"rerank": rerank} if rerank else None,
                fusion=fusion,
            )
        )


def downgrade() -> None:
    connection = op.get_bind()
    for id_, threshold, scoring, fusion in _rows(connection):
        rerank = (_json(scoring) or {}).get("rerank")
        value = (_json(threshold) or {}).get("value")
        old = {"value": value, "rerank": rerank, "fusion": _json(fusion)} if rerank else _json(threshold)
        connection.execute(MODELS.update().where(MODELS.c.id == id_).values(threshold=old))
    # dropped in place (SQLite 3.35+, PostgreSQL): copying the table would break the rows that refer to it
    with op.batch_alter_table("models", recreate="never") as batch:
        batch.drop_column("fusion")
        batch.drop_column("scoring")
        batch.drop_column("tta_flip")
        batch.drop_column("img_size")
