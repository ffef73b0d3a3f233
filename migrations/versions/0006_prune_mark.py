"""ecg_instances.pruning_since: the mark retention pruning sets before it removes a row's file

Revision ID: 0006_prune_mark
Revises: 0005_admin_sessions
"""

import sqlalchemy as sa
from alembic import op

revision = "0006_prune_mark"
down_revision = "0005_admin_sessions"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("ecg_instances", schema=None) as batch_op:
        batch_op.add_column(sa.Column("pruning_since", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("ecg_instances", schema=None) as batch_op:
        batch_op.drop_column("pruning_since")
