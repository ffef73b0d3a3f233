"""predictions keep the input's sha256, not its bytes; the report is stored once

Upgrade: ``predictions.input_sha256`` is computed from the stored
``input_npy`` bytes (sha256 of the little-endian float32 array, as
``gateway.normalise.input_sha256``), then ``input_npy`` (196,736 bytes a row)
and ``predictions.normalisation`` (a copy of ``ecg_instances.report``) are
dropped.  ``normaliser_version`` is new and stays NULL for these rows.

Downgrade: ``normalisation`` is copied back from ``ecg_instances.report``;
``input_npy`` is rebuilt from each spooled original with the normaliser and
kept only when it matches ``input_sha256``; where that is impossible (file
gone or pruned, or the normaliser changed since) it is left NULL, which the
0002 code shows as "no model input".  The count of such rows is logged.

On SQLite the freed space is reused but the file does not shrink until
``ecg-gateway db compact`` (VACUUM); on PostgreSQL likewise for the dropped
column's TOAST data.

Revision ID: 0003_input_hash
Revises: 0002
"""

import hashlib
import io
import logging
from collections.abc import Iterator
from pathlib import Path

import sqlalchemy as sa
from alembic import op

revision = "0003_input_hash"
down_revision = "0002"
branch_labels = None
depends_on = None

log = logging.getLogger("gateway.store")

_BATCH = 100  # rows per round trip: at most ~20 MB of input bytes in memory

ecg = sa.table(
    "ecg_instances",
    sa.column("id", sa.Integer),
    sa.column("report", sa.JSON),
    sa.column("spool_path", sa.String),
    sa.column("sha256", sa.String),
)
pred = sa.table(
    "predictions",
    sa.column("id", sa.Integer),
    sa.column("ecg_id", sa.Integer),
    sa.column("input_npy", sa.LargeBinary),
    sa.column("normalisation", sa.JSON),
    sa.column("input_sha256", sa.String),
)


def _array_sha256(npy: bytes) -> str | None:
    """The hash of the array inside ``.npy`` bytes (None when they are not a float32 (4096, 12) array)."""
    import numpy as np

    try:
        array = np.load(io.BytesIO(npy), allow_pickle=False)
    except (ValueError, OSError):
        return None
    if array.dtype != np.float32 or array.shape != (4096, 12):
        return None
    return hashlib.sha256(np.ascontiguousarray(array, dtype="<f4").tobytes()).hexdigest()


def _batches(conn: sa.Connection, query: sa.Select) -> Iterator[sa.Row]:
    """Rows of ``query`` (its first column is predictions.id) in id order, ``_BATCH`` at a time."""
    last = 0
    while True:
        rows = conn.execute(query.where(pred.c.id > last).order_by(pred.c.id).limit(_BATCH)).all()
        if not rows:
            return
        yield from rows
        last = rows[-1][0]


def upgrade() -> None:
    with op.batch_alter_table("predictions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("input_sha256", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("normaliser_version", sa.String(length=64), nullable=True))

    conn = op.get_bind()
    # The report is kept on the ECG row (the worker wrote the same dict to both).
    conn.execute(
        ecg.update()
        .where(sa.or_(ecg.c.report.is_(None), sa.cast(ecg.c.report, sa.Text) == "null"))
        .values(report=sa.select(pred.c.normalisation).where(pred.c.ecg_id == ecg.c.id).scalar_subquery())
    )
    unreadable = 0
    for pid, npy in _batches(conn, sa.select(pred.c.id, pred.c.input_npy).where(pred.c.input_npy.is_not(None))):
        digest = _array_sha256(bytes(npy))
        unreadable += digest is None
        if digest is not None:
            conn.execute(pred.update().where(pred.c.id == pid).values(input_sha256=digest))
    if unreadable:
        log.warning("%d stored input(s) were not a float32 (4096, 12) array: input_sha256 left NULL", unreadable)

    with op.batch_alter_table("predictions", schema=None) as batch_op:
        batch_op.drop_column("input_npy")
        batch_op.drop_column("normalisation")


def _rebuild(
    spool_dir: Path | None, spool_path: str, file_sha256: str, report: dict | None, expected: str
) -> bytes | None:
    """The .npy bytes of the input the model saw, rebuilt from the spooled original; None if impossible."""
    import numpy as np

    from gateway.normalise import NormaliseError, NormaliseParams, input_sha256
    from gateway.rebuild import model_input

    path = Path(spool_path)
    if not path.is_absolute():
        if spool_dir is None:
            return None
        path = spool_dir / path
    try:
        raw = path.read_bytes()
    except OSError:
        return None
    if hashlib.sha256(raw).hexdigest() != file_sha256:
        return None
    try:
        signal = model_input(raw, NormaliseParams(**(report or {}).get("params", {}))).signal
    except (NormaliseError, TypeError, ValueError):
        return None
    if input_sha256(signal) != expected:
        return None
    buf = io.BytesIO()
    np.save(buf, signal, allow_pickle=False)
    return buf.getvalue()


def downgrade() -> None:
    with op.batch_alter_table("predictions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("input_npy", sa.LargeBinary(), nullable=True))
        batch_op.add_column(sa.Column("normalisation", sa.JSON(), nullable=True))

    conn = op.get_bind()
    conn.execute(
        pred.update().values(normalisation=sa.select(ecg.c.report).where(ecg.c.id == pred.c.ecg_id).scalar_subquery())
    )
    # A JSON null or SQL NULL report (not expected for a processed ECG) becomes {} for the NOT NULL column.
    conn.execute(
        pred.update()
        .where(sa.or_(pred.c.normalisation.is_(None), sa.cast(pred.c.normalisation, sa.Text) == "null"))
        .values(normalisation={})
    )

    attributes = getattr(op.get_context().config, "attributes", {})
    spool_dir = Path(attributes["spool_dir"]) if attributes.get("spool_dir") else None
    query = (
        sa.select(pred.c.id, pred.c.input_sha256, ecg.c.spool_path, ecg.c.sha256, ecg.c.report)
        .join(ecg, ecg.c.id == pred.c.ecg_id)
        .where(pred.c.input_sha256.is_not(None))
    )
    lost = 0
    for pid, expected, spool_path, file_sha256, report in _batches(conn, query):
        npy = _rebuild(spool_dir, spool_path, file_sha256, report, expected)
        lost += npy is None
        if npy is not None:
            conn.execute(pred.update().where(pred.c.id == pid).values(input_npy=npy))
    if lost:
        log.warning(
            "%d model input(s) could not be rebuilt from the spool (file missing or changed, or the "
            "normaliser changed since): input_npy left NULL for them",
            lost,
        )

    with op.batch_alter_table("predictions", schema=None) as batch_op:
        batch_op.alter_column("normalisation", existing_type=sa.JSON(), nullable=False)
        batch_op.drop_column("normaliser_version")
        batch_op.drop_column("input_sha256")
