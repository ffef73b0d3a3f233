"""Outbox claims of dead senders: released at once, not after the lease.

An outbox row (``hl7_messages``, ``pacs_messages``) is claimed by raising
``attempts`` (the owner's token) and hiding it behind a lease in
``next_attempt_at``; the claim also records who holds it
(:class:`gateway.store.claimer.Claimer`), cleared when the outcome is
recorded.  A sender killed mid-send leaves its claimer behind.  Claims made on
this host by a process that is provably dead (pid not running, a zombie, or
another process under that pid) are made due now, their attempts kept (a
message cut off mid-send counts as an attempt); claims of live processes and
of other hosts wait for their lease, as several gateways may share one
PostgreSQL database.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, cast

from sqlalchemy import CursorResult, select, update
from sqlalchemy.orm import Session

from gateway.store.claimer import Claimer, claimer_alive
from gateway.store.models import HL7_PENDING, PACS_PENDING, Hl7Message, PacsMessage
from gateway.timeutil import utcnow

log = logging.getLogger("gateway.deliver")

#: Seconds between checks for dead claimers in a running sender (a sibling
#: process on the same host was killed), as the worker's.
DEAD_CLAIM_CHECK_S = 10.0

Outbox = type[Hl7Message] | type[PacsMessage]
_NAMES = {Hl7Message: "HL7 message", PacsMessage: "PACS message"}
_PENDING = {Hl7Message: HL7_PENDING, PacsMessage: PACS_PENDING}


def claim_values(claimer: Claimer | None) -> dict[str, Any]:
    """The claim columns of a row claimed by ``claimer`` (None: not recorded)."""
    return dict(
        claim_host=claimer.host if claimer else None,
        claim_pid=claimer.pid if claimer else None,
        claim_started=claimer.started if claimer else None,
    )


def release_dead_outbox_claims(
    session_factory: Callable[[], Session], model: Outbox, me: Claimer | None
) -> dict[int, list[int]]:
    """Make due now the pending ``model`` rows claimed on ``me.host`` by a
    process that provably died.  Returns {dead pid: [row ids]} and logs one
    WARNING per dead process (ids only)."""
    if me is None:  # off Linux: nothing can be proven dead
        return {}
    table = cast(Any, model)  # the two outbox models share these columns
    released: dict[int, list[int]] = {}
    with session_factory() as session, session.begin():
        rows = session.execute(
            select(table.id, table.attempts, table.claim_pid, table.claim_started)
            .where(table.status == _PENDING[model], table.claim_host == me.host)
            .order_by(table.id)
        ).all()
        for row_id, attempts, pid, started in rows:
            if pid == me.pid and started == me.started:
                continue  # our own claim, a send under way
            if pid is not None and claimer_alive(pid, started):  # no pid: nothing can prove it alive
                continue
            # Compare-and-set on the claim (attempts is the owner's token): a row
            # whose lease ran out and was claimed again meanwhile stays claimed.
            result = session.execute(
                update(table)
                .where(
                    table.id == row_id,
                    table.status == _PENDING[model],
                    table.attempts == attempts,
                    table.claim_host == me.host,
                    table.claim_pid == pid if pid is not None else table.claim_pid.is_(None),
                )
                .values(next_attempt_at=utcnow(), **claim_values(None))
                .execution_options(synchronize_session=False)
            )
            if cast(CursorResult[Any], result).rowcount == 1:
                released.setdefault(pid or 0, []).append(row_id)
    for pid, ids in released.items():
        shown = ", ".join(map(str, ids[:20])) + (", ..." if len(ids) > 20 else "")
        log.warning(
            "released %d %s claim(s) of process %d on this host, which is no longer running "
            "(ids %s): sent again now, not after the lease",
            len(ids),
            _NAMES[model],
            pid,
            shown,
        )
    return released
