"""confirmations: the physician over-read (every version kept); ecg_instances.ward;
pacs_messages.confirmation_id

Revision ID: 0013_confirmations
Revises: 0012_source_format
"""

import sqlalchemy as sa
from alembic import op

revision = "0013_confirmations"
down_revision = "0012_source_format"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("ecg_instances", sa.Column("ward", sa.String(length=64), nullable=True))
    op.create_index("ix_ecg_instances_ward", "ecg_instances", ["ward"])
    op.add_column("pacs_messages", sa.Column("confirmation_id", sa.Integer(), nullable=True))
    op.create_table(
        "confirmations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("ecg_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("username", sa.String(length=200), nullable=False),
        sa.Column("full_name", sa.String(length=200), nullable=True),
        sa.Column("hl7_id", sa.String(length=64), nullable=True),
        sa.Column("findings", sa.JSON(), nullable=False),
        sa.Column("statements", sa.JSON(), nullable=False),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("changes", sa.JSON(), nullable=False),
        sa.Column("result_status", sa.String(length=1), nullable=False),
        sa.Column("hl7_message_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["ecg_id"], ["ecg_instances.id"], name=op.f("fk_confirmations_ecg_id_ecg_instances"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["hl7_message_id"],
            ["hl7_messages.id"],
            name=op.f("fk_confirmations_hl7_message_id_hl7_messages"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_confirmations")),
        sa.UniqueConstraint("ecg_id", "version", name=op.f("uq_confirmations_ecg_id_version")),
    )
    op.create_index("ix_confirmations_ecg_id", "confirmations", ["ecg_id"])
    op.create_index("ix_confirmations_created_at", "confirmations", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_confirmations_created_at", table_name="confirmations")
    op.drop_index("ix_confirmations_ecg_id", table_name="confirmations")
    op.drop_table("confirmations")
    with op.batch_alter_table("pacs_messages") as batch:
        batch.drop_column("confirmation_id")
    op.drop_index("ix_ecg_instances_ward", table_name="ecg_instances")
    with op.batch_alter_table("ecg_instances") as batch:
        batch.drop_column("ward")
