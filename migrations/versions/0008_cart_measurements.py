"""ecg_instances.measurements and cart_statements: the cart's global measurements and its own statements

Revision ID: 0008_cart_measurements
Revises: 0007_report_zlib
"""

import sqlalchemy as sa
from alembic import op

revision = "0008_cart_measurements"
down_revision = "0007_report_zlib"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("ecg_instances", schema=None) as batch_op:
        batch_op.add_column(sa.Column("measurements", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("cart_statements", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("ecg_instances", schema=None) as batch_op:
        batch_op.drop_column("cart_statements")
        batch_op.drop_column("measurements")
