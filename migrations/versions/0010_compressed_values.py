"""hl7_messages.payload and ecg_instances.measurements stored zlib-compressed

(gateway.store.models.CompressedText and CompressedJSON.)  An ORU^R01 with the
cart's measurements is ~3 KB of text (~1 KB compressed), the measurements
1.2 KB of JSON (0.3 KB): SQLite does not compress, and a 3 KB outbox row
filled an 8 KB page with room for one more only.  Upgrade and downgrade
convert every row, in batches.

Revision ID: 0010_compressed_values
Revises: 0009_relative_spool_paths
"""

import json
import zlib
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0010_compressed_values"
down_revision = "0009_relative_spool_paths"
branch_labels = None
depends_on = None

_BATCH = 500


def _zip_json(value: Any) -> bytes | None:
    return None if value is None else zlib.compress(json.dumps(value, separators=(",", ":")).encode(), 6)


def _unzip_json(value: bytes) -> Any:
    return json.loads(zlib.decompress(value))


def _zip_text(value: str) -> bytes:
    return zlib.compress(value.encode("utf-8"), 6)


def _unzip_text(value: bytes) -> str:
    return zlib.decompress(value).decode("utf-8")


def _swap(table: str, column: str, old_type: Any, new_type: Any, convert: Callable[[Any], Any], nullable: bool) -> None:
    """Replace ``table.column`` by a column of ``new_type`` holding ``convert(value)`` of each row."""
    new = f"{column}_new"
    with op.batch_alter_table(table, schema=None) as batch_op:
        batch_op.add_column(sa.Column(new, new_type, nullable=True))
    t = sa.table(table, sa.column("id", sa.Integer), sa.column(column, old_type), sa.column(new, new_type))
    conn = op.get_bind()
    last = 0
    while True:
        rows = conn.execute(
            sa.select(t.c.id, t.c[column]).where(t.c.id > last, t.c[column].is_not(None)).order_by(t.c.id).limit(_BATCH)
        ).all()
        if not rows:
            break
        conn.execute(
            t.update().where(t.c.id == sa.bindparam("row_id")).values({new: sa.bindparam("value", type_=new_type)}),
            [{"row_id": i, "value": convert(v)} for i, v in rows],
        )
        last = rows[-1][0]
    with op.batch_alter_table(table, schema=None) as batch_op:
        batch_op.drop_column(column)
    with op.batch_alter_table(table, schema=None) as batch_op:
        batch_op.alter_column(new, new_column_name=column, existing_type=new_type, nullable=nullable)


def upgrade() -> None:
    _swap("ecg_instances", "measurements", sa.JSON(), sa.LargeBinary(), _zip_json, nullable=True)
    _swap("hl7_messages", "payload", sa.Text(), sa.LargeBinary(), _zip_text, nullable=False)


def downgrade() -> None:
    _swap("hl7_messages", "payload", sa.LargeBinary(), sa.Text(), _unzip_text, nullable=False)
    _swap("ecg_instances", "measurements", sa.LargeBinary(), sa.JSON(), _unzip_json, nullable=True)
