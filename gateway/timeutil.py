"""UTC datetimes: the gateway's one clock and its one "make this UTC" rule.

Everything the gateway stores is UTC.  SQLite hands ``DateTime(timezone=True)``
columns back naive (the UTC value without its zone); PostgreSQL hands them back
aware, in the session's time zone.  :func:`as_utc` makes both the same.

A leaf module: it imports nothing from the gateway's stage packages.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import overload


def utcnow() -> datetime:
    """The current time, aware, in UTC."""
    return datetime.now(UTC)


@overload
def as_utc(value: datetime) -> datetime: ...
@overload
def as_utc(value: None) -> None: ...
def as_utc(value: datetime | None) -> datetime | None:
    """``value`` as an aware UTC datetime: a naive value is taken to be UTC
    already, an aware one is converted; None stays None."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)
