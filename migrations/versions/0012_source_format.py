"""ecg_instances.source_format: DICOM, Philips Sierra XML or HL7 aECG

Revision ID: 0012_source_format
Revises: 0011_pacs_outbox
"""

import sqlalchemy as sa
from alembic import op

revision = "0012_source_format"
down_revision = "0011_pacs_outbox"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # every row so far came in as DICOM: the server default fills them
    with op.batch_alter_table("ecg_instances") as batch:
        batch.add_column(sa.Column("source_format", sa.String(length=16), server_default="dicom", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("ecg_instances") as batch:
        batch.drop_column("source_format")
