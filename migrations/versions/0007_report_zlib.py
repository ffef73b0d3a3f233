"""ecg_instances.report stored zlib-compressed (gateway.store.models.CompressedJSON)

The normalisation report is 2.6 KB of repetitive JSON per ECG; compressed it is
about 0.7 KB.  Upgrade and downgrade convert every row (in batches).

Revision ID: 0007_report_zlib
Revises: 0006_prune_mark
"""

import json
import zlib

import sqlalchemy as sa
from alembic import op

revision = "0007_report_zlib"
down_revision = "0006_prune_mark"
branch_labels = None
depends_on = None

_BATCH = 500


def _convert(source: sa.Column, target: sa.Column, convert) -> None:  # type: ignore[no-untyped-def]
    """Fill ``target`` from ``source`` (both columns of ecg_instances) row by row, in id order."""
    table = sa.table("ecg_instances", sa.column("id", sa.Integer), source, target)
    conn = op.get_bind()
    last = 0
    while True:
        rows = conn.execute(
            sa.select(table.c.id, table.c[source.name])
            .where(table.c.id > last)
            .where(table.c[source.name].is_not(None))
            .order_by(table.c.id)
            .limit(_BATCH)
        ).all()
        if not rows:
            return
        conn.execute(
            table.update()
            .where(table.c.id == sa.bindparam("row_id"))
            .values({target.name: sa.bindparam("value", type_=target.type)}),
            [{"row_id": i, "value": convert(v)} for i, v in rows],
        )
        last = rows[-1][0]


def upgrade() -> None:
    with op.batch_alter_table("ecg_instances", schema=None) as batch_op:
        batch_op.add_column(sa.Column("report_z", sa.LargeBinary(), nullable=True))
    _convert(
        sa.column("report", sa.JSON),
        sa.column("report_z", sa.LargeBinary),
        lambda value: None if value is None else zlib.compress(json.dumps(value, separators=(",", ":")).encode(), 6),
    )
    with op.batch_alter_table("ecg_instances", schema=None) as batch_op:
        batch_op.drop_column("report")
    with op.batch_alter_table("ecg_instances", schema=None) as batch_op:
        batch_op.alter_column("report_z", new_column_name="report", existing_type=sa.LargeBinary())


def downgrade() -> None:
    with op.batch_alter_table("ecg_instances", schema=None) as batch_op:
        batch_op.add_column(sa.Column("report_j", sa.JSON(), nullable=True))
    _convert(
        sa.column("report", sa.LargeBinary),
        sa.column("report_j", sa.JSON),
        lambda value: json.loads(zlib.decompress(value)),
    )
    with op.batch_alter_table("ecg_instances", schema=None) as batch_op:
        batch_op.drop_column("report")
    with op.batch_alter_table("ecg_instances", schema=None) as batch_op:
        batch_op.alter_column("report_j", new_column_name="report", existing_type=sa.JSON())
