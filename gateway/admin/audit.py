"""Moved to :mod:`gateway.store.audit` (the store owns the audit trail); kept
until the receive stage's imports move over."""

from gateway.store.audit import audit, cli_actor

__all__ = ["audit", "cli_actor"]
