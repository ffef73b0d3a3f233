"""ecg_instances.spool_path relative to the spool root

Upgrade: rows name their file by its absolute path (what the receive path
wrote before); each one under the configured spool becomes relative to it
(``/var/spool/2026/01/31/x.dcm`` -> ``2026/01/31/x.dcm``), so every process
mounting the spool, at any path, reads the same rows.  A path outside the
spool (moved before the upgrade) stays absolute: the gateway reads it as it is.

Downgrade: relative paths become absolute under the spool again (the earlier
code reads both).

The spool is the one the gateway is configured with: ``db upgrade``,
``serve``, ``ingest`` and ``python -m gateway.receive`` hand it over; a
bare ``alembic upgrade`` reads the configuration as the gateway does
(``ECG_GATEWAY_CONFIG`` or config/gateway.toml, plus ECG_GATEWAY_* variables).
Without one, nothing is changed (a warning says so) and the rows stay absolute.

Revision ID: 0009_relative_spool_paths
Revises: 0008_cart_measurements
"""

import logging
from pathlib import Path

import sqlalchemy as sa
from alembic import op

revision = "0009_relative_spool_paths"
down_revision = "0008_cart_measurements"
branch_labels = None
depends_on = None

log = logging.getLogger("gateway.store")

ecg = sa.table("ecg_instances", sa.column("spool_path", sa.String))
_ABSOLUTE = sa.func.substr(ecg.c.spool_path, 1, 1) == "/"


def _spool_roots() -> list[str] | None:
    """The configured spool as absolute path prefixes ending in ``/`` (resolved,
    and as given when a symbolic link makes that differ); None when unknown."""
    attributes = getattr(op.get_context().config, "attributes", {})
    spool_dir = attributes.get("spool_dir")
    if spool_dir is None:
        from gateway.config import ConfigError, load_config

        try:
            spool_dir = load_config().storage.spool_dir
        except ConfigError as exc:
            log.warning("spool paths left absolute: the configuration cannot be read (%s)", exc)
            return None
    given = Path(spool_dir).absolute()
    roots = dict.fromkeys(str(p).rstrip("/") + "/" for p in (given.resolve(), given))
    return list(roots)


def upgrade() -> None:
    conn = op.get_bind()
    if not conn.execute(sa.select(sa.func.count()).select_from(ecg).where(_ABSOLUTE)).scalar():
        return  # nothing to convert (a new database): the spool need not be known
    roots = _spool_roots()
    if roots is None:
        return
    for root in roots:
        conn.execute(
            ecg.update()
            .where(sa.func.substr(ecg.c.spool_path, 1, len(root)) == root)
            .values(spool_path=sa.func.substr(ecg.c.spool_path, len(root) + 1))
        )
    left = conn.execute(sa.select(sa.func.count()).select_from(ecg).where(_ABSOLUTE)).scalar()
    if left:
        log.warning("%d spool path(s) outside the spool %s left absolute (read as they are)", left, roots[0])


def downgrade() -> None:
    conn = op.get_bind()
    if not conn.execute(sa.select(sa.func.count()).select_from(ecg).where(sa.not_(_ABSOLUTE))).scalar():
        return
    roots = _spool_roots()
    if roots is None:
        return
    conn.execute(
        ecg.update().where(sa.not_(_ABSOLUTE)).values(spool_path=sa.literal(roots[0], sa.String) + ecg.c.spool_path)
    )
