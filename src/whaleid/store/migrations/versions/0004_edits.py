"""edits as events: what a rename or an encounter edit changed (before and after), and the encounter it edited

Two nullable columns on ``decisions``: ``details`` (JSON, ``{field: {"before", "after"}}``) and
``encounter_id`` (the encounter an edit changed). Earlier events keep both null.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("decisions", recreate="never") as batch:
        batch.add_column(sa.Column("details", sa.JSON(), nullable=True))
    if op.get_bind().dialect.name == "sqlite":
        # SQLite adds a column's foreign key only written inline (ALTER cannot add a constraint), and copying
        # the table instead would break its undo events, which refer to it
        op.execute("ALTER TABLE decisions ADD COLUMN encounter_id INTEGER REFERENCES encounters (id)")
    else:
        op.add_column("decisions", sa.Column("encounter_id", sa.Integer(), sa.ForeignKey("encounters.id")))
    op.create_index("ix_decisions_encounter_id", "decisions", ["encounter_id"])


def downgrade() -> None:
    op.drop_index("ix_decisions_encounter_id", "decisions")
    # dropped in place (SQLite 3.35+ drops an inline foreign key with its column; PostgreSQL drops the constraint)
    with op.batch_alter_table("decisions", recreate="never") as batch:
        batch.drop_column("encounter_id")
        batch.drop_column("details")
