"""pacs_messages: the PACS outbox (Encapsulated PDF and Comprehensive SR per analysed ECG)

Revision ID: 0011_pacs_outbox
Revises: 0010_compressed_values
"""

import sqlalchemy as sa
from alembic import op

revision = "0011_pacs_outbox"
down_revision = "0010_compressed_values"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "pacs_messages",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("ecg_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("sop_class_uid", sa.String(length=64), nullable=False),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("series_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["ecg_id"], ["ecg_instances.id"], name=op.f("fk_pacs_messages_ecg_id_ecg_instances"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pacs_messages")),
        sa.UniqueConstraint("sop_instance_uid", name=op.f("uq_pacs_messages_sop_instance_uid")),
    )
    op.create_index("ix_pacs_messages_ecg_id", "pacs_messages", ["ecg_id"])
    op.create_index("ix_pacs_messages_status_next_attempt_at", "pacs_messages", ["status", "next_attempt_at"])


def downgrade() -> None:
    op.drop_index("ix_pacs_messages_status_next_attempt_at", table_name="pacs_messages")
    op.drop_index("ix_pacs_messages_ecg_id", table_name="pacs_messages")
    op.drop_table("pacs_messages")
