"""What becomes of one claimed ECG: a pure decision over what its batch found.

The worker gathers the facts (:class:`Facts`: the model's output, the reason
the input cannot be analysed, an unexpected error, another patient than the
UID's first version) and the row's attempt count; :func:`decide` turns them
into a :class:`Decision` (status, error text, the retry time, and the ORU's
options when a result goes out: final, or a correction of an earlier
version's result, OBR-25 = C) without touching the database; the worker
writes it in one transaction.

Precedence, first match wins:

1. another patient than the first version: quarantined (``rejected``, no ORU);
2. the model produced its output: ``processed``;
3. the input cannot be analysed: ``rejected`` with the reason, an ORU says so;
4. anything else (an unexpected error, or nothing at all): retried with
   backoff while attempts remain, else ``failed``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum

from gateway.deliver.oru import OruOptions
from gateway.deliver.outbox import correction_options
from gateway.store.models import FAILED, PROCESSED, RECEIVED, REJECTED
from gateway.store.versions import IDENTITY_CHANGED_REASON

#: The longest wait before a retry, in seconds (the backoff doubles per attempt up to it).
MAX_RETRY_DELAY_S = 300


class Outcome(StrEnum):
    """What became of one ECG (the values are the log's and /metrics' words)."""

    PROCESSED = "processed"
    REJECTED = "rejected"
    #: Another patient than its UID's first version: rejected, no ORU, audited.
    QUARANTINED = "quarantined"
    RETRY = "retry"
    FAILED = "failed"


@dataclass(frozen=True)
class Facts:
    """What the batch found out about one ECG."""

    #: The model produced its output for this ECG.
    inferred: bool = False
    #: Why the input cannot be analysed (a ``NormaliseError``'s message).
    rejection: str | None = None
    #: An unexpected failure, with its traceback.
    error: str | None = None
    #: Another patient than the UID's first version: (ecg id, version) of that version.
    identity_conflict: tuple[int, int] | None = None


@dataclass(frozen=True)
class Decision:
    """The row's new state, and what goes out with it."""

    outcome: Outcome
    #: The row's new status (``gateway.store.models``).
    status: str
    #: The row's new error text (None: cleared).
    error: str | None
    #: For :attr:`Outcome.RETRY`: when the ECG may be claimed again.
    retry_at: datetime | None = None
    #: The ORU's options when a result goes out (processed or rejected), else None.
    oru: OruOptions | None = None

    @property
    def sends_result(self) -> bool:
        """An ORU (and, with a prediction, the PACS objects) goes out with this outcome."""
        return self.oru is not None

    @property
    def releases_claim(self) -> bool:
        """The ECG is finished (claim released, processed_at set); a retry keeps its lease time."""
        return self.outcome is not Outcome.RETRY

    @property
    def metric_label(self) -> str:
        """The ``ecg_gateway_ecg_outcomes`` label: a quarantine counts as a rejection."""
        return Outcome.REJECTED.value if self.outcome is Outcome.QUARANTINED else self.outcome.value


def quarantine_reason(identity_conflict: tuple[int, int]) -> str:
    """The row's error for a version whose patient differs from the first version's."""
    ref_id, ref_version = identity_conflict
    return f"{IDENTITY_CHANGED_REASON} (version {ref_version} is ecg id {ref_id})"


def retry_delay(attempts: int) -> timedelta:
    """The backoff after ``attempts`` attempts: 2**attempts seconds, at most :data:`MAX_RETRY_DELAY_S`."""
    return timedelta(seconds=min(MAX_RETRY_DELAY_S, 2**attempts))


def decide(
    facts: Facts,
    *,
    attempts: int,
    max_attempts: int,
    now: datetime,
    corrects: int | None = None,
    report_pdf: bytes | None = None,
) -> Decision:
    """The outcome of one ECG from what its batch found (see the module's precedence).

    ``attempts`` counts the claims so far, this one included; ``now`` is the
    time the outcome is written.  ``corrects``: the id of the earlier version
    of the instance whose result went out (``store.versions.corrected_version``;
    the ORU then corrects it); ``report_pdf``: the PDF to embed, carried only
    with a prediction.
    """
    if facts.identity_conflict is not None:
        return Decision(Outcome.QUARANTINED, REJECTED, quarantine_reason(facts.identity_conflict))
    if facts.error is None and facts.inferred:
        return Decision(
            Outcome.PROCESSED, PROCESSED, None, oru=replace(correction_options(corrects), report_pdf=report_pdf)
        )
    if facts.error is None and facts.rejection is not None:
        return Decision(Outcome.REJECTED, REJECTED, facts.rejection, oru=correction_options(corrects))
    if attempts < max_attempts:
        return Decision(Outcome.RETRY, RECEIVED, facts.error, retry_at=now + retry_delay(attempts))
    return Decision(Outcome.FAILED, FAILED, facts.error)
