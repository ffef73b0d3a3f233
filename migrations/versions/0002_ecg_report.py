"""ecg report

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 09:28:53.906740
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("ecg_instances", schema=None) as batch_op:
        batch_op.add_column(sa.Column("report", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("ecg_instances", schema=None) as batch_op:
        batch_op.drop_column("report")
