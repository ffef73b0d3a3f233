"""users, API tokens, sessions per user, audit rows with ECG and address

Revision ID: 0014_users
Revises: 0013_confirmations
"""

import sqlalchemy as sa
from alembic import op

revision = "0014_users"
down_revision = "0013_confirmations"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("full_name", sa.String(length=200), nullable=True),
        sa.Column("hl7_id", sa.String(length=64), nullable=True),
        sa.Column("password_hash", sa.String(length=255), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("password_changed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("disabled_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("username", name=op.f("uq_users_username")),
    )
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_api_tokens_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_tokens")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_api_tokens_token_hash")),
    )
    op.create_index("ix_api_tokens_user_id", "api_tokens", ["user_id"])
    with op.batch_alter_table("admin_sessions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("user_id", sa.Integer(), nullable=True))
        batch_op.create_index(batch_op.f("ix_admin_sessions_user_id"), ["user_id"], unique=False)
        batch_op.create_foreign_key(
            batch_op.f("fk_admin_sessions_user_id_users"), "users", ["user_id"], ["id"], ondelete="CASCADE"
        )
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.add_column(sa.Column("ecg_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("address", sa.String(length=64), nullable=True))
        batch_op.create_index(batch_op.f("ix_audit_log_ecg_id"), ["ecg_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_audit_log_actor"), ["actor"], unique=False)
        batch_op.create_index("ix_audit_log_action_at", ["action", "at"], unique=False)
    # Earlier rows named their ECG only in target ("ecg:<id>"): fill the new column.
    bind = op.get_bind()
    audit = sa.table(
        "audit_log", sa.column("id", sa.Integer()), sa.column("target", sa.String()), sa.column("ecg_id", sa.Integer())
    )
    rows = bind.execute(sa.select(audit.c.id, audit.c.target).where(audit.c.target.like("ecg:%"))).all()
    for row_id, target in rows:
        number = target[4:]
        if number.isascii() and number.isdigit() and 0 < int(number) < 2**31:
            bind.execute(audit.update().where(audit.c.id == row_id).values(ecg_id=int(number)))


def downgrade() -> None:
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.drop_index("ix_audit_log_action_at")
        batch_op.drop_index(batch_op.f("ix_audit_log_actor"))
        batch_op.drop_index(batch_op.f("ix_audit_log_ecg_id"))
        batch_op.drop_column("address")
        batch_op.drop_column("ecg_id")
    with op.batch_alter_table("admin_sessions", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_admin_sessions_user_id_users"), type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_admin_sessions_user_id"))
        batch_op.drop_column("user_id")
    op.drop_index("ix_api_tokens_user_id", table_name="api_tokens")
    op.drop_table("api_tokens")
    op.drop_table("users")
