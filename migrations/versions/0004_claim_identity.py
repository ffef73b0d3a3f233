"""claim identity: host, pid and process start time of an ECG's claimer

Revision ID: 0004_claim_identity
Revises: 0003_input_hash
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_claim_identity"
down_revision = "0003_input_hash"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("ecg_instances", schema=None) as batch_op:
        batch_op.add_column(sa.Column("claim_host", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("claim_pid", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("claim_started", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("ecg_instances", schema=None) as batch_op:
        batch_op.drop_column("claim_started")
        batch_op.drop_column("claim_pid")
        batch_op.drop_column("claim_host")
