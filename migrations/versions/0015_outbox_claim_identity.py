"""outbox claim identity: host, pid and process start time of an HL7 or PACS message's sender

Revision ID: 0015_outbox_claim_identity
Revises: 0014_users
"""

import sqlalchemy as sa
from alembic import op

revision = "0015_outbox_claim_identity"
down_revision = "0014_users"
branch_labels = None
depends_on = None

TABLES = ("hl7_messages", "pacs_messages")


def upgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column("claim_host", sa.String(length=200), nullable=True))
            batch_op.add_column(sa.Column("claim_pid", sa.Integer(), nullable=True))
            batch_op.add_column(sa.Column("claim_started", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    for table in reversed(TABLES):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column("claim_started")
            batch_op.drop_column("claim_pid")
            batch_op.drop_column("claim_host")
