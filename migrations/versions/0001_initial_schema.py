"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-26 09:22:54.868757
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("target", sa.String(length=200), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_log")),
    )
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_audit_log_at"), ["at"], unique=False)

    op.create_table(
        "ecg_instances",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("sop_class_uid", sa.String(length=64), nullable=False),
        sa.Column("transfer_syntax_uid", sa.String(length=64), nullable=True),
        sa.Column("study_instance_uid", sa.String(length=64), nullable=True),
        sa.Column("series_instance_uid", sa.String(length=64), nullable=True),
        sa.Column("patient_id", sa.String(length=64), nullable=True),
        sa.Column("issuer_of_patient_id", sa.String(length=64), nullable=True),
        sa.Column("patient_name", sa.String(length=324), nullable=True),
        sa.Column("patient_birth_date", sa.String(length=8), nullable=True),
        sa.Column("patient_sex", sa.String(length=16), nullable=True),
        sa.Column("accession_number", sa.String(length=64), nullable=True),
        sa.Column("placer_order_number", sa.String(length=64), nullable=True),
        sa.Column("filler_order_number", sa.String(length=64), nullable=True),
        sa.Column("requested_procedure_id", sa.String(length=64), nullable=True),
        sa.Column("manufacturer", sa.String(length=64), nullable=True),
        sa.Column("device_model", sa.String(length=64), nullable=True),
        sa.Column("device_serial", sa.String(length=64), nullable=True),
        sa.Column("acquisition_datetime", sa.String(length=32), nullable=True),
        sa.Column("calling_ae", sa.String(length=16), nullable=True),
        sa.Column("peer_address", sa.String(length=64), nullable=True),
        sa.Column("spool_path", sa.String(length=512), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("flags", sa.JSON(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("claimed_by", sa.String(length=128), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ecg_instances")),
        sa.UniqueConstraint("sop_instance_uid", "version", name=op.f("uq_ecg_instances_sop_instance_uid_version")),
    )
    with op.batch_alter_table("ecg_instances", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_ecg_instances_accession_number"), ["accession_number"], unique=False)
        batch_op.create_index(batch_op.f("ix_ecg_instances_patient_id"), ["patient_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_ecg_instances_received_at"), ["received_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_ecg_instances_sop_instance_uid"), ["sop_instance_uid"], unique=False)
        batch_op.create_index("ix_ecg_instances_status_id", ["status", "id"], unique=False)
        batch_op.create_index(batch_op.f("ix_ecg_instances_study_instance_uid"), ["study_instance_uid"], unique=False)

    op.create_table(
        "hl7_messages",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("ecg_id", sa.Integer(), nullable=False),
        sa.Column("control_id", sa.String(length=64), nullable=False),
        sa.Column("order_key", sa.String(length=200), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("ack", sa.Text(), nullable=True),
        sa.Column("resend_of", sa.Integer(), nullable=True),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["ecg_id"], ["ecg_instances.id"], name=op.f("fk_hl7_messages_ecg_id_ecg_instances"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["resend_of"], ["hl7_messages.id"], name=op.f("fk_hl7_messages_resend_of_hl7_messages")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_hl7_messages")),
        sa.UniqueConstraint("control_id", name=op.f("uq_hl7_messages_control_id")),
    )
    with op.batch_alter_table("hl7_messages", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_hl7_messages_ecg_id"), ["ecg_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_hl7_messages_order_key"), ["order_key"], unique=False)
        batch_op.create_index("ix_hl7_messages_status_next_attempt_at", ["status", "next_attempt_at"], unique=False)

    op.create_table(
        "predictions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("ecg_id", sa.Integer(), nullable=False),
        sa.Column("probabilities", sa.JSON(), nullable=False),
        sa.Column("spread", sa.JSON(), nullable=False),
        sa.Column("findings", sa.JSON(), nullable=False),
        sa.Column("thresholds", sa.JSON(), nullable=False),
        sa.Column("model_files", sa.JSON(), nullable=False),
        sa.Column("model_sha256", sa.String(length=64), nullable=False),
        sa.Column("demo_model", sa.Boolean(), nullable=False),
        sa.Column("normalisation", sa.JSON(), nullable=False),
        sa.Column("quality_flags", sa.JSON(), nullable=False),
        sa.Column("input_npy", sa.LargeBinary(), nullable=True),
        sa.Column("gateway_version", sa.String(length=32), nullable=False),
        sa.Column("timings", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["ecg_id"], ["ecg_instances.id"], name=op.f("fk_predictions_ecg_id_ecg_instances"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_predictions")),
        sa.UniqueConstraint("ecg_id", name=op.f("uq_predictions_ecg_id")),
    )


def downgrade() -> None:
    op.drop_table("predictions")
    with op.batch_alter_table("hl7_messages", schema=None) as batch_op:
        batch_op.drop_index("ix_hl7_messages_status_next_attempt_at")
        batch_op.drop_index(batch_op.f("ix_hl7_messages_order_key"))
        batch_op.drop_index(batch_op.f("ix_hl7_messages_ecg_id"))

    op.drop_table("hl7_messages")
    with op.batch_alter_table("ecg_instances", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_ecg_instances_study_instance_uid"))
        batch_op.drop_index("ix_ecg_instances_status_id")
        batch_op.drop_index(batch_op.f("ix_ecg_instances_sop_instance_uid"))
        batch_op.drop_index(batch_op.f("ix_ecg_instances_received_at"))
        batch_op.drop_index(batch_op.f("ix_ecg_instances_patient_id"))
        batch_op.drop_index(batch_op.f("ix_ecg_instances_accession_number"))

    op.drop_table("ecg_instances")
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_audit_log_at"))

    op.drop_table("audit_log")
